"""Course reports from the gradebook `make grade` wrote: a wide grade table, a Canvas import file, an HTML report and
pages for grading written answers by question.

Run `make report` (or `python autograder/reports.py --output DIR`); `make grade` also writes them when it ends. Everything
is read from the grading output folder (GRADING_OUTPUT, by default the repository root) and written to <output>/reports/:

- grades_wide.csv: one row per student in the gradebook: each assignment's score (nbgrader's submission score, so
  automatic points plus those given by hand in formgrader), the total, the maximum and the percentage. An assignment a
  student did not submit counts 0.
- canvas_gradebook.csv: the same scores in Canvas's gradebook import layout (see CANVAS_STUDENT_COLUMNS).
- report.html: a self-contained page (plots embedded, no scripts, nothing loaded from elsewhere): score distributions,
  the pass rate of every test cell, and how often each catalogued mistake (autograder/mistakes/<assignment>.toml) was
  recognised in each test cell.
- manual/<assignment>.html: for each written answer graded by hand, every student's answer beside the model answer,
  the current score and a link to the submission in formgrader.

Everything a student wrote or printed is treated as hostile: all text on the pages goes through html.escape, and the
pages forbid scripts through their Content-Security-Policy.

Importing the grades into Canvas
--------------------------------
1. Canvas needs to know who each nbgrader student is. The mapping is <output>/lms_ids.csv, with the columns
   student_id (the nbgrader id, the submission folder's name), Student, ID, SIS User ID, SIS Login ID and Section.
   The first `make report` writes it as a template listing every student with empty Canvas columns. Fill them in from
   a Canvas gradebook export (Grades > Export > Export Entire Gradebook): Student is the name as Canvas shows it
   ("Last, First"), ID Canvas's numeric user id, and so on. Canvas needs one of ID, SIS User ID, SIS Login ID or
   Student to recognise a student. Run `make report` again afterwards.
2. Students missing from the mapping (or with all of those columns empty) are left out of canvas_gradebook.csv, and
   listed in the command's output and in report.html: add them to lms_ids.csv and run `make report` again.
3. In Canvas: Grades > Import, choose reports/canvas_gradebook.csv, and check the preview before saving. Each
   assignment column is matched to the Canvas assignment of the same title (name the Canvas assignments like the
   nbgrader ones, e.g. 04_attention, or rename the column to "Title (canvas assignment id)"); a column that matches
   none becomes a new assignment, with the Points Possible row as its maximum. Canvas overwrites existing scores of
   the students and assignments in the file. The total is not in the file: Canvas computes its own.

Formgrader links on the manual grading pages are paths on the Jupyter server that `make formgrader` starts (by default
http://localhost:8888): open the page while that server runs and follow the path there, or pass --formgrader-url
(FORMGRADER_URL=http://host:port with make report) to make the links absolute.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import math
import re
import sys
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export import FORMULA_STARTS, inert_cell as inert  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Canvas's gradebook import layout, as Canvas's importer reads it (instructure/canvas-lms,
# app/models/gradebook_importer.rb: header?, update_column_count, process_pp, process_student; and its test fixture
# spec/fixtures/gradebooks/basic_course_with_sis_login_id.csv), which is also the layout of Canvas's own gradebook export:
# - row 1: "Student", "ID", then optionally "SIS User ID" and "SIS Login ID", then "Section", then one column per
#   assignment, titled like the assignment or "Title (canvas assignment id)"; trailing columns named like
#   "Current Score", "Final Score" or "Final Grade" are dropped as read-only, any other column is taken for an assignment;
# - row 2, optional: "Points Possible" in the first column, empty student columns, each assignment's maximum;
# - one row per student, recognised by ID (Canvas's user id), else SIS User ID, else SIS Login ID, else by name.
# Ohio State's guide to importing a CSV into Carmen (Canvas) grades lists the same columns A-E:
# https://teaching.resources.osu.edu/toolsets/carmencanvas/guides/calculating-final-grades/import-csv-file-carmen-grades
CANVAS_STUDENT_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
CANVAS_POINTS_ROW = "Points Possible"
LMS_COLUMNS = ["student_id", *CANVAS_STUDENT_COLUMNS]
IDENTIFYING_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID"]  # one of them lets Canvas find the student

FULL_POINTS = 1e-9  # a score this close to the maximum counts as full points

# Only images embedded in the page, inline styles, and links followed by the reader: nothing runs, nothing is fetched.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'none'; base-uri 'none'"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; font-size: 0.9em; }
img { max-width: 100%; }
.note { color: #555; }
.warning { color: #a40; }
.pair { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 1.5em; align-items: start; }
.model { position: sticky; top: 0.5em; background: #f6f9f2; border: 1px solid #cdb; padding: 0.6em; }
"""


