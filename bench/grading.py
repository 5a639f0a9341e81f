"""Measure grading cost per submission, side by side in one run.

  notebook alone   executing a correct submission with nbclient (NBGRADER_EXECUTION set, as in grading;
                   the kernel stopped at once after the last cell, as make grade does)
  make grade       autograder/grade.py (in-process nbgrader API, sandbox, the clean second pass of the hidden
                   checks, feedback, CSVs), with one worker (for the overhead per submission) and with one per
                   core (throughput), kernels forked from each worker's zygote (the default); and with one per core
                   again, each kernel started afresh (GRADING_KERNEL_ZYGOTE=0), for what the zygote saves
  plain nbgrader   `nbgrader autograde <assignment>` over the same submissions, one serial CLI call
                   (with the course's nbgrader_config.py, so it executes the same way)

Targets (on 2 cores, 20 submissions): throughput >= 3.5x plain nbgrader, the second pass included, and an overhead
beyond executing the notebook < 0.5 s per submission (issue 19). The overhead can be negative: a kernel forked from
a worker's zygote has imported what a kernel started afresh imports in its cells (torch._dynamo, sympy).
Usage: python bench/grading.py [--students 20] [--assignment 03_rnn_lstm]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests")]

from notebooks import execute  # noqa: E402
from submissions import solved, submit  # noqa: E402

BIN = Path(sys.executable).parent


def run(command: list[str], **kwargs) -> None:
    """Run a command; on failure show its output rather than a bare CalledProcessError."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def timed(function) -> float:
    started = time.monotonic()
    function()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--assignment", default="03_rnn_lstm")
    args = parser.parse_args()
    n, assignment = args.students, args.assignment
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for student in range(n):
            submit(scratch / "submitted", f"student{student:03d}", assignment, solved(assignment))
        notebook = scratch / "submitted" / "student000" / assignment / f"{assignment}.ipynb"

        alone = sum(timed(lambda: execute(notebook, env={"NBGRADER_EXECUTION": "autograde"})) for _ in range(2)) / 2

        def ours(workers: int, zygote: bool = True):
            output = scratch / f"ours{workers}{'' if zygote else '-afresh'}"
            command = [sys.executable, str(ROOT / "autograder/grade.py"), "--submissions", str(scratch / "submitted"),
                       "--output", str(output), "--workers", str(workers)]
            return lambda: run(command, env={**env, "GRADING_KERNEL_ZYGOTE": "1" if zygote else "0"})

        def plain():
            (scratch / "plain").mkdir()
            plain_env = {**env, "SUBMISSIONS": str(scratch / "submitted"), "GRADING_OUTPUT": str(scratch / "plain")}
            run([str(BIN / "nbgrader"), "generate_assignment", assignment, "--force", "--log-level=ERROR",
                 f"--CourseDirectory.release_directory={scratch / 'release'}"], cwd=ROOT / "autograder", env=plain_env)
            run([str(BIN / "nbgrader"), "autograde", assignment, "--force", "--log-level=ERROR"], cwd=ROOT / "autograder", env=plain_env)

        workers = os.cpu_count() or 1
        serial_total = timed(ours(1))
        ours_total = timed(ours(workers))
        afresh_total = timed(ours(workers, zygote=False))
        plain_total = timed(plain)

    print(f"{n} correct submissions of {assignment}")
    print(f"  notebook alone : {alone:6.2f} s per submission")
    print(f"  make grade, 1 worker  : {serial_total / n:6.2f} s per submission ({serial_total:.1f} s total, incl. feedback and CSVs)")
    print(f"  make grade, {workers} workers : {ours_total / n:6.2f} s per submission ({ours_total:.1f} s total)")
    print(f"  make grade, {workers} workers, kernels started afresh : {afresh_total / n:6.2f} s per submission ({afresh_total:.1f} s total)")
    print(f"  plain nbgrader : {plain_total / n:6.2f} s per submission ({plain_total:.1f} s total, autograde only)")
    overhead, speedup = serial_total / n - alone, plain_total / ours_total
    print(f"  overhead of make grade (1 worker) beyond executing the notebook: {overhead:+.2f} s per submission (target < 0.5)")
    print(f"  throughput of make grade ({workers} workers) relative to plain serial nbgrader autograde: {speedup:.2f}x (target >= 3.5)")
    print(f"  throughput with kernels forked from the zygote relative to kernels started afresh: {afresh_total / ours_total:.2f}x")


if __name__ == "__main__":
    main()
