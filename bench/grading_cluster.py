"""Time one class graded locally and on a Dask cluster on this machine, side by side in one run.

  local     make grade WORKERS=2 (two worker processes)
  cluster   make grade SCHEDULER=... with a scheduler and two one-thread workers on 127.0.0.1, started with
            make dask-scheduler and make dask-worker

Both grade the same class (correct submissions of the assignment) into fresh folders, and the bench checks that
they give the same grades. On one machine the cluster cannot be faster: the point is that its contract costs
little (each task also starts its own grader and registers the assignment in its own gradebook).
Usage: python bench/grading_cluster.py [--students 40] [--assignment 03_rnn_lstm]
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests")]

from submissions import solved, submit  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def make(*arguments: str) -> float:
    """Run a make target to the end; its wall time in seconds."""
    started = time.monotonic()
    result = subprocess.run(["make", "--no-print-directory", *arguments, f"BIN={BIN}"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"make {' '.join(arguments)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def start(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen(["make", "--no-print-directory", *arguments, f"BIN={BIN}"], cwd=ROOT, env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--assignment", default="03_rnn_lstm")
    args = parser.parse_args()
    from distributed import Client

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    processes = [start("dask-scheduler", f"DASK_PORT={port}")]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        os.chmod(scratch, 0o755)
        for student in range(args.students):
            submit(scratch / "submitted", f"student{student:03d}", args.assignment, solved(args.assignment))
        try:
            time.sleep(5)
            processes += [start("dask-worker", f"SCHEDULER={address}") for _ in range(2)]
            with Client(address, timeout=60) as client:
                while len(client.scheduler_info()["workers"]) < 2:
                    time.sleep(1)
            print(f"{args.students} submissions of {args.assignment}, load average {os.getloadavg()[0]:.1f} at the start")
            local = make("grade", f"SUBMISSIONS={scratch / 'submitted'}", f"GRADING_OUTPUT={scratch / 'local'}", "WORKERS=2")
            cluster = make("grade", f"SUBMISSIONS={scratch / 'submitted'}", f"GRADING_OUTPUT={scratch / 'cluster'}", f"SCHEDULER={address}")
        finally:
            for process in processes:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        same = (scratch / "local" / "grades.csv").read_text() == (scratch / "cluster" / "grades.csv").read_text()
    print(f"{'run':<38}{'wall s':>8}{'s/submission':>14}")
    print(f"{'make grade WORKERS=2':<38}{local:8.1f}{local / args.students:14.2f}")
    print(f"{'make grade SCHEDULER= (2 workers x 1)':<38}{cluster:8.1f}{cluster / args.students:14.2f}")
    print(f"cluster / local: {cluster / local:.2f}x the wall time; same grades.csv: {same}")


if __name__ == "__main__":
    main()