@dataclass
class Cell:
    """A graded cell of an assignment's notebook, as the gradebook knows it."""

    notebook: str
    name: str
    max_score: float
    cell_type: str
    written: bool  # a written answer (solution and grade cell), graded by hand; else an autograded test cell


@dataclass
class Assignment:
    """An assignment in the gradebook, with its graded cells in notebook order."""

    name: str
    max_score: float
    notebooks: list[str]
    cells: list[Cell] = field(default_factory=list)


@dataclass
class Grade:
    """One student's grade for one graded cell."""

    student: str
    assignment: str
    notebook: str
    cell: str
    score: float
    max_score: float
    manual_score: float | None
    needs_manual_grade: bool
    submission_notebook_id: str


@dataclass
class ClassData:
    """What the gradebook holds, read in one session."""

    students: list[str]
    assignments: dict[str, Assignment]
    scores: dict[tuple[str, str], float]  # (student, assignment): the submission's score
    grades: list[Grade]


def gradebook_path(output: Path) -> Path:
    """Where `make grade` keeps nbgrader's gradebook for this output folder."""
    return output / "gradebook.db"


def source_notebook(assignment: str, notebook: str):
    """The instructor's source notebook solutions/<assignment>/<notebook>.ipynb, or None where there is none."""
    import nbformat

    path = ROOT / "solutions" / assignment / f"{notebook}.ipynb"
    try:
        return nbformat.read(path, as_version=4)
    except (OSError, ValueError):
        return None


def source_order(assignment: str, notebook: str) -> dict[str, int]:
    """{grade_id: position} of the graded cells in the source notebook (empty without it)."""
    source = source_notebook(assignment, notebook)
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in source.cells] if source else []
    return {grade_id: index for index, grade_id in enumerate(ids) if grade_id}


def read_gradebook(output: Path) -> ClassData:
    """Students, assignments, submission scores and cell grades from <output>/gradebook.db."""
    from nbgrader.api import Gradebook

    path = gradebook_path(output)
    if not path.is_file():  # nbgrader would create an empty gradebook
        raise FileNotFoundError(f"no gradebook at {path}: run make grade first (with the same GRADING_OUTPUT)")
    assignments, scores, grades = {}, {}, []
    with Gradebook(f"sqlite:///{path}?timeout=120") as gradebook:
        students = sorted(student.id for student in gradebook.students)
        for record in sorted(gradebook.assignments, key=lambda a: a.name):
            assignment = Assignment(record.name, float(record.max_score or 0.0), [n.name for n in record.notebooks])
            for notebook in record.notebooks:
                written = {cell.name for cell in notebook.solution_cells}
                order = source_order(record.name, notebook.name)
                for cell in sorted(notebook.grade_cells, key=lambda c: (order.get(c.name, len(order)), c.name)):
                    assignment.cells.append(Cell(notebook.name, cell.name, float(cell.max_score), cell.cell_type, cell.name in written))
            assignments[record.name] = assignment
            for submission in record.submissions:
                scores[(submission.student.id, record.name)] = float(submission.score)
                for notebook in submission.notebooks:
                    for grade in notebook.grades:
                        grades.append(Grade(submission.student.id, record.name, notebook.name, grade.name, float(grade.score),
                                            float(grade.max_score), grade.manual_score, bool(grade.needs_manual_grade), notebook.id))
    return ClassData(students, assignments, scores, grades)


