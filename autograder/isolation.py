"""A control group per graded kernel, where the machine allows it: CPU, memory and processes limited as a whole.

Linux offers the limits through cgroup v2 (one unified tree: cpu.max, memory.max, pids.max) or, on older
or hybrid set-ups such as this course's build machine, through cgroup v1 (one tree per controller:
cpu.cfs_quota_us, memory.limit_in_bytes, pids.max). Only root may create the groups. Each kernel's group
sits under a parent of the course's own, `course-grading`, and is named after the kernel's launcher
process; a kernel whose group cannot be made runs with the per-process limits only.

Why per kernel and not per process: a student's cell can start hundreds of processes (or detach them with
setsid) and each would get its own per-process memory limit and its own share of the CPU. In one group
they share one CPU quota, one memory limit and one process count, and other students' kernels keep theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PARENT = "course-grading"
CONTROLLERS = ("cpu", "memory", "pids")
CPU_PERIOD_US = 100_000
# The kernels' CPU weight against the grader's own (v1 shares: 1024 is the default; v2 weight: 100).
SHARES_V1, WEIGHT_V2 = 256, 25


@dataclass(frozen=True)
class Limits:
    """What one kernel may use as a whole."""

    cpus: float  # CPU time per second of wall time, in cores
    memory_bytes: int
    processes: int


def _mounts() -> dict[str, Path]:
    """{'unified': v2 mount} or {controller: v1 mount} for the cgroup file systems this machine has."""
    found: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        before, _, after = line.partition(" - ")
        kind, _, options = (after.split(" ") + ["", "", ""])[:3]
        mount_point = Path(before.split(" ")[4])
        if kind == "cgroup2":
            found.setdefault("unified", mount_point)
        elif kind == "cgroup":
            for controller in options.split(","):
                if controller in CONTROLLERS:
                    found.setdefault(controller, mount_point)
    return found


def _own_path(hierarchy: str) -> str:
    """This process's group in a v1 controller's tree ('cpu', ...) or in the v2 tree ('' )."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if (hierarchy == "" and names == "") or hierarchy in names.split(","):
            return path.lstrip("/")
    return ""


def _v2_root() -> Path | None:
    """The v2 group under which kernels' groups go, with cpu, memory and pids enabled for them; None if impossible."""
    mount = _mounts().get("unified")
    if mount is None or os.geteuid() != 0:
        return None
    available = set((mount / "cgroup.controllers").read_text().split()) if (mount / "cgroup.controllers").exists() else set()
    if not set(CONTROLLERS) <= available:
        return None
    # The v2 rule "no processes in a group that hands controllers down": our group lives at the top of the tree.
    parent = mount / PARENT
    try:
        (mount / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
        parent.mkdir(exist_ok=True)
        (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
    except OSError:
        return None
    return parent


def _v1_parents() -> dict[str, Path] | None:
    """{controller: parent group} in the v1 trees, below this process's own groups; None unless all three work."""
    mounts = _mounts()
    if os.geteuid() != 0 or not all(c in mounts for c in CONTROLLERS):
        return None
    parents = {}
    for controller in CONTROLLERS:
        parent = mounts[controller] / _own_path(controller) / PARENT
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        if not (parent / "cgroup.procs").exists():
            return None
        parents[controller] = parent
    return parents


def available() -> str:
    """Which per-kernel groups this machine allows: 'cgroup v2', 'cgroup v1' or ''."""
    if _v2_root() is not None:
        return "cgroup v2"
    if _v1_parents() is not None:
        return "cgroup v1"
    return ""


def enter(name: str, limits: Limits, pid: int = 0) -> str:
    """Create the group `name` with `limits` and move process `pid` (0: this one) into it (children follow); returns the
    kind, or ''."""
    pid = pid or os.getpid()
    try:
        root = _v2_root()
        if root is not None:
            group = root / name
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(f"{int(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
            (group / "cpu.weight").write_text(str(WEIGHT_V2))
            (group / "memory.max").write_text(str(limits.memory_bytes))
            if (group / "memory.swap.max").exists():  # swapping out would only slow the class down
                (group / "memory.swap.max").write_text("0")
            (group / "pids.max").write_text(str(limits.processes))
            (group / "cgroup.procs").write_text(str(pid))
            return "cgroup v2"
        parents = _v1_parents()
        if parents is not None:
            groups = {controller: parent / name for controller, parent in parents.items()}
            for group in groups.values():
                group.mkdir(exist_ok=True)
            (groups["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (groups["cpu"] / "cpu.cfs_quota_us").write_text(str(int(limits.cpus * CPU_PERIOD_US)))
            (groups["cpu"] / "cpu.shares").write_text(str(SHARES_V1))
            (groups["memory"] / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
            (groups["pids"] / "pids.max").write_text(str(limits.processes))
            for group in groups.values():
                (group / "cgroup.procs").write_text(str(pid))
            return "cgroup v1"
    except OSError:
        return ""
    return ""


def remove_empty() -> None:
    """Remove the kernels' groups whose processes have all ended (a group can only be removed empty)."""
    parents = [p for p in [_v2_root()] if p is not None] + list((_v1_parents() or {}).values())
    for parent in parents:
        for group in parent.iterdir():
            if group.is_dir() and group.name.startswith("kernel-"):
                try:
                    group.rmdir()
                except OSError:  # still in use: a kernel of another grading run
                    pass
