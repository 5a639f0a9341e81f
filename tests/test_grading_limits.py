"""Whole-notebook limits: thousands of cells, floods of every output type, a gigabyte written, a notebook that
sleeps past its time budget. One class of 03_rnn_lstm, each hostile cell added to an otherwise correct
submission, graded once through `make grade`.
"""

from __future__ import annotations


import nbformat
import pytest

from conftest import make
from submissions import insert_code_cell, read_csv, solved, submit

ASSIGNMENT = "03_rnn_lstm"
FULL = 30.0
NOTEBOOK_TIMEOUT = 45  # seconds for a whole notebook in this class; a correct one needs a few

HUGE_DISPLAY = 'from IPython.display import HTML, display\ndisplay(HTML("<p>" + "x" * 60_000_000 + "</p>"))'
HUGE_ERROR = 'raise ValueError("x" * 40_000_000)'
MANY_DISPLAYS = "from IPython.display import display\nfor i in range(20_000):\n    display(i)"
WRITES_A_GIGABYTE = """import os
block = b"x" * 2**20
os.makedirs("junk", exist_ok=True)
for number in range(6):
    with open(f"junk/part{number}.bin", "wb") as part:
        for _ in range(200):
            part.write(block)
print("wrote 1.2 GB")"""
SLEEPS = "import time\ntime.sleep(30)"
# Forks until the process limit and never collects its children: the ended children would keep the limit full, so
# that the next cell could not even start a thread, were the kernel not replaced.
LEAVES_ENDED_CHILDREN = """import os
try:
    while True:
        if os.fork() == 0:
            os._exit(0)
except BlockingIOError:
    print("the process limit is full")"""


def with_empty_cells(count: int):
    notebook = solved(ASSIGNMENT)
    index = next(i for i, c in enumerate(notebook.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "setup")
    notebook.cells[index + 1:index + 1] = [nbformat.v4.new_code_cell("", id=f"empty-{n}") for n in range(count)]
    return notebook


def with_cells_after_setup(*sources: str):
    notebook = solved(ASSIGNMENT)
    for source in reversed(sources):
        notebook = insert_code_cell(notebook, "setup", source)
    return notebook


CLASS = {
    "correct": lambda: solved(ASSIGNMENT),
    "empty_cells": lambda: with_empty_cells(2000),
    "huge_display": lambda: with_cells_after_setup(HUGE_DISPLAY),
    "huge_error": lambda: with_cells_after_setup(HUGE_ERROR),
    "many_displays": lambda: with_cells_after_setup(MANY_DISPLAYS),
    "writes_a_gigabyte": lambda: with_cells_after_setup(WRITES_A_GIGABYTE),
    "sleeps_past_budget": lambda: with_cells_after_setup(SLEEPS, SLEEPS),
    "leaves_ended_children": lambda: with_cells_after_setup(LEAVES_ENDED_CHILDREN),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    submissions, output = tmp_path_factory.mktemp("submitted"), tmp_path_factory.mktemp("graded")
    for student, build in CLASS.items():
        submit(submissions, student, ASSIGNMENT, build())
    make("grade", f"SUBMISSIONS={submissions}", f"GRADING_OUTPUT={output}", "WORKERS=2",
         env={"CELL_TIMEOUT": "10", "NOTEBOOK_TIMEOUT": str(NOTEBOOK_TIMEOUT)})
    return output


def autograded(output, student: str) -> nbformat.NotebookNode:
    return nbformat.read(output / "autograded" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)


def test_each_hostile_cell_costs_only_itself(graded):
    totals = {row["student_id"]: float(row["score"]) for row in read_csv(graded / "grades.csv")}
    assert totals == {student: FULL for student in CLASS} | {"sleeps_past_budget": 0.0}


@pytest.mark.parametrize("student", ["huge_display", "huge_error", "many_displays"])
def test_every_output_type_is_capped_in_the_notebook_and_the_feedback(graded, student):
    notebook = graded / "autograded" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    feedback = graded / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html"
    assert notebook.stat().st_size < 2_000_000 and feedback.stat().st_size < 3_000_000
    [hostile] = [c for c in autograded(graded, student).cells if c.source in (HUGE_DISPLAY, HUGE_ERROR, MANY_DISPLAYS)]
    assert len(hostile.outputs) <= 100
    assert "cut" in nbformat.writes(nbformat.v4.new_notebook(cells=[hostile]))


def test_what_a_cell_writes_past_its_quota_is_stopped_and_removed_and_never_reaches_feedback(graded):
    [cell] = [c for c in autograded(graded, "writes_a_gigabyte").cells if c.source == WRITES_A_GIGABYTE]
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert errors and "wrote more than" in errors[0]["evalue"]
    assert not (graded / "autograded/writes_a_gigabyte" / ASSIGNMENT / "junk").exists()
    feedback = graded / "feedback/writes_a_gigabyte" / ASSIGNMENT
    assert sorted(p.name for p in feedback.iterdir()) == [f"{ASSIGNMENT}.html"]


def test_a_cell_that_never_collects_its_children_says_so_and_the_cells_below_run_in_a_fresh_kernel(graded):
    [cell] = [c for c in autograded(graded, "leaves_ended_children").cells if c.source == LEAVES_ENDED_CHILDREN]
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert errors and "never collected" in errors[0]["evalue"] and "fresh kernel" in errors[0]["evalue"]
    rows = [row for row in read_csv(graded / "grades_by_test.csv") if row["student_id"] == "leaves_ended_children"]
    assert rows and all(row["note"] == "" for row in rows)


def test_a_notebook_past_its_time_budget_runs_no_more_cells(graded):
    rows = [row for row in read_csv(graded / "grades_by_test.csv") if row["student_id"] == "sleeps_past_budget"]
    assert rows and all(row["note"].startswith("SubmissionTimeLimit") for row in rows)


def test_thousands_of_empty_cells_are_graded_like_any_notebook(graded):
    rows = [row for row in read_csv(graded / "grades_by_test.csv") if row["student_id"] == "empty_cells"]
    assert len(rows) == 8 and all(row["note"] == "" for row in rows)


def test_a_cell_cut_to_the_output_limit_keeps_its_error_and_first_stderr_within_it():
    # A flood that ran into its time limit ends in an error: the cut keeps it (nbgrader scores by it), and the note
    # saying what was cut, and still no more than the limit in all.
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "autograder"))
    from preprocessors import MAX_OUTPUTS_PER_CELL, limit_output_size

    outputs = [nbformat.v4.new_output("display_data", data={"text/plain": str(n)}) for n in range(3 * MAX_OUTPUTS_PER_CELL)]
    outputs.insert(MAX_OUTPUTS_PER_CELL + 7, nbformat.v4.new_output("stream", name="stderr", text="a warning\n"))
    outputs.append(nbformat.v4.new_output("error", ename="CellTimeoutError", evalue="stopped", traceback=[]))
    cell = nbformat.v4.new_code_cell("flood()", outputs=outputs)
    limit_output_size(cell)
    assert len(cell.outputs) == MAX_OUTPUTS_PER_CELL
    assert [o.output_type for o in cell.outputs[-3:]] == ["stream", "error", "stream"]
    assert cell.outputs[-3].name == "stderr" and "more outputs cut" in cell.outputs[-1].text