def wide_table(data: ClassData) -> pd.DataFrame:
    """One row per student: each assignment's score (0 if not submitted), total, max_score and percent."""
    names = list(data.assignments)
    rows = [[student, *(data.scores.get((student, name), 0.0) for name in names)] for student in data.students]
    table = pd.DataFrame(rows, columns=["student_id", *names]).astype({name: "float64" for name in names})
    maximum = sum(assignment.max_score for assignment in data.assignments.values())
    table["total"] = table[names].sum(axis=1) if names else 0.0
    table["max_score"] = maximum
    table["percent"] = (100 * table["total"] / maximum).round(2) if maximum else 0.0
    return table


def uninert(value: str) -> str:
    """`value` without the quote `inert` put in front of it."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_STARTS) else value


def write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` through a partial file, so a reader never sees half of it; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


def csv_text(header: list[str], rows: list[list]) -> str:
    """A CSV document of `header` and `rows`."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return stream.getvalue()


def number(value: float) -> str:
    """A score as a CSV cell: '30' or '28.5'."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_wide(table: pd.DataFrame, path: Path) -> Path:
    """Write grades_wide.csv, student ids made inert for spreadsheets."""
    table = table.assign(student_id=table["student_id"].map(inert))
    return write_text(path, table.to_csv(index=False, lineterminator="\r\n"))


def read_lms_ids(path: Path, students: list[str]) -> tuple[dict[str, dict[str, str]], bool]:
    """({nbgrader id: {Canvas column: value}} from lms_ids.csv, whether a template was written because there was none)."""
    if not path.exists():
        rows = [[inert(student), *[""] * len(CANVAS_STUDENT_COLUMNS)] for student in students]
        write_text(path, csv_text(LMS_COLUMNS, rows))
        return {}, True
    mapping = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:  # a spreadsheet may have saved it with a BOM
        for row in csv.DictReader(handle):
            student = uninert((row.get("student_id") or "").strip())
            if student and student not in mapping:
                mapping[student] = {column: (row.get(column) or "").strip() for column in CANVAS_STUDENT_COLUMNS}
    return mapping, False


def canvas_table(table: pd.DataFrame, data: ClassData, mapping: dict[str, dict[str, str]]) -> tuple[list[list[str]], list[str]]:
    """(the rows of canvas_gradebook.csv after its header, the students left out for want of Canvas ids)."""
    names = list(data.assignments)
    rows = [[CANVAS_POINTS_ROW, *[""] * (len(CANVAS_STUDENT_COLUMNS) - 1), *(number(data.assignments[n].max_score) for n in names)]]
    unmapped = []
    for record in table.to_dict("records"):
        ids = mapping.get(record["student_id"], {})
        if not any(ids.get(column) for column in IDENTIFYING_COLUMNS):
            unmapped.append(record["student_id"])
            continue
        rows.append([ids.get(column, "") for column in CANVAS_STUDENT_COLUMNS] + [number(record[n]) for n in names])
    return rows, unmapped


def grades_by_test_notes(output: Path) -> dict[tuple[str, str, str, str], str]:
    """{(student, assignment, notebook, grade_id): note} from grades_by_test.csv (empty without it)."""
    path = output / "grades_by_test.csv"
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {(r["student_id"], r["assignment"], r["notebook"], r["grade_id"]): r.get("note") or "" for r in csv.DictReader(handle)}


def mistake_titles(assignment: str) -> list[str]:
    """The titles of the mistakes catalogued in autograder/mistakes/<assignment>.toml."""
    path = HERE / "mistakes" / f"{assignment}.toml"
    if not path.exists():
        return []
    return [entry["title"] for entry in tomllib.loads(path.read_text()).get("mistake", []) if entry.get("title")]


class Autograded:
    """The autograded notebooks under <output>/autograded/, each read once; None for one that is missing or unreadable."""

    def __init__(self, output: Path):
        self.root = output / "autograded"
        self.notebooks: dict[tuple[str, str, str], object] = {}

    def cells(self, student: str, assignment: str, notebook: str) -> dict[str, object] | None:
        """{grade_id: cell} of a student's autograded notebook, or None."""
        key = (student, assignment, notebook)
        if key not in self.notebooks:
            import nbformat

            try:
                read = nbformat.read(self.root / student / assignment / f"{notebook}.ipynb", as_version=4)
                self.notebooks[key] = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in read.cells}
            except Exception:  # missing, or not a notebook: nothing of it is shown
                self.notebooks[key] = None
        return self.notebooks[key]


