"""The clean second pass of grading, inside its sandbox (started by `sandbox.py --harness`; driven by harness.py).

A zygote: it imports torch and the course's package once, then, for each job the grader sends on stdin (one
JSON line), forks a child that runs the job's cells in a fresh namespace and says on stdout (one JSON line)
when the child has ended. Nothing here trusts the child: it cannot reach the zygote's channel to the grader
(closed in the child), cannot read the zygote's memory (not dumpable), and whatever it leaves running or
writes to /tmp is killed or wiped before the next job. Its hidden-check values go to the job's outbox, which
the grader scores (scoring.py), so all a child can forge there is a value it would have had to compute.
"""

import ctypes
import importlib
import json
import os
import pkgutil
import re
import resource
import select
import shutil
import signal
import sys
import time

PR_SET_DUMPABLE = 4
MAX_REPLAYS = 5  # children that may die in a cell, each replayed without it
WIPED = ("/tmp", "/dev/shm")
# Modules of the course's package run as commands, never imported by a cell (run_notebook imports nbclient and with it
# jsonschema's format checkers, which compile a grammar: seconds of CPU per zygote).
STUDENT_TOOLS = ("notebook_check", "pdf", "run_notebook")


class CellLimit(BaseException):
    """A cell ran past its CPU or wall-time limit (a BaseException, so that `except Exception` in a cell does not hide it)."""


class NoIPython:
    """What `get_ipython()` gives cells here: magics and shell escapes do nothing (this is not a kernel)."""

    def run_line_magic(self, *arguments, **keywords):
        return None

    run_cell_magic = system = getoutput = run_line_magic


_UNBOUND = object()


def _refusal(finding: str, violation: type):
    """What stands in for a name bound to a built-in the exercise forbids: calling it raises `violation`."""
    def refuse(*arguments, **keywords):
        raise violation(f"not written from scratch: {finding}")

    return refuse


def _limit_reached(signum, frame):
    raise CellLimit("CPU time" if signum == signal.SIGPROF else "wall time")


def preload_course_package() -> None:
    """Import what the course's cells import (torch, matplotlib's pyplot, the course's package) or make torch import on
    first use: once in a zygote, not in every child it forks."""
    import matplotlib.pyplot  # noqa: F401
    import torch  # noqa: F401

    try:  # a cell's first optimizer imports it: a second of CPU, sympy included
        import torch._dynamo  # noqa: F401
    except Exception:  # then that cell imports it itself, as in a kernel started afresh
        pass

    import shared

    for module in pkgutil.iter_modules(shared.__path__):
        if module.name not in STUDENT_TOOLS:
            try:
                importlib.import_module(f"shared.{module.name}")
            except Exception:  # a module that cannot load here fails in the cell that imports it, as in a kernel
                pass


