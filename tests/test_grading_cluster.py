"""`make grade SCHEDULER=...` on a real Dask cluster on 127.0.0.1: a scheduler and two one-thread workers, started with
the Makefile's own targets (make dask-scheduler, make dask-worker).

A class of 04 (right, blank, a named mistake, a notebook that is not JSON, an answer that kills its kernel) is graded
on the cluster and locally: grades.csv and grades_by_test.csv must be identical. A worker killed while it grades has
its task run on the other one, and the grades are still identical; a submission whose grading kills two workers is
graded 0 with a note, and the run still finishes. A second run grades nothing again (resumable as a local run is).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT, make
from notebooks import mistakes, with_mistake
from submissions import read_csv, release_notebook, solution_sources, solved, submit

distributed = pytest.importorskip("distributed")

ASSIGNMENT = "04_attention"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(*arguments: str, log: Path) -> subprocess.Popen:
    """A make target in its own process group (so it can be stopped whole), logging to `log`."""
    return subprocess.Popen(["make", "--no-print-directory", *arguments, f"BIN={BIN}"], cwd=ROOT, start_new_session=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})


def stop(process: subprocess.Popen) -> None:
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sent)
            process.wait(timeout=30)
            return
        except ProcessLookupError:  # it had ended, with every process of its group
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(scheduler address, a client of it) for a scheduler and two workers that live as long as this module's tests."""
    logs = tmp_path_factory.mktemp("dask-logs")
    address = f"tcp://127.0.0.1:{free_port()}"
    processes = [start("dask-scheduler", f"DASK_PORT={address.rsplit(':', 1)[1]}", log=logs / "scheduler.log")]
    client = None
    try:
        deadline = time.monotonic() + 120
        while client is None:
            try:
                client = distributed.Client(address, timeout=5)
            except OSError:
                assert time.monotonic() < deadline, (logs / "scheduler.log").read_text()[-3000:]
                time.sleep(1)
        processes += [start("dask-worker", f"SCHEDULER={address}", log=logs / f"worker{n}.log") for n in (1, 2)]
        wait_for_workers(client, 2, logs)
        yield address, client, logs
    finally:
        if client is not None:
            client.close()
        for process in reversed(processes):
            stop(process)


def wait_for_workers(client, count: int, logs: Path) -> None:
    deadline = time.monotonic() + 180
    while len(client.scheduler_info()["workers"]) < count:
        assert time.monotonic() < deadline, "workers did not start: " + "".join(p.read_text()[-1500:] for p in logs.glob("worker*.log"))
        time.sleep(1)


@pytest.fixture(scope="module")
def class_of_04(tmp_path_factory) -> Path:
    submitted = tmp_path_factory.mktemp("cluster-class") / "submitted"
    mistake = next(m for m in mistakes(ASSIGNMENT) if m.id == "missing_scale")
    dying = solution_sources(ASSIGNMENT)["masked_softmax"].replace('"""\n', '"""\n    import os; os._exit(1)\n', 1)
    submit(submitted, "ada", ASSIGNMENT, solved(ASSIGNMENT))
    submit(submitted, "ben", ASSIGNMENT, release_notebook(ASSIGNMENT))
    submit(submitted, "cat", ASSIGNMENT, solved(ASSIGNMENT, {mistake.cell: with_mistake(solution_sources(ASSIGNMENT)[mistake.cell], mistake)}))
    submit(submitted, "dan", ASSIGNMENT, "{ this is not a notebook")
    submit(submitted, "eve", ASSIGNMENT, solved(ASSIGNMENT, {"masked_softmax": dying}))
    return submitted