def error_text(cell) -> str:
    """Everything the error outputs of a cell say, without colour codes."""
    parts = []
    for output in cell.get("outputs", []) if cell is not None else []:
        if output.get("output_type") == "error":
            parts += [str(output.get("ename", "")), str(output.get("evalue", "")), *map(str, output.get("traceback", []))]
    return ANSI.sub("", "\n".join(parts))


def named_mistakes(data: ClassData, output: Path, autograded: Autograded) -> pd.DataFrame:
    """Columns assignment, grade_id, title, students: how many students' test cell named each catalogued mistake.

    A mistake counts when the cell's error output in the autograded notebook (a visible check) or its note in
    grades_by_test.csv (a hidden check) says "the output matches a known mistake: <title>."; once per student and cell.
    """
    notes = grades_by_test_notes(output)
    titles = {name: mistake_titles(name) for name in data.assignments}
    tests = {(name, c.notebook, c.name) for name, assignment in data.assignments.items() for c in assignment.cells if not c.written}
    found: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for grade in data.grades:
        if (grade.assignment, grade.notebook, grade.cell) not in tests or not titles[grade.assignment]:
            continue
        cells = autograded.cells(grade.student, grade.assignment, grade.notebook) or {}
        text = error_text(cells.get(grade.cell)) + "\n" + notes.get((grade.student, grade.assignment, grade.notebook, grade.cell), "")
        for title in titles[grade.assignment]:
            if f"known mistake: {title}." in text:
                found[(grade.assignment, grade.cell, title)].add(grade.student)
    order = {(name, c.name): index for name, assignment in data.assignments.items() for index, c in enumerate(assignment.cells)}
    rows = [[assignment, grade_id, title, len(students), order.get((assignment, grade_id), len(order))]
            for (assignment, grade_id, title), students in found.items()]
    table = pd.DataFrame(rows, columns=["assignment", "grade_id", "title", "students", "position"])
    table = table.sort_values(["assignment", "position", "students", "title"], ascending=[True, True, False, True], ignore_index=True)
    return table.drop(columns="position")


def pass_rates(data: ClassData) -> pd.DataFrame:
    """Columns assignment, grade_id, max_score, passed, submissions, rate: the share of submissions at full points, per test cell."""
    graded = defaultdict(list)
    for grade in data.grades:
        graded[(grade.assignment, grade.notebook, grade.cell)].append(grade.score >= grade.max_score - FULL_POINTS)
    rows = []
    for assignment in data.assignments.values():
        for cell in assignment.cells:
            if not cell.written:
                marks = graded.get((assignment.name, cell.notebook, cell.name), [])
                rows.append([assignment.name, cell.name, cell.max_score, sum(marks), len(marks), sum(marks) / len(marks) if marks else math.nan])
    return pd.DataFrame(rows, columns=["assignment", "grade_id", "max_score", "passed", "submissions", "rate"])


def png(figure) -> str:
    """A matplotlib figure as a data: URL of a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    stream = io.BytesIO()
    figure.savefig(stream, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(stream.getvalue()).decode("ascii")


def distribution_plot(table: pd.DataFrame, data: ClassData) -> str:
    """Histograms of every student's score (0 where not submitted), one panel per assignment, as a PNG data URL."""
    from matplotlib.figure import Figure

    names = list(data.assignments)
    columns = min(len(names), 3)
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4.2 * columns, 2.8 * rows), layout="constrained")
    for index, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, index + 1)
        maximum = data.assignments[name].max_score or 1.0
        axes.hist(table[name], bins=min(20, max(1, math.ceil(maximum))), range=(0, maximum), color="#4a7ab5", edgecolor="white")
        axes.set_title(name, fontsize=10)
        axes.set_xlabel(f"score (of {number(maximum)})", fontsize=9)
        axes.set_ylabel("students", fontsize=9)
        axes.yaxis.get_major_locator().set_params(integer=True)
    return png(figure)


