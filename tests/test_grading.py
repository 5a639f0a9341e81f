"""`make grade` end to end with real nbgrader: exact grades for good, wrong and broken submissions."""

import csv
import re

import pytest

from conftest import make
from submissions import release_notebook, solution_sources, solved, submit

ASSIGNMENT = "03_rnn_lstm"
FULL = 30.0


def wrong_rnn_forward() -> str:
    correct = solution_sources(ASSIGNMENT)["rnn_forward"]
    assert "H = rnn_step(X, H, W_xh, W_hh, b_h)" in correct
    return correct.replace("H = rnn_step(X, H, W_xh, W_hh, b_h)", "H = 0.5 * rnn_step(X, H, W_xh, W_hh, b_h)")


def answer_that_kills_the_kernel() -> str:
    return solution_sources(ASSIGNMENT)["lstm_num_parameters"].replace('"""\n', '"""\n    import os; os._exit(1)\n', 1)


def answer_that_never_returns() -> str:
    source = solution_sources(ASSIGNMENT)["lstm_lm"]
    return source.replace("embedded = self.embedding(x)", "while True:\n            pass\n        embedded = self.embedding(x)")


def without_cell(grade_id: str):
    notebook = solved(ASSIGNMENT)
    notebook.cells = [c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") != grade_id]
    return notebook


CLASS = {
    "correct": lambda: solved(ASSIGNMENT),
    "blank": lambda: release_notebook(ASSIGNMENT),
    "one_wrong": lambda: solved(ASSIGNMENT, {"rnn_forward": wrong_rnn_forward()}),
    "kernel_dies": lambda: solved(ASSIGNMENT, {"lstm_num_parameters": answer_that_kills_the_kernel()}),
    "infinite_loop": lambda: solved(ASSIGNMENT, {"lstm_lm": answer_that_never_returns()}),
    "deleted_test": lambda: without_cell("test_lstm"),
    "not_json": lambda: '{"cells": [ oops',
}


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade the class twice into two output folders; returns both folders."""
    submissions = tmp_path_factory.mktemp("submitted")
    for student, build in CLASS.items():
        submit(submissions, student, ASSIGNMENT, build())
    outputs = []
    for run in ("first", "second"):
        output = tmp_path_factory.mktemp(run)
        result = make("grade", f"SUBMISSIONS={submissions}", f"GRADING_OUTPUT={output}", env={"CELL_TIMEOUT": "10"})
        assert "Graded 7 submissions" in result.stdout
        outputs.append(output)
    return outputs


def totals(output):
    return {row["student_id"]: float(row["score"]) for row in read_csv(output / "grades.csv")}


def cell_rows(output, student):
    return {row["grade_id"]: row for row in read_csv(output / "grades_by_test.csv") if row["student_id"] == student}


def test_every_submission_gets_exactly_its_grade(graded):
    assert totals(graded[0]) == {
        "blank": 0.0,
        "correct": FULL,
        "deleted_test": FULL,  # the deleted test cell is restored from the source and graded
        "infinite_loop": FULL - 3,  # test_lstm_lm times out; everything else counts
        "kernel_dies": FULL - 1,  # only the cell that killed the kernel scores 0
        "not_json": 0.0,
        "one_wrong": FULL - 5,  # exactly rnn_forward's points
    }
    assert {row["max_score"] for row in read_csv(graded[0] / "grades.csv")} == {str(FULL)}


def test_per_test_breakdown_says_what_went_wrong(graded):
    one_wrong = cell_rows(graded[0], "one_wrong")
    assert [g for g, row in one_wrong.items() if row["score"] != row["max_score"]] == ["test_rnn_forward"]
    assert "Check 'rnn_forward'" in one_wrong["test_rnn_forward"]["note"]
    assert cell_rows(graded[0], "kernel_dies")["test_lstm_num_parameters"]["note"].startswith("KernelDied")
    assert "interrupt" in cell_rows(graded[0], "infinite_loop")["test_lstm_lm"]["note"].lower() or "timeout" in cell_rows(graded[0], "infinite_loop")["test_lstm_lm"]["note"].lower()
    assert all("JSON" in row["note"] for row in cell_rows(graded[0], "not_json").values())
    blank = cell_rows(graded[0], "blank")
    assert len(blank) == 8 and all(row["note"].startswith("NotImplementedError") for row in blank.values())
    assert list(cell_rows(graded[0], "correct")) == [
        "test_rnn_step", "test_lstm_step", "test_rnn_forward", "test_lstm_forward",
        "test_lstm_cell", "test_lstm", "test_lstm_num_parameters", "test_lstm_lm",
    ]


def test_regrading_gives_identical_files(graded):
    for name in ("grades.csv", "grades_by_test.csv"):
        assert (graded[0] / name).read_text() == (graded[1] / name).read_text()


def test_gradebook_is_nbgraders_and_holds_every_student(graded):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{graded[0] / 'gradebook.db'}") as gradebook:
        assert sorted(s.id for s in gradebook.students) == sorted(CLASS)
        assert gradebook.find_submission(ASSIGNMENT, "one_wrong").score == FULL - 5
        assert gradebook.find_assignment(ASSIGNMENT).max_score == FULL


def test_feedback_is_written_without_hidden_tests(graded):
    hidden_code = ["check_hidden", "BEGIN HIDDEN", "seed=161", "LSTMLM(17, 3, 6"]  # the last two only in hidden tests
    for student in set(CLASS) - {"not_json"}:
        html = (graded[0] / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
        assert [code for code in hidden_code if code in html] == [], student
    feedback = (graded[0] / "feedback/one_wrong" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    assert re.search(r"CheckFailed: Check (&#39;|')rnn_forward(&#39;|'): output\[(&#39;|')outputs", feedback)

