"""Stage 6, export: grades.csv (one row per submission) and grades_by_test.csv (one row per graded cell, with why it
lost points and what a person should look at)."""

from __future__ import annotations

import ast
import csv
import functools
from pathlib import Path

from collect import from_scratch_rules
from record import ANSI

HERE = Path(__file__).resolve().parent


def export(api, pairs, failures, output: Path) -> None:
    """Write grades.csv (one row per submission) and grades_by_test.csv (one row per graded cell)."""
    from nbgrader.api import Gradebook, MissingEntry

    totals, by_test = [], []
    with Gradebook(api.coursedir.db_url) as gradebook:
        for assignment, student in pairs:
            try:
                submission = gradebook.find_submission(assignment, student)
            except MissingEntry:
                submission = None
            max_score = gradebook.find_assignment(assignment).max_score
            reason = failures.get((assignment, student), "")
            if submission is None or reason:
                totals.append([student, assignment, 0.0, max_score])
                for notebook in gradebook.find_assignment(assignment).notebooks:
                    for cell in notebook.grade_cells:
                        by_test.append([student, assignment, notebook.name, cell.name, 0.0, cell.max_score, f"submission not graded: {reason}", ""])
                continue
            autograded = Path(api.coursedir.format_path(api.coursedir.autograded_directory, student, assignment))
            notes, anomalies = cell_notes(autograded)
            looks = needs_a_look(autograded, assignment)
            totals.append([student, assignment, round(submission.score, 4), max_score])
            for notebook in submission.notebooks:
                for grade_entry in sorted(notebook.grades, key=lambda g: cell_order(assignment, notebook.name, g.name)):
                    score = grade_entry.score
                    note = notes.get((notebook.name, grade_entry.name), "")
                    if grade_entry.needs_manual_grade and grade_entry.manual_score is None:
                        note = note or "needs manual grading"
                    elif grade_entry.needs_manual_grade:  # nbgrader keeps a manual score through a regrade, to be reviewed
                        note = note or "manual score given before regrading: review it in formgrader"
                    # Said after the reason the cell lost points, so that reason still comes first.
                    extra = [anomalies.get((notebook.name, grade_entry.name)), anomalies.get((notebook.name, None))]
                    note = "; ".join(filter(None, [note, *extra]))
                    by_test.append([student, assignment, notebook.name, grade_entry.name, score, grade_entry.max_score, note,
                                    looks.get((notebook.name, grade_entry.name), "")])
    write_csv(output / "grades.csv", ["student_id", "assignment", "score", "max_score"], totals)
    write_csv(output / "grades_by_test.csv", ["student_id", "assignment", "notebook", "grade_id", "score", "max_score", "note", "needs_a_look"], by_test)


def cell_notes(autograded_dir: Path) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str | None], str]]:
    """({(notebook, grade_id): reason} for graded cells whose autograded output holds an error,
    {(notebook, grade_id, or None for every row): what anomalies.py put right})."""
    import nbformat

    notes, anomalies = {}, {}
    for path in sorted(autograded_dir.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        for anomaly in notebook.metadata.get("course_grading", {}).get("anomalies", []):
            key = (path.stem, anomaly["grade_id"])
            anomalies[key] = "; ".join(filter(None, [anomalies.get(key), anomaly["note"]]))
        for cell in notebook.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if grade_id and errors:
                error = errors[-1]
                summary = (error.get("evalue", "").strip().splitlines() or [""])[0]
                notes[(path.stem, grade_id)] = ANSI.sub("", f"{error.get('ename', '')}: {summary}")[:300]
    return notes, anomalies


def needs_a_look(autograded_dir: Path, assignment: str) -> dict[tuple[str, str], str]:
    """{(notebook, test cell grade_id): what from_scratch.py's static reading found in the student's code it uses}.

    An answer cell's findings go to the test cells that name it; those of cells the student added, to every test cell.
    """
    import nbformat
    from from_scratch import static_flags
    from harness import cell_kind

    rules = from_scratch_rules(assignment)
    everything = sorted({name for names in rules.values() for name in names})
    looks = {}
    for path in sorted(autograded_dir.glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        source_cells = nbformat.read(HERE.parent / "solutions" / assignment / path.name, as_version=4).cells
        courses = {c.source for c in source_cells if cell_kind(c) == "course"}  # the course's own unlocked cells, as given
        context = "\n".join(c.source for c in cells if cell_kind(c) == "given")
        answers, added = {}, []
        for cell in cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if cell_kind(cell) == "solution" and grade_id:
                answers[grade_id] = static_flags(cell.source, rules.get(grade_id, []), context=context)
            elif cell_kind(cell) == "course" and not grade_id and cell.source not in courses:
                added += [f"a cell of the student's: {flag}" for flag in static_flags(cell.source, everything, context=context)]
        for cell in cells:
            if cell_kind(cell) == "test" and cell.metadata.get("nbgrader", {}).get("grade_id"):
                used = {node.id for node in ast.walk(parsed(cell.source)) if isinstance(node, ast.Name)}
                flags = [f"{grade_id}: {flag}" for grade_id, found in answers.items() if grade_id in used for flag in found]
                if flags or added:
                    looks[(path.stem, cell.metadata.nbgrader.grade_id)] = "; ".join(dict.fromkeys(flags + added))[:1000]
    return looks


def parsed(source: str) -> ast.AST:
    """The syntax tree of a cell's source, or an empty module if it does not parse."""
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return ast.Module(body=[], type_ignores=[])


def cell_order(assignment: str, notebook: str, grade_id: str) -> int:
    """Position of a graded cell in the source notebook, so CSV rows follow the notebook."""
    positions = graded_cell_positions(assignment, notebook)
    return positions.get(grade_id, len(positions))


@functools.cache
def graded_cell_positions(assignment: str, notebook: str) -> dict[str, int]:
    """{grade_id: index} of a source notebook's graded cells."""
    import nbformat

    source = nbformat.read(HERE.parent / "solutions" / assignment / f"{notebook}.ipynb", as_version=4)
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in source.cells]
    return {grade_id: index for index, grade_id in enumerate(ids) if grade_id}


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula


def inert_cell(value):
    """`value`, with a quote in front if it is text a spreadsheet would run as a formula (a note, a student id)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """Write a CSV through a partial file, each cell made inert for spreadsheets."""
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([inert_cell(value) for value in row] for row in rows)
    partial.replace(path)