def pass_rate_plot(rates: pd.DataFrame) -> str:
    """Horizontal bars of each test cell's pass rate, one panel per assignment, as a PNG data URL."""
    from matplotlib.figure import Figure

    groups = [(name, group) for name, group in rates.groupby("assignment", sort=True)]
    heights = [max(1.2, 0.35 * len(group) + 0.8) for _, group in groups]
    figure = Figure(figsize=(7.5, sum(heights)), layout="constrained")
    panels = figure.subplots(len(groups), 1, squeeze=False, height_ratios=heights)[:, 0]
    for axes, (name, group) in zip(panels, groups):
        labels = [str(label) for label in group["grade_id"]][::-1]
        rates_shown = group["rate"].to_numpy()[::-1]
        values = [0.0 if math.isnan(rate) else rate for rate in rates_shown]
        axes.barh(labels, values, color="#5a9e6f")
        axes.set_xlim(0, 1)
        axes.set_title(name, fontsize=10)
        axes.xaxis.set_major_formatter(lambda x, _: f"{x:.0%}")
        for y, (value, rate) in enumerate(zip(values, rates_shown)):
            axes.text(min(value, 0.9) + 0.01, y, "no submissions" if math.isnan(rate) else f"{rate:.0%}", va="center", fontsize=8)
    return png(figure)


def plural(count: int, word: str) -> str:
    """'1 student', '2 students'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def esc(value) -> str:
    """Any value as HTML text."""
    return html.escape(str(value), quote=True)


def html_table(header: list[str], rows: list[list], numeric: frozenset[int] | set[int] = frozenset()) -> str:
    """An HTML table of escaped text; columns whose index is in `numeric` are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="number">{esc(v)}</td>' if i in numeric else f"<td>{esc(v)}</td>" for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    """A whole HTML document around `body` (which must already be escaped)."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
            f'<meta name="referrer" content="no-referrer"><title>{esc(title)}</title><style>{STYLE}</style></head>'
            f"<body>{body}</body></html>\n")


def written_cells(data: ClassData) -> dict[str, list[Cell]]:
    """{assignment: its written answers graded by hand}, for the assignments that have some."""
    cells = {name: [c for c in assignment.cells if c.written] for name, assignment in data.assignments.items()}
    return {name: found for name, found in cells.items() if found}


