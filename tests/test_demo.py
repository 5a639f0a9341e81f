"""`make demo`, as the README's first command: a generated class graded by the real `make grade`, then its summary."""

import html

import pytest

from conftest import make
from demo import MISTAKES_MADE
from notebooks import mistakes
from submissions import read_csv


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    result = make("demo", f"DEMO={folder}")
    return folder, result.stdout


def cells(folder, student, assignment):
    return {row["grade_id"]: row for row in read_csv(folder / "grades_by_test.csv")
            if row["student_id"] == student and row["assignment"] == assignment}


def full(row) -> bool:
    return float(row["score"]) == float(row["max_score"])


def test_the_demo_grades_every_student_and_prints_the_table_and_where_to_look(demo):
    folder, printed = demo
    totals = {(row["student_id"], row["assignment"]): row for row in read_csv(folder / "grades.csv")}
    assert {student for student, _ in totals} == {"ada", "ben", "chen", "dana", "eve"}
    assert all(float(totals[("ben", a)]["score"]) == 0 for a in ("03_rnn_lstm", "04_attention"))
    for assignment in ("03_rnn_lstm", "04_attention"):  # every automatic point; the written answer waits for a person
        assert all(full(row) for row in cells(folder, "ada", assignment).values() if not row["grade_id"].endswith("_answer"))
    table = printed[printed.index("student"):]
    assert "ada" in table and "30 / 30" in table and "0 / 30" in table
    assert "Isolation: bubblewrap sandbox" in printed or "Isolation: none" in printed
    assert str(folder / "feedback") in printed and (folder / "feedback/chen/03_rnn_lstm/03_rnn_lstm.html").exists()


def test_catalogued_mistakes_are_named_and_cost_only_their_cells(demo):
    folder, printed = demo
    for assignment, made in MISTAKES_MADE.items():
        catalogue = {m.id: m for m in mistakes(assignment)}
        graded = cells(folder, "chen", assignment)
        for mistake in (catalogue[name] for name in made):
            row = graded[f"test_{mistake.cell}"]
            assert float(row["score"]) == 0 and mistake.title in row["note"], (assignment, mistake.id)
        untouched = {f"test_{cell}" for cell in ("lstm_cell", "lstm_num_parameters", "masked_softmax")}
        assert all(full(row) for grade_id, row in graded.items() if grade_id in untouched)


def test_a_forbidden_built_in_and_a_hostile_student_score_nothing_for_those_cells(demo):
    folder, printed = demo
    dana = cells(folder, "dana", "03_rnn_lstm")
    assert not full(dana["test_rnn_step"]) and "FromScratchViolation" in dana["test_rnn_step"]["note"]
    assert full(dana["test_lstm_step"])
    eve_03, eve_04 = cells(folder, "eve", "03_rnn_lstm"), cells(folder, "eve", "04_attention")
    assert float(eve_03["test_rnn_step"]["score"]) == 0 and full(eve_03["test_lstm_step"])
    assert float(eve_04["test_masked_softmax"]["score"]) == 0
    assert "Why points were lost" in printed and "eve" in printed[printed.index("Why points were lost"):]


def test_the_demo_class_gets_its_course_reports(demo):
    folder, printed = demo
    wide = {row["student_id"]: row for row in read_csv(folder / "reports/grades_wide.csv")}
    for row in read_csv(folder / "grades.csv"):
        assert float(wide[row["student_id"]][row["assignment"]]) == float(row["score"])
    report = (folder / "reports/report.html").read_text()
    assert report.count("data:image/png;base64,") == 2 and "<script" not in report
    for assignment, made in MISTAKES_MADE.items():  # chen's mistakes, counted in the named-mistakes table
        for mistake in (m for m in mistakes(assignment) if m.id in made):
            assert html.escape(mistake.title) in report, mistake.id
    assert (folder / "reports/manual/04_attention.html").exists() and str(folder / "reports") in printed

