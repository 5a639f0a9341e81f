"""Course reports (autograder/reports.py): a small class of 04_attention graded with the real `make grade`, then reported.

The class: a correct submission, a blank one, two with a catalogued mistake (one of them with a hostile written
answer), and one whose written answer is given a score by hand through nbgrader's Gradebook API.
"""

from __future__ import annotations

import csv
import html
import re
import sys

import pytest

from conftest import ROOT, make
from notebooks import mistakes, with_mistake
from submissions import read_csv, release_notebook, solution_sources, solved, submit

sys.path.insert(0, str(ROOT / "autograder"))
import reports  # noqa: E402

ASSIGNMENT = "04_attention"
WRITTEN = "shapes_answer"
MISTAKE = next(m for m in mistakes(ASSIGNMENT) if m.id == "missing_scale")
MISTAKE_CELL = "test_dot_product_attention"
ANSWER = "Scores are (B, n, m): one per query and key; the output is (B, n, v)."
HOSTILE = '<script>alert(1)</script>\n</pre><img src=x onerror="alert(2)"> & done'
MANUAL_SCORE = 3.5
LMS = {  # what an instructor copies from a Canvas gradebook export; "blank" is left out on purpose
    "correct": ["Lovelace, Ada", "101", "S101", "ada", "Section A"],
    "mistaken": ["Hopper, Grace", "102", "S102", "grace", "Section A"],
    "writer": ["Turing, Alan", "103", "", "", "Section B"],
    "hostile": ["Mallory, Eve", "104", "S104", "eve", "Section B"],
}


def with_missing_scale(replace: dict[str, str] | None = None):
    """The solved notebook with the catalogued mistake 'missing_scale' made in its answer cell."""
    answer = with_mistake(solution_sources(ASSIGNMENT)[MISTAKE.cell], MISTAKE)
    return solved(ASSIGNMENT, {MISTAKE.cell: answer, **(replace or {})})


CLASS = {
    "correct": lambda: solved(ASSIGNMENT),
    "blank": lambda: release_notebook(ASSIGNMENT),
    "mistaken": lambda: with_missing_scale(),
    "writer": lambda: solved(ASSIGNMENT, {WRITTEN: ANSWER}),
    "hostile": lambda: with_missing_scale({WRITTEN: HOSTILE}),
}


def gradebook(output):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{output / 'gradebook.db'}")


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    """The class graded once by `make grade`; what it printed and the lms_ids.csv template it left."""
    submissions = tmp_path_factory.mktemp("submitted")
    for student, build in CLASS.items():
        submit(submissions, student, ASSIGNMENT, build())
    output = tmp_path_factory.mktemp("graded")
    result = make("grade", f"SUBMISSIONS={submissions}", f"GRADING_OUTPUT={output}", "WORKERS=2")
    template = read_csv(output / "lms_ids.csv") if (output / "lms_ids.csv").exists() else None
    return {"output": output, "stdout": result.stdout, "stderr": result.stderr, "template": template,
            "report_after_grading": (output / "reports" / "report.html").exists()}


