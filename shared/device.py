"""Pick the device a notebook trains on, and how many CPU threads PyTorch uses; reference checks always run on the CPU."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

THREADS_ENV = "COURSE_THREADS"  # an explicit thread count, for people who know their machine better
# Set by the grader for its kernels (autograder/grade.py, passed into the sandbox): its choice stands.
INHERITED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# PyTorch's own choice when this module is first imported (its physical cores, unless something set it before).
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def pick_device(preferred: str | None = None) -> torch.device:
    """Return `preferred`, else $COURSE_DEVICE, else the best available of cuda, mps, cpu."""
    name = preferred or os.environ.get("COURSE_DEVICE")
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class ThreadChoice:
    """The number of intra-op threads PyTorch uses, and why; prints as '1 (fast mode: ...)'."""

    count: int
    reason: str

    def __str__(self) -> str:
        return f"{self.count} ({self.reason})"


def choose_threads(cores: int, *, fast: bool, large_model: bool, busy: float | None = None,
                   override: str | None = None, inherited: str | None = None) -> tuple[int | None, str]:
    """The course's thread policy: (threads to use, or None to keep PyTorch's setting; why), measured in bench/threads.py.

    cores: the threads PyTorch would use by default; busy: the cores other programs keep busy (None: unknown);
    override: $COURSE_THREADS; inherited: the name=value of a thread variable already set (the grader's).
    Small models run hundreds of tiny operations per step: one thread is as fast as several on an idle
    machine and 20-40 times faster on a busy one, where every operation waits for a descheduled thread.
    A large model (07's and 08's full-size runs: steps big enough to split) uses the cores that other
    programs leave free: a thread that has to share its core with another program holds up the others
    at every operation.
    """
    if inherited:
        return None, f"{inherited} is set: kept"
    note = ""
    if override is not None and override.strip():
        if override.strip().isdigit() and int(override) >= 1:
            return int(override), f"{THREADS_ENV}={int(override)}"
        note = f"; {THREADS_ENV}={override.strip()!r} ignored: not a whole number of at least 1"
    if cores <= 1:
        return 1, "one core" + note
    if fast:
        return 1, "fast mode: small models run fastest on one thread" + note
    if not large_model:
        return 1, "small models run fastest on one thread" + note
    taken = round(busy) if busy is not None else 0
    if taken <= 0:
        return cores, f"all {cores} cores" + note
    free = max(1, cores - taken)
    return free, f"{free} of {cores} cores: other programs keep {busy:.1f} busy" + note


def thread_choice(*, large_model: bool = False, fast: bool | None = None, environ: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """The policy (choose_threads) for this machine now: its cores, what other programs use, fast mode, the environment."""
    from shared.training import fast_mode

    environ = os.environ if environ is None else environ
    inherited = next((f"{name}={environ[name]}" for name in INHERITED_ENV if environ.get(name)), None)
    fast = fast_mode() if fast is None else fast
    busy = busy_cores() if large_model and not fast and not inherited else None  # only a large model's choice needs it
    return choose_threads(TORCH_DEFAULT_THREADS, fast=fast, large_model=large_model, busy=busy,
                          override=environ.get(THREADS_ENV), inherited=inherited)


def busy_cores(seconds: float = 0.2) -> float | None:
    """Cores other programs keep busy: measured over `seconds` (Linux), else the 1-minute load average, else None."""
    try:
        before, own_before, started = busy_ticks(), os.times(), time.monotonic()
        time.sleep(seconds)
        after, own_after, elapsed = busy_ticks(), os.times(), time.monotonic() - started
    except (OSError, ValueError):  # no /proc/stat (macOS, Windows)
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    own = own_after.user + own_after.system - own_before.user - own_before.system
    return max(0.0, ((after - before) / os.sysconf("SC_CLK_TCK") - own) / elapsed)


def busy_ticks() -> int:
    """Clock ticks all CPUs have spent busy since boot (user, nice, system, irq, softirq, steal: /proc/stat's first line)."""
    with open("/proc/stat", encoding="ascii") as file:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in file.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


def use_threads(*, large_model: bool = False) -> ThreadChoice:
    """Set PyTorch's intra-op threads by the course's policy (thread_choice); returns the count in use and why.

    large_model: the notebook's full-size training steps are big enough to split across cores (07, 08).
    """
    count, reason = thread_choice(large_model=large_model)
    if count is not None and count != torch.get_num_threads():
        torch.set_num_threads(count)
    return ThreadChoice(torch.get_num_threads(), reason)


@contextmanager
def threads_for(device: torch.device, *, large_model: bool = False) -> Iterator[None]:
    """Run CPU work on the policy's thread count (use_threads), then restore the previous setting."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        use_threads(large_model=large_model)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