def report_page(data: ClassData, table: pd.DataFrame, rates: pd.DataFrame, mistakes: pd.DataFrame, lms: dict) -> str:
    """The HTML of report.html."""
    parts = [f"<h1>Course report</h1><p class=\"note\">From {esc(gradebook_path(lms['output']))}: "
             f"{plural(len(data.students), 'student')}, {plural(len(data.assignments), 'assignment')}.</p>"]
    summary = []
    for name, assignment in data.assignments.items():
        submitted = [score for (student, other), score in data.scores.items() if other == name]
        values = pd.Series(submitted, dtype="float64")
        summary.append([name, len(submitted), number(assignment.max_score),
                        *(f"{v:.2f}" if len(values) else "–" for v in (values.mean(), values.median(), values.min(), values.max()))])
    parts.append("<h2>Assignments</h2>" + html_table(["assignment", "submissions", "max", "mean", "median", "min", "max scored"], summary,
                                                     {1, 2, 3, 4, 5, 6}))
    parts.append("<p class=\"note\">Scores are nbgrader's: automatic points and those given by hand. The wide table, with"
                 " every student's total, is grades_wide.csv beside this page.</p>")
    if data.assignments:
        parts.append('<h2>Score distributions</h2><p class="note">Every student in the gradebook; a missing submission counts 0.</p>'
                     f'<img alt="histograms of the scores of each assignment" src="{distribution_plot(table, data)}">')
    parts.append("<h2>Pass rate of each check</h2><p class=\"note\">The share of an assignment's submissions with full"
                 " points on each test cell.</p>")
    if len(rates):
        parts.append(f'<img alt="the pass rate of each test cell" src="{pass_rate_plot(rates)}">')
        rows = [[r.assignment, r.grade_id, number(r.max_score), f"{r.passed}/{r.submissions}", "–" if math.isnan(r.rate) else f"{r.rate:.0%}"]
                for r in rates.itertuples()]
        parts.append(html_table(["assignment", "test cell", "points", "full points", "pass rate"], rows, {2, 3, 4}))
    parts.append("<h2>Named mistakes</h2><p class=\"note\">How many students' test cell recognised each mistake catalogued in"
                 " autograder/mistakes/ (its visible check's error, or its hidden check's note); each student counts once per cell."
                 " Most frequent first, per exercise.</p>")
    if len(mistakes):
        rows = [[r.assignment, r.grade_id, r.title, r.students] for r in mistakes.itertuples()]
        parts.append(html_table(["assignment", "test cell", "mistake", "students"], rows, {3}))
    else:
        parts.append("<p>No catalogued mistake was recognised.</p>")
    parts.append("<h2>Canvas export</h2>")
    if lms["template"]:
        parts.append(f"<p class=\"warning\">There was no {esc(lms['path'])}: a template listing every student was written there."
                     " Fill in the Canvas columns and run make report again.</p>")
    if lms["unmapped"]:
        parts.append(f"<p class=\"warning\">{plural(len(lms['unmapped']), 'student')} not in canvas_gradebook.csv because"
                     f" {esc(lms['path'])} gives no Canvas identity for them:</p><ul>"
                     + "".join(f"<li>{esc(student)}</li>" for student in lms["unmapped"]) + "</ul>")
    else:
        parts.append("<p>Every student is in canvas_gradebook.csv.</p>")
    manual = written_cells(data)
    if manual:
        links = []
        for name, cells in manual.items():
            answers = {(c.notebook, c.name) for c in cells}
            waiting = sum(g.needs_manual_grade for g in data.grades if g.assignment == name and (g.notebook, g.cell) in answers)
            links.append(f'<li><a href="manual/{quote(name)}.html">{esc(name)}</a>: {plural(len(cells), "written answer")}, {waiting} still to grade by hand</li>')
        parts.append("<h2>Grading by hand</h2><ul>" + "".join(links) + "</ul>")
    return page("Course report", "".join(parts))


def answer_text(cell) -> str:
    """What a student wrote in a cell (an empty cell said so)."""
    source = cell.get("source", "") if cell is not None else ""
    return source if source.strip() else "(empty)"


def grading_status(grade: Grade) -> str:
    """How a written answer's score came about, as a suffix: to grade, given by hand (to review), or automatic ('')."""
    if grade.manual_score is None:
        return " (to grade)" if grade.needs_manual_grade else ""  # nbgrader gives an answer left as released 0 itself
    return " (by hand, to review)" if grade.needs_manual_grade else " (by hand)"