def run_cells(job: dict, skipped: set[int], progress: int) -> None:
    """In the child: run the job's cells in order in one namespace, each within its limits; write a status per cell.

    Before each cell its index goes to `progress`, so that if the child dies in it, a replay can leave it out.
    """
    os.chdir(job["folder"])
    cpu = int(job["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    os.environ.update(job["environment"])
    signal.signal(signal.SIGPROF, _limit_reached)
    signal.signal(signal.SIGALRM, _limit_reached)
    forbidden = job.get("forbidden") or {}
    from_scratch = sys.modules.get("from_scratch")  # imported, and its guard installed, by the zygote (main)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__, "get_ipython": NoIPython, "display": lambda *a, **k: None}
    statuses, aliases = [], []
    for index, cell in enumerate(job["cells"]):
        if index in skipped:
            statuses.append({"grade_id": cell["grade_id"], "kind": cell["kind"], "status": "KernelDied: it ended the grading run"})
            continue
        os.write(progress, f"{index}\n".encode())
        before = dict(namespace)
        signal.setitimer(signal.ITIMER_PROF, job["cell_cpu_seconds"])
        signal.setitimer(signal.ITIMER_REAL, job["cell_wall_seconds"])
        try:
            # An answer's filename names its assignment too: the one guard covers every assignment's rules.
            name = f"{job['assignment']}/{cell['grade_id']}" if cell["kind"] == "solution" else cell["grade_id"]
            exec(compile(cell["source"], f"<{cell['kind']} {name}>", "exec"), namespace)
            status = "ok"
        except BaseException as error:  # a cell's failure is its own: the cells below still run
            status = f"{type(error).__name__}: {str(error)[:200]}"
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)
        statuses.append({"grade_id": cell["grade_id"], "kind": cell["kind"], "status": status})
        if from_scratch is not None and cell["kind"] == "solution" and cell["grade_id"] in forbidden:
            # A name the answer bound straight to a built-in (`rnn_step = torch.rnn_tanh_cell`) runs no code of the
            # student's when called: replace it by one that refuses, so the checks that use it fail.
            bound = [name for name, value in namespace.items() if before.get(name, _UNBOUND) is not value]
            for finding in from_scratch.aliased_builtins(namespace, bound, forbidden[cell["grade_id"]]):
                name = finding.split(" ", 1)[0]
                namespace[name] = _refusal(f"{cell['grade_id']}: {finding}", from_scratch.FromScratchViolation)
                aliases.append(f"{cell['grade_id']}: {finding}")
    guard = getattr(from_scratch, "GUARD", None)
    violations = list(getattr(guard, "violations", [])) + aliases
    with open(job["report"], "w") as report:  # for notes only: the child could have written anything here
        json.dump({"cells": statuses, "violations": violations}, report)


def wait_for(pid: int, seconds: float, progress: int) -> tuple[str, int | None]:
    """Wait for the child `pid` at most `seconds` (killing it after that), reading its progress meanwhile.

    Returns how it ended and the index of the last cell it started (None if it said nothing readable).
    """
    # Linux tells when a child ends through a descriptor; elsewhere (macOS, no sandbox) look every 50 ms.
    handle = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    said, deadline, status = b"", time.monotonic() + seconds, None
    watched = [fd for fd in (handle, progress) if fd is not None]
    try:
        while status is None:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select(watched, [], [], left if handle is not None else min(left, 0.05))
            if progress in ready:
                chunk = os.read(progress, 65536)
                said = (said + chunk)[-64:]  # only the last line matters; the rest is drained so the child never blocks
                if not chunk:
                    watched = [fd for fd in watched if fd != progress]  # closed: by its end, or by the child itself
            if handle is None or handle in ready:
                done, code = os.waitpid(pid, os.WNOHANG)
                status = code if done else None
            if status is None and time.monotonic() >= deadline:
                break
        late = status is None
        if late:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    finally:
        if handle is not None:
            os.close(handle)
    lines = said.decode(errors="replace").split("\n")
    last = lines[-2] if len(lines) > 1 else ""
    started = int(last) if last.isdigit() else None
    if late:
        return "past its time", started
    return ("ended" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else "died"), started


def run_job(job: dict, requests, replies, in_sandbox: bool) -> tuple[str, bool]:
    """Run a job in forked children: when one dies in a cell (os._exit, a segfault, no memory), a fresh one replays the
    cells without it, as a restarted kernel would. Returns (how the last child ended, whether all is clean after)."""
    skipped: set[int] = set()
    deadline = time.monotonic() + job["wall_seconds"]
    for _ in range(MAX_REPLAYS + 1):
        progress, told = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setpgid(0, 0)  # a group of its own, which clean_up kills with all it started
                requests.close()
                replies.close()
                os.close(progress)
                run_cells(job, skipped, told)
                code = 0
            finally:
                os._exit(code)
        os.close(told)
        try:
            ended, started = wait_for(pid, deadline - time.monotonic(), progress)
        finally:
            os.close(progress)
        clean = clean_up(pid, in_sandbox)
        if ended != "died" or started is None or started in skipped or not clean:
            return ended, clean
        skipped.add(started)
    return ended, clean


def clean_up(child: int, in_sandbox: bool) -> bool:
    """Kill what the child left running and, in the sandbox, empty /tmp and /dev/shm; returns whether it is clean.

    In its sandbox (its own pid namespace) that is every process but this one and the namespace's init; outside
    one (grading without bubblewrap), only the child's process group, and the machine's /tmp is not touched.
    """
    try:
        os.kill(-1, signal.SIGKILL) if in_sandbox else os.killpg(child, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    while True:  # collect what was killed
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                break
        except ChildProcessError:
            break
    if not in_sandbox:
        return True
    keep = kept_paths()
    for folder in WIPED:
        if os.path.isdir(folder):
            wipe(folder, keep)
    return all(set(os.listdir(folder)) <= _ways_to(folder, keep) for folder in WIPED if os.path.isdir(folder))


def kept_paths() -> list[str]:
    """What the wipe leaves: the jobs folder and every folder the sandbox bound under /tmp or /dev/shm (the grading
    output's, a course data folder), which are the grader's, not the child's (and the read-only ones cannot go)."""
    try:
        with open("/proc/self/mountinfo") as mounts:
            points = [re.sub(r"\\([0-7]{3})", lambda code: chr(int(code.group(1), 8)), line.split(" ")[4]) for line in mounts]
    except OSError:
        points = []
    return [os.getcwd(), *(point for point in points if any(point.startswith(folder + "/") for folder in WIPED))]


def _ways_to(folder: str, keep: list[str]) -> set[str]:
    """The names of the entries of `folder` that lead to a path in `keep`."""
    return {path[len(folder) + 1:].split("/")[0] for path in keep if path.startswith(folder + "/")}


def wipe(folder: str, keep: list[str]) -> None:
    """Remove everything in `folder` but the ways to the paths in `keep` (whose own contents are not the child's)."""
    ways = _ways_to(folder, keep)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name in ways:
            if path not in keep:
                wipe(path, keep)
        elif os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


def main() -> None:
    in_sandbox = "--in-sandbox" in sys.argv
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    quiet = os.open(os.devnull, os.O_RDWR)
    for descriptor in (0, 1, 2):  # what a child prints goes nowhere
        os.dup2(quiet, descriptor)
    try:  # a child of the same user cannot read this process's memory (Linux)
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except AttributeError:
        pass
    os.environ["MPLBACKEND"] = "Agg"
    preload_course_package()

    def reply(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    # The from-scratch rule of every assignment ({"<assignment>/<answer grade_id>": [built-ins]}), installed once here
    # (it takes a while: it wraps the built-ins wherever torch publishes them) and inherited by every child.
    rules = json.loads(requests.readline() or "{}").get("guard") or {}
    if rules and os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "from_scratch.py")):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import from_scratch

        # Without the profile function, which only records what the wrappers miss (originals reached through torch._C
        # or torch.ops, which the static reading flags for a look) and would slow every call of the second pass.
        from_scratch.GUARD = from_scratch.install_guard(rules, watch_originals=False)
    reply({"ready": True})
    for line in requests:
        job = json.loads(line)
        ended, clean = run_job(job, requests, replies, in_sandbox)
        reply({"job": job["id"], "ended": ended, "clean": clean})


if __name__ == "__main__":
    main()