@pytest.fixture(scope="module")
def graded_locally(class_of_04, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("graded-locally")
    make("grade", f"SUBMISSIONS={class_of_04}", f"GRADING_OUTPUT={output}", "WORKERS=2")
    return output


def scores(output: Path) -> tuple[list[dict], list[tuple]]:
    totals = read_csv(output / "grades.csv")
    by_test = [(r["student_id"], r["grade_id"], r["score"], r["max_score"], r["note"]) for r in read_csv(output / "grades_by_test.csv")]
    return totals, by_test


def task_of(student: str) -> str:
    """The start of the Dask key of a student's task (cluster.py names tasks so)."""
    return f"grade-{ASSIGNMENT}-{hashlib.sha256(student.encode()).hexdigest()[:16]}-"


def test_cluster_grades_a_class_as_local_grading_does_and_resumes(cluster, class_of_04, graded_locally, tmp_path):
    address, _, _ = cluster
    output = tmp_path / "graded-on-cluster"
    result = make("grade", f"SUBMISSIONS={class_of_04}", f"GRADING_OUTPUT={output}", f"SCHEDULER={address}")
    assert "Dask scheduler" in result.stdout and "on the Dask cluster" in result.stdout
    assert scores(output) == scores(graded_locally)
    totals = {row["student_id"]: float(row["score"]) for row in read_csv(output / "grades.csv")}
    assert totals["ada"] == 25.0 and totals["ben"] == 0.0 and 0 < totals["cat"] < 25.0 and totals["dan"] == 0.0
    assert (output / "feedback" / "ada" / ASSIGNMENT / f"{ASSIGNMENT}.html").is_file()
    again = make("grade", f"SUBMISSIONS={class_of_04}", f"GRADING_OUTPUT={output}", f"SCHEDULER={address}")
    assert "submissions are already graded with the same inputs" in again.stdout
    assert scores(output) == scores(graded_locally)


def kill_worker_running(client, prefix: str, timeout: float = 300) -> None:
    """Wait until a task whose key starts with `prefix` runs on a worker, and kill that worker's process (its nanny restarts it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker, keys in client.processing().items():
            if any(str(key).startswith(prefix) for key in keys):
                try:
                    pid = client.run(os.getpid, workers=[worker])[worker]
                except Exception:  # a worker the scheduler has not yet seen die: look again
                    continue
                time.sleep(2)  # well inside the grading of that submission
                os.kill(pid, signal.SIGKILL)
                return
        time.sleep(0.2)
    raise AssertionError(f"no task {prefix}... ran")


def test_a_killed_worker_has_its_task_graded_elsewhere_with_the_same_grades(cluster, class_of_04, graded_locally, tmp_path):
    address, client, logs = cluster
    output = tmp_path / "graded-on-cluster"
    log = tmp_path / "grade.log"
    run = start("grade", f"SUBMISSIONS={class_of_04}", f"GRADING_OUTPUT={output}", f"SCHEDULER={address}", log=log)
    try:
        kill_worker_running(client, task_of("ada"))
        assert run.wait(timeout=900) == 0, log.read_text()[-4000:]
    finally:
        stop(run)
    assert scores(output) == scores(graded_locally)
    wait_for_workers(client, 2, logs)  # the nanny started a new worker


def test_a_submission_that_kills_two_workers_is_graded_zero_with_a_note(cluster, class_of_04, tmp_path):
    address, client, logs = cluster
    output = tmp_path / "graded-on-cluster"
    log = tmp_path / "grade.log"
    run = start("grade", f"SUBMISSIONS={class_of_04}", f"GRADING_OUTPUT={output}", f"SCHEDULER={address}", log=log)
    try:
        for _ in range(2):
            kill_worker_running(client, task_of("cat"))
            wait_for_workers(client, 2, logs)
        assert run.wait(timeout=900) == 0, log.read_text()[-4000:]
    finally:
        stop(run)
    totals = {row["student_id"]: float(row["score"]) for row in read_csv(output / "grades.csv")}
    assert totals["cat"] == 0.0 and totals["ada"] == 25.0  # the others are graded as ever
    notes = {r["note"] for r in read_csv(output / "grades_by_test.csv") if r["student_id"] == "cat"}
    assert notes == {"submission not graded: grading this submission stopped 2 grading workers (a kernel that used up the "
                     "machine's memory, for instance); it was not graded"}
    assert "cat: FAILED" in log.read_text()


def test_an_unreachable_scheduler_is_said_plainly(tmp_path, class_of_04):
    result = make("grade", f"SUBMISSIONS={class_of_04}", f"GRADING_OUTPUT={tmp_path}", f"SCHEDULER=tcp://127.0.0.1:{free_port()}",
                  check=False)
    assert result.returncode != 0 and "Could not reach the Dask scheduler" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
