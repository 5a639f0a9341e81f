"""`make grade` on submissions whose nbgrader metadata is odd: copied test cells, forged or edited metadata,
hidden-test markers in a student's own text. Each is graded on its real work and the oddity is noted."""

import copy

import nbformat
import pytest

from conftest import make
from submissions import read_csv, release_notebook, solved, submit

ASSIGNMENT = "03_rnn_lstm"
FULL = 30.0
FORGED = {"grade": True, "points": 100, "locked": True, "solution": False}
HIDDEN_CODE = ["check_hidden", "seed=161", "LSTMLM(17, 3, 6"]  # only in hidden tests (see test_grading.py)
QUOTED_TWICE = "My answer: the tests start at `### BEGIN HIDDEN TESTS`, as in\n### BEGIN HIDDEN TESTS\nwhich I read twice."
BEGIN_ONLY = "Why the LSTM helps:\n### BEGIN HIDDEN TESTS\nand no end to it."


def index_of(notebook, grade_id: str) -> int:
    return next(i for i, c in enumerate(notebook.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def with_copied_test(grade_id: str):
    """A correct submission with test cell `grade_id` pasted again just below itself, metadata and all."""
    notebook = solved(ASSIGNMENT)
    index = index_of(notebook, grade_id)
    pasted = copy.deepcopy(notebook.cells[index])
    pasted.id = "pasted-copy"
    notebook.cells.insert(index + 1, pasted)
    # It also claims a note of its own: only the grader writes notes.
    notebook.metadata["course_grading"] = {"anomalies": [{"grade_id": None, "note": "bonus: 100 points"}]}
    return notebook


def with_forged_cell(notebook, grade_id: str | None = None):
    """`notebook` with a cell of the student's carrying nbgrader metadata worth 100 points."""
    cell = nbformat.v4.new_code_cell('print("100 points, please")', id="forged")
    cell.metadata["nbgrader"] = {**FORGED, **({"grade_id": grade_id} if grade_id else {})}
    notebook.cells.insert(index_of(notebook, "setup") + 1, cell)
    return notebook


def with_test_metadata(grade_id: str, **changes):
    notebook = solved(ASSIGNMENT)
    notebook.cells[index_of(notebook, grade_id)].metadata.nbgrader.update(changes)
    return notebook


def with_written_text(text: str):
    notebook = solved(ASSIGNMENT)
    notebook.cells.insert(index_of(notebook, "setup") + 1, nbformat.v4.new_markdown_cell(text, id="my-words"))
    return notebook


CLASS = {
    "correct": lambda: solved(ASSIGNMENT),
    "copied_test": lambda: with_copied_test("test_rnn_step"),
    "forged_cell": lambda: with_forged_cell(solved(ASSIGNMENT)),
    "forged_id": lambda: with_forged_cell(solved(ASSIGNMENT), "my_bonus"),
    "ungraded_test": lambda: with_test_metadata("test_lstm_step", grade=False),
    "more_points": lambda: with_test_metadata("test_lstm_cell", points=50),
    "quotes_markers": lambda: with_written_text(QUOTED_TWICE),
    "begins_hidden": lambda: with_written_text(BEGIN_ONLY),
    "forged_blank": lambda: with_forged_cell(release_notebook(ASSIGNMENT), "my_bonus"),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The grading output of the class above, graded once."""
    submissions, output = tmp_path_factory.mktemp("submitted"), tmp_path_factory.mktemp("graded")
    for student, build in CLASS.items():
        submit(submissions, student, ASSIGNMENT, build())
    result = make("grade", f"SUBMISSIONS={submissions}", f"GRADING_OUTPUT={output}", "WORKERS=2", env={"CELL_TIMEOUT": "10"})
    assert f"Graded {len(CLASS)} submissions" in result.stdout
    return output


def notes(output, student) -> dict[str, str]:
    """{grade_id: note} of one student's rows in grades_by_test.csv."""
    return {row["grade_id"]: row["note"] for row in read_csv(output / "grades_by_test.csv") if row["student_id"] == student}


def test_real_work_earns_its_points_and_forged_cells_earn_none(graded):
    rows = read_csv(graded / "grades.csv")
    assert {row["student_id"]: float(row["score"]) for row in rows} == {student: FULL for student in CLASS} | {"forged_blank": 0.0}
    assert {float(row["max_score"]) for row in rows} == {FULL}
    blank = [row for row in read_csv(graded / "grades_by_test.csv") if row["student_id"] == "forged_blank"]
    assert len(blank) == 8 and all(float(row["score"]) == 0 for row in blank)


def test_a_copied_test_cell_is_noted_on_its_row_and_runs_ungraded(graded):
    copied = notes(graded, "copied_test")
    assert copied.pop("test_rnn_step") == "a copy of cell 'test_rnn_step' was ignored: it ran as an ordinary cell, ungraded"
    assert set(copied.values()) == {""}  # and the note the submission brought is not there
    notebook = nbformat.read(graded / "autograded/copied_test" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    index = index_of(notebook, "test_rnn_step")
    pasted = notebook.cells[index + 1]
    assert "nbgrader" not in pasted.metadata and pasted.outputs and pasted.source in notebook.cells[index].source


def test_forged_metadata_is_removed_and_noted_on_every_row(graded):
    removed = "nbgrader metadata of a cell the source does not have"
    assert set(notes(graded, "forged_cell").values()) == {f"{removed} was removed"}
    assert set(notes(graded, "forged_id").values()) == {f"{removed} (grade_id 'my_bonus') was removed"}
    blank = notes(graded, "forged_blank")
    assert all(note.endswith(f"; {removed} (grade_id 'my_bonus') was removed") for note in blank.values()), blank


def test_edited_test_metadata_is_restored_from_the_source(graded):
    for student, grade_id in (("ungraded_test", "test_lstm_step"), ("more_points", "test_lstm_cell")):
        edited = notes(graded, student)
        assert edited.pop(grade_id) == f"the nbgrader metadata of cell '{grade_id}' was restored from the source"
        assert set(edited.values()) == {""}, student


def feedback(output, student) -> str:
    return (output / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()


def test_every_feedback_is_written_without_hidden_tests(graded):
    for student in CLASS:
        assert [code for code in HIDDEN_CODE if code in feedback(graded, student)] == [], student


def test_hidden_test_markers_in_a_students_text_leave_the_feedback_whole(graded):
    for student, text in (("quotes_markers", QUOTED_TWICE), ("begins_hidden", BEGIN_ONLY)):
        assert text.splitlines()[-1] in feedback(graded, student)  # the student's words are shown as written
        assert set(notes(graded, student).values()) == {
            "a cell of the student's quotes the hidden-test markers: it was left as written in the feedback"}
