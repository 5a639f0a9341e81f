"""A busy machine and a noisy neighbour cost nobody points.

Two classes, each graded once through `make grade` with two workers:
- a correct class graded while the test keeps every core busy with spinners of its own (outside the class,
  each in a session of its own like another user's job, stopped when the class is graded);
- a class where one student's cells start detached spinners (setsid, fork + setsid) that escape the
  kernel's process tree, next to correct classmates graded at the same time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import psutil
import pytest

from conftest import ROOT, make
from submissions import insert_code_cell, read_csv, solved, submit

sys.path.insert(0, str(ROOT / "autograder"))
import isolation  # noqa: E402
import sandbox  # noqa: E402

ASSIGNMENT = "03_rnn_lstm"
FULL = 30.0
LOADED_CLASS = {"03_rnn_lstm": 30.0, "01_lstm_by_hand": 20.0}  # autograded points when correct

DETACHES_SPINNERS = """import os, subprocess
for _ in range(20):
    subprocess.run(["setsid", "-f", "sh", "-c", "while :; do :; done"])
for _ in range(10):
    if os.fork() == 0:
        os.setsid()
        while True:
            pass
print("spinners started")"""
# Counts the processes of the kernel's sandbox that are alive (not zombies the kernel never collected).
COUNTS_PROCESSES = """import os
def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
print("processes alive:", sum(alive(p) for p in os.listdir("/proc") if p.isdigit()))"""
SPINS_UNTIL_STOPPED = DETACHES_SPINNERS + "\nwhile True:\n    pass"


def totals(output) -> dict[tuple[str, str], float]:
    return {(row["student_id"], row["assignment"]): float(row["score"]) for row in read_csv(output / "grades.csv")}


def printed(output, student: str, marker: str) -> str:
    path = output / "autograded" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for cell in notebook.cells if marker in cell.source for o in cell.outputs)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A correct class graded on a machine whose cores are all kept busy by other work."""
    submissions, output = tmp_path_factory.mktemp("submitted"), tmp_path_factory.mktemp("graded")
    for number, assignment in enumerate(LOADED_CLASS):
        submit(submissions, f"student{number}", assignment, solved(assignment))
    count = 2 * (os.cpu_count() or 1)
    # Bounded in time even if this process dies: `timeout` ends each spinner.
    spinners = [subprocess.Popen(["timeout", "900", sys.executable, "-c", "while True: pass"], start_new_session=True)
                for _ in range(count)]
    try:
        # Under this load `import torch` alone takes longer than 4 s of wall time (and about 3 s of CPU time:
        # the setup cell may be cut off once, and then runs again with no CPU limit).
        result = make("grade", f"SUBMISSIONS={submissions}", f"GRADING_OUTPUT={output}", "WORKERS=2", env={"CELL_TIMEOUT": "4"})
    finally:
        for spinner in spinners:  # `timeout` and its spinner: the session's whole process group
            os.killpg(spinner.pid, signal.SIGKILL)
            spinner.wait()
    return {"output": output, "stdout": result.stdout}


def test_a_busy_machine_costs_a_correct_class_nothing(loaded):
    expected = {(f"student{n}", a): points for n, (a, points) in enumerate(LOADED_CLASS.items())}
    assert totals(loaded["output"]) == expected
    notes = [row["note"] for row in read_csv(loaded["output"] / "grades_by_test.csv") if row["note"] != "needs manual grading"]
    assert notes == [""] * len(notes)


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory):
    """A class with a student whose spinners escape the kernel's process tree, graded beside correct classmates."""
    submissions, output = tmp_path_factory.mktemp("submitted"), tmp_path_factory.mktemp("graded")
    detaches = insert_code_cell(insert_code_cell(solved(ASSIGNMENT), "test_rnn_forward", COUNTS_PROCESSES), "setup", DETACHES_SPINNERS)
    submit(submissions, "detaches_spinners", ASSIGNMENT, detaches)
    submit(submissions, "spins_until_stopped", ASSIGNMENT, insert_code_cell(solved(ASSIGNMENT), "setup", SPINS_UNTIL_STOPPED))
    for name in ("classmate_a", "classmate_b", "classmate_c"):
        submit(submissions, name, ASSIGNMENT, solved(ASSIGNMENT))
    before = set(kernel_processes())
    result = make("grade", f"SUBMISSIONS={submissions}", f"GRADING_OUTPUT={output}", "WORKERS=2", env={"CELL_TIMEOUT": "10"})
    return {"output": output, "stdout": result.stdout, "survivors": sorted(set(kernel_processes(output)) - before)}


def kernel_processes(output: Path | None = None) -> list[int]:
    """Processes, not yet ended, of the user ids that kernels graded as root run under; with `output`, not those of
    another grading run on the machine (working in another output's autograded/ or .grading/ folder)."""
    found = []
    for process in psutil.process_iter(["uids", "status", "cwd"]):
        if process.info["uids"] and process.info["uids"].real >= sandbox.FIRST_UID and process.info["status"] != psutil.STATUS_ZOMBIE:
            cwd = process.info["cwd"] or ""
            elsewhere = ("/autograded/" in cwd or "/.grading/" in cwd) and not cwd.startswith(str(Path(output).resolve()) + "/")
            if output is None or not elsewhere:
                found.append(process.pid)
    return found


def test_detached_processes_cost_nobody_points(neighbours):
    assert set(totals(neighbours["output"]).values()) == {FULL}


def test_detached_processes_are_killed_when_their_cell_ends(neighbours):
    assert "spinners started" in printed(neighbours["output"], "detaches_spinners", "setsid")
    # Left alive: the sandbox's init and the kernel itself.
    assert printed(neighbours["output"], "detaches_spinners", "processes alive") == "processes alive: 2\n"


def test_a_cell_that_keeps_its_spinners_busy_is_stopped_at_its_cpu_limit(neighbours):
    path = neighbours["output"] / "autograded/spins_until_stopped" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    [errors] = [[o for o in c.outputs if o.output_type == "error"] for c in notebook.cells if "while True" in c.source]
    assert errors and errors[0]["ename"] == "CellTimeoutError" and "CPU time" in errors[0]["evalue"]


@pytest.mark.skipif(os.geteuid() != 0, reason="kernels have user ids of their own only when grading as root")
def test_no_kernel_process_outlives_the_run(neighbours):
    assert neighbours["survivors"] == []


def test_the_run_summary_says_which_isolation_is_in_force(neighbours):
    summary = next(line for line in neighbours["stdout"].splitlines() if line.startswith("Isolation: "))
    groups = isolation.available() if os.geteuid() == 0 else ""
    assert "bubblewrap sandbox" in summary and "killed when it ends" in summary
    assert (f"a {groups} group per kernel" in summary) if groups else ("no cgroups" in summary), summary
