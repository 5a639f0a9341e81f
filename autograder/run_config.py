"""The one configuration of a grading run, made once from the command line and passed explicitly to every stage.

`make grade` variables reach it as command-line options or as the environment the run was started with (read here,
once, and never written): SUBMISSIONS, GRADING_OUTPUT, WORKERS, FORCE, GRADING_SANDBOX=0, CELL_TIMEOUT,
NOTEBOOK_TIMEOUT, GRADING_MEMORY_MB, OMP_NUM_THREADS (threads per kernel) and GRADING_KERNEL_ZYGOTE=0 (every
sandboxed kernel started afresh, rather than forked from its worker's zygote; see README).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SANDBOX_KERNEL = "course-sandbox"
DEFAULT_CELL_TIMEOUT = 60  # seconds of CPU time per cell (shared/notebook_check.py tells students the same)
DEFAULT_NOTEBOOK_TIMEOUT = 1800
DEFAULT_MEMORY_MB = 4096


@dataclass(frozen=True)
class RunConfig:
    """Everything a grading run's stages need to know; frozen, so a worker process can cache what it builds from it."""

    submissions: Path
    output: Path
    assignments: tuple[str, ...] = ()  # grade only these (all when empty)
    workers: int = 1
    force: bool = False
    scheduler: str | None = None  # a Dask scheduler's address: grade there instead of in local workers
    sandbox_wanted: bool = True
    sandboxed: bool = False  # decided once bubblewrap is probed (execute.prepare_sandbox)
    runtime_dir: Path | None = None  # a short folder for sandboxed kernels' sockets and connection files
    cell_timeout: int = DEFAULT_CELL_TIMEOUT
    notebook_timeout: int = DEFAULT_NOTEBOOK_TIMEOUT
    memory_mb: int = DEFAULT_MEMORY_MB
    kernel_threads: int = 1  # math threads (and the CPU quota, in cores) of each kernel
    kernel_zygote: bool = True  # sandboxed kernels are forked from a zygote per worker that has imported torch

    @property
    def grading_dir(self) -> Path:
        """The grader's own state: fingerprints, staged copies, scratch folders, kernelspecs."""
        return self.output / ".grading"

    @property
    def kernels_dir(self) -> Path:
        return self.grading_dir / "kernels"

    @property
    def kernel_name(self) -> str | None:
        return SANDBOX_KERNEL if self.sandboxed else None

    @property
    def kernel_environment(self) -> dict[str, str]:
        """What every graded kernel (and second pass) gets on top of the grader's environment.

        PASSIVE: an OpenMP thread that waits for its team sleeps instead of spinning. Spinning, a kernel with two
        threads on a loaded machine burned 8 to 20 s of CPU in a training cell that needs 1.6 s (bench/omp_wait.py),
        and the cell's CPU limit counts that time against the student."""
        return {"OMP_NUM_THREADS": str(self.kernel_threads), "OMP_WAIT_POLICY": "PASSIVE"}


def parse_arguments(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> RunConfig:
    """The run's configuration from `argv` (sys.argv's by default), with defaults from `environ` (os.environ's)."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description="Autograde every submission with nbgrader, then write grades.csv, "
                                                 "grades_by_test.csv and feedback (make grade).")
    parser.add_argument("--submissions", default=environ.get("SUBMISSIONS", str(HERE.parent / "submitted")))
    parser.add_argument("--output", default=environ.get("GRADING_OUTPUT", str(HERE.parent)))
    parser.add_argument("--assignment", action="append", default=[], help="grade only this assignment (repeatable)")
    parser.add_argument("--workers", type=int, default=int(environ.get("WORKERS") or os.cpu_count() or 1))
    parser.add_argument("--force", action="store_true", default=environ.get("FORCE") == "1", help="regrade everything")
    parser.add_argument("--scheduler", help="grade on this Dask cluster (tcp://host:8786) instead of local worker processes")
    args = parser.parse_args(argv)
    workers = max(args.workers, 1)
    # Share the cores between the workers' kernels: more math threads than cores would oversubscribe them.
    threads = environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // workers))
    return RunConfig(
        submissions=Path(args.submissions).resolve(), output=Path(args.output).resolve(), assignments=tuple(args.assignment),
        workers=workers, force=args.force, scheduler=args.scheduler, sandbox_wanted=environ.get("GRADING_SANDBOX") != "0",
        cell_timeout=int(environ.get("CELL_TIMEOUT") or DEFAULT_CELL_TIMEOUT),
        notebook_timeout=int(environ.get("NOTEBOOK_TIMEOUT") or DEFAULT_NOTEBOOK_TIMEOUT),
        memory_mb=int(environ.get("GRADING_MEMORY_MB") or DEFAULT_MEMORY_MB), kernel_threads=max(1, int(threads)),
        kernel_zygote=environ.get("GRADING_KERNEL_ZYGOTE") != "0",
    )


def set_course_directories(c, output: Path, submissions: Path) -> None:
    """Point nbgrader's course directory (traitlets config `c`) at a run's submissions and grading output."""
    c.CourseDirectory.submitted_directory = str(submissions)
    c.CourseDirectory.autograded_directory = str(output / "autograded")
    c.CourseDirectory.feedback_directory = str(output / "feedback")
    # Parallel graders share the gradebook: wait for SQLite's write lock rather than fail.
    c.CourseDirectory.db_url = f"sqlite:///{output / 'gradebook.db'}?timeout=120"
    # The course hands out and collects through git and grade.py, not through nbgrader's exchange; formgrader still
    # checks that an exchange folder is writable and warns on every page if not: it gets an empty one in the output.
    try:
        (output / ".exchange").mkdir(exist_ok=True)
        c.Exchange.root = str(output / ".exchange")
    except OSError:  # no grading output yet, or a read-only one: nbgrader's default, and its warning
        pass


def set_time_limits(c, cell_timeout: int, notebook_timeout: int) -> None:
    """A cell may use `cell_timeout` seconds of CPU time (its kernel's processes together), so that a busy machine costs
    nobody points; wall time is limited too, generously, for code that sleeps or waits. A cell past either limit is
    interrupted and the rest of the notebook still runs. The whole notebook has a budget."""
    c.ResilientExecute.cpu_time_limit = cell_timeout
    c.ResilientExecute.wall_time_limit = 5 * cell_timeout  # not counting waits for a busy CPU
    c.ResilientExecute.notebook_time_limit = notebook_timeout
    c.Execute.timeout = 20 * cell_timeout  # nbclient's own wall clock: only a backstop