def manual_page(name: str, cells: list[Cell], data: ClassData, autograded: Autograded, formgrader_url: str) -> str:
    """The HTML of manual/<assignment>.html: each written answer, every submission's text beside the model answer."""
    base = formgrader_url.rstrip("/")
    parts = [f"<h1>{esc(name)}: written answers</h1>"
             f"<p class=\"note\">The formgrader links are paths on the Jupyter server that <code>make formgrader</code> starts"
             f"{' (' + esc(base) + ')' if base else ' (by default http://localhost:8888): open them there'}. Scores are the"
             " gradebook's when this page was written: regrade in formgrader, then run make report again.</p>"]
    grades = {(g.student, g.notebook, g.cell): g for g in data.grades if g.assignment == name}
    submitted = sorted({student for (student, assignment) in data.scores if assignment == name})
    for cell in cells:
        source = source_notebook(name, cell.notebook)
        model = next((c.source for c in source.cells if c.metadata.get("nbgrader", {}).get("grade_id") == cell.name), None) if source else None
        rows = []
        for student in submitted:
            grade = grades.get((student, cell.notebook, cell.name))
            found = autograded.cells(student, name, cell.notebook)
            text = answer_text(found.get(cell.name)) if found is not None else "(the autograded notebook could not be read)"
            if grade is None:
                score, link = "not in the gradebook", ""
            else:
                status = grading_status(grade)
                score = f"{number(grade.score)} / {number(grade.max_score)}{status}"
                href = f"{base}/formgrader/submissions/{quote(grade.submission_notebook_id, safe='')}/"
                link = f'<a href="{esc(href)}">{esc(href if not base else "open in formgrader")}</a>'
            rows.append(f"<tr><td>{esc(student)}</td><td><pre>{esc(text)}</pre></td><td class=\"number\">{esc(score)}</td><td>{link}</td></tr>")
        table = ("<table><thead><tr><th>student</th><th>answer</th><th>score</th><th>formgrader</th></tr></thead><tbody>"
                 + "".join(rows) + "</tbody></table>") if rows else "<p>No submissions.</p>"
        model_text = model if model is not None else f"(no source notebook solutions/{name}/{cell.notebook}.ipynb)"
        parts.append(f'<section><h2 id="{esc(cell.name)}">{esc(cell.name)} ({number(cell.max_score)} points, {esc(cell.notebook)}.ipynb)</h2>'
                     f'<div class="pair"><div>{table}</div><aside class="model"><h3>Model answer</h3><pre>{esc(model_text)}</pre></aside></div></section>')
    return page(f"{name}: written answers", "".join(parts))


def write_reports(output: Path, formgrader_url: str = "") -> list[Path]:
    """Write every report of the gradebook in `output` to <output>/reports/; returns the files written."""
    output = Path(output).resolve()
    data = read_gradebook(output)
    folder = output / "reports"
    written = []
    table = wide_table(data)
    written.append(write_wide(table, folder / "grades_wide.csv"))
    lms_path = output / "lms_ids.csv"
    mapping, template = read_lms_ids(lms_path, data.students)
    if template:
        written.append(lms_path)
        print(f"No {lms_path}: wrote a template with every student's nbgrader id; fill in their Canvas Student, ID, SIS User ID,"
              " SIS Login ID and Section (from a Canvas gradebook export), then run make report again.")
    rows, unmapped = canvas_table(table, data, mapping)
    written.append(write_text(folder / "canvas_gradebook.csv", csv_text([*CANVAS_STUDENT_COLUMNS, *data.assignments], rows)))
    if unmapped and not template:
        shown = ", ".join(unmapped[:10]) + (f" and {len(unmapped) - 10} more" if len(unmapped) > 10 else "")
        print(f"WARNING: {plural(len(unmapped), 'student')} left out of canvas_gradebook.csv, with no Canvas identity in {lms_path}: {shown}.")
    autograded = Autograded(output)
    mistakes = named_mistakes(data, output, autograded)
    lms = {"output": output, "path": lms_path, "template": template, "unmapped": unmapped}
    written.append(write_text(folder / "report.html", report_page(data, table, pass_rates(data), mistakes, lms)))
    for name, cells in written_cells(data).items():
        written.append(write_text(folder / "manual" / f"{name}.html", manual_page(name, cells, data, autograded, formgrader_url)))
    print(f"Wrote the course reports to {folder} ({plural(len(written), 'file')}).")
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="the grading output folder (GRADING_OUTPUT), holding gradebook.db")
    parser.add_argument("--formgrader-url", default="", help="the address of the formgrader server, to make its links absolute")
    args = parser.parse_args()
    try:
        write_reports(Path(args.output), args.formgrader_url)
    except FileNotFoundError as error:
        print(f"No reports: {error}.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