@pytest.fixture(scope="module")
def reported(graded) -> dict:
    """The reports written again after the mapping is filled in and the writer's answer is scored by hand."""
    output = graded["output"]
    with open(output / "lms_ids.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(reports.LMS_COLUMNS)
        writer.writerows([student, *ids] for student, ids in LMS.items())
    with gradebook(output) as book:
        grade = book.find_grade(WRITTEN, ASSIGNMENT, ASSIGNMENT, "writer")
        grade.manual_score, grade.needs_manual_grade = MANUAL_SCORE, False  # as formgrader saves a score
        book.db.commit()
    written = reports.write_reports(output)
    return {"output": output, "written": written, "folder": output / "reports"}


def test_the_class_is_graded_as_the_other_tests_expect(graded):
    """The automatic grades the report tests build on (the writer's hand-given points come later)."""
    totals = {row["student_id"]: float(row["score"]) for row in read_csv(graded["output"] / "grades.csv")}
    notes = [f"{r['student_id']}/{r['grade_id']}: {r['score']} {r['note']}" for r in read_csv(graded["output"] / "grades_by_test.csv")]
    assert totals == {"correct": 25.0, "blank": 0.0, "mistaken": 15.0, "writer": 25.0, "hostile": 15.0}, "\n".join(notes)


def test_make_grade_writes_the_reports_and_a_mapping_template(graded):
    assert graded["report_after_grading"], graded["stderr"][-2000:]
    assert "WARNING: the course reports" not in graded["stderr"]
    assert "wrote a template" in graded["stdout"]
    assert sorted(row["student_id"] for row in graded["template"]) == sorted(CLASS)
    assert all(row[column] == "" for row in graded["template"] for column in reports.CANVAS_STUDENT_COLUMNS)


def test_the_wide_table_holds_the_gradebook_scores_with_hand_given_points(reported):
    rows = read_csv(reported["folder"] / "grades_wide.csv")
    assert list(rows[0]) == ["student_id", ASSIGNMENT, "total", "max_score", "percent"]
    with gradebook(reported["output"]) as book:
        expected = {student: book.find_submission(ASSIGNMENT, student).score for student in CLASS}
        maximum = book.find_assignment(ASSIGNMENT).max_score
    got = {row["student_id"]: float(row[ASSIGNMENT]) for row in rows}
    assert got == expected
    assert got["writer"] == got["correct"] + MANUAL_SCORE  # the hand-given points are in
    assert got["blank"] == 0.0 and got["mistaken"] == got["correct"] - 10  # the mistake costs its test cell only
    for row in rows:
        assert float(row["total"]) == float(row[ASSIGNMENT]) and float(row["max_score"]) == maximum == 30.0
        assert float(row["percent"]) == round(100 * float(row["total"]) / maximum, 2)


def test_the_canvas_file_has_canvas_layout_and_leaves_out_unmapped_students_loudly(reported, capsys):
    with open(reported["folder"] / "canvas_gradebook.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", ASSIGNMENT]
    assert rows[0] == {"Student": "Points Possible", "ID": "", "SIS User ID": "", "SIS Login ID": "", "Section": "", ASSIGNMENT: "30"}
    wide = {row["student_id"]: row[ASSIGNMENT] for row in read_csv(reported["folder"] / "grades_wide.csv")}
    by_id = {row["ID"]: row for row in rows[1:]}
    assert sorted(by_id) == ["101", "102", "103", "104"]
    for student, (name, canvas_id, sis_user, sis_login, section) in LMS.items():
        row = by_id[canvas_id]
        assert (row["Student"], row["SIS User ID"], row["SIS Login ID"], row["Section"]) == (name, sis_user, sis_login, section)
        assert float(row[ASSIGNMENT]) == float(wide[student])
    assert by_id["103"][ASSIGNMENT] == "28.5"
    reports.write_reports(reported["output"])
    assert "1 student left out of canvas_gradebook.csv" in capsys.readouterr().out and "blank" in wide
    page = (reported["folder"] / "report.html").read_text()
    assert "1 student not in canvas_gradebook.csv" in page and "<li>blank</li>" in page


def test_the_report_page_has_its_plots_pass_rates_and_counts_the_named_mistake(reported):
    page = (reported["folder"] / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert "<script" not in page.lower() and not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "default-src 'none'" in html.unescape(page)
    mistake_row = (f"<td>{ASSIGNMENT}</td><td>{MISTAKE_CELL}</td><td>{html.escape(MISTAKE.title)}</td>"
                   '<td class="number">2</td>')
    assert mistake_row in page  # mistaken and hostile, each once, though their note and their error both name it
    rates = {row[1]: row[3] for row in re.findall(r"<tr><td>(04_attention)</td><td>(test_\w+)</td><td[^>]*>(\d+)</td><td[^>]*>(\d+/\d+)</td>", page)}
    assert rates == {"test_masked_softmax": "4/5", MISTAKE_CELL: "2/5"}


def test_the_named_mistakes_count_each_student_once_per_cell(reported):
    data = reports.read_gradebook(reported["output"])
    table = reports.named_mistakes(data, reported["output"], reports.Autograded(reported["output"]))
    assert table.to_dict("records") == [{"assignment": ASSIGNMENT, "grade_id": MISTAKE_CELL, "title": MISTAKE.title, "students": 2}]


def test_the_manual_grading_page_shows_every_answer_escaped_beside_the_model_answer(reported):
    page = (reported["folder"] / "manual" / f"{ASSIGNMENT}.html").read_text()
    assert "<script" not in page.lower() and "<img" not in page.lower() and "alert(1)</script>" not in page
    assert html.escape(HOSTILE) in page  # shown, as text
    assert html.escape(ANSWER) in page
    model = next(text for grade_id, text in solution_sources(ASSIGNMENT).items() if grade_id == WRITTEN)
    assert html.escape(model.splitlines()[0]) in page and "Model answer" in page
    assert f"{MANUAL_SCORE} / 5 (by hand)" in page and "0 / 5 (to grade)" in page
    with gradebook(reported["output"]) as book:
        ids = {student: book.find_submission_notebook(ASSIGNMENT, ASSIGNMENT, student).id for student in CLASS}
    for student, notebook_id in ids.items():
        assert f'href="/formgrader/submissions/{notebook_id}/"' in page, student
    sections = re.findall(r"<section><h2", page)
    assert len(sections) == 1  # one written answer in 04_attention


def test_make_report_works_from_the_command_line(reported, tmp_path):
    for path in reported["folder"].rglob("*"):
        if path.is_file():
            path.unlink()
    result = make("report", f"GRADING_OUTPUT={reported['output']}", "FORMGRADER_URL=http://localhost:8888")
    assert "Wrote the course reports" in result.stdout
    for name in ("grades_wide.csv", "canvas_gradebook.csv", "report.html", f"manual/{ASSIGNMENT}.html"):
        assert (reported["folder"] / name).is_file(), name
    assert 'href="http://localhost:8888/formgrader/submissions/' in (reported["folder"] / "manual" / f"{ASSIGNMENT}.html").read_text()
    missing = make("report", f"GRADING_OUTPUT={tmp_path}", check=False)
    assert missing.returncode != 0 and "No gradebook at" in missing.stdout + missing.stderr
    assert not (tmp_path / "gradebook.db").exists()
