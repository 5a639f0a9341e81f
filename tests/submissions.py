"""Build student submissions from the release notebooks, for grading tests and benchmarks."""

from __future__ import annotations

import csv
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def release_notebook(assignment: str) -> nbformat.NotebookNode:
    """The student release of `assignment`, as students receive it."""
    return nbformat.read(ROOT / "notebooks" / assignment / f"{assignment}.ipynb", as_version=4)


def solution_sources(assignment: str) -> dict[str, str]:
    """{grade_id: source} of the answer cells in the instructor's notebook, solution markers removed."""
    from notebooks import runnable

    source = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    return {cell.metadata.nbgrader.grade_id: runnable(cell.source) for cell in source.cells
            if cell.metadata.get("nbgrader", {}).get("solution")}


def answer_cells(notebook: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    """{grade_id: cell} of the cells a student edits."""
    return {c.metadata["nbgrader"]["grade_id"]: c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("solution")}


def solved(assignment: str, replace: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """The release with every answer filled in correctly, except the cells given in `replace` {grade_id: source}."""
    notebook = release_notebook(assignment)
    answers = solution_sources(assignment) | (replace or {})
    for grade_id, cell in answer_cells(notebook).items():
        cell.source = answers[grade_id]
    return notebook


def insert_code_cell(notebook: nbformat.NotebookNode, after_grade_id: str, source: str) -> nbformat.NotebookNode:
    """Insert an extra (student-added) code cell after the cell `after_grade_id`."""
    index = next(i for i, c in enumerate(notebook.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == after_grade_id)
    taken = {c.get("id") for c in notebook.cells}
    cell_id = next(f"student-{index}-{n}" for n in range(len(notebook.cells) + 1) if f"student-{index}-{n}" not in taken)
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source, id=cell_id))
    return notebook


def submit(submissions: Path, student: str, assignment: str, notebook: nbformat.NotebookNode | str) -> Path:
    """Write a notebook (or raw text) as `student`'s submission of `assignment`; returns its path."""
    folder = submissions / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{assignment}.ipynb"
    if isinstance(notebook, str):
        path.write_text(notebook)
    else:
        nbformat.write(notebook, path)
    return path


def named(assignment: str, mistake_id: str) -> str:
    """The words a failing check uses for a catalogued mistake (autograder/mistakes/<assignment>.toml)."""
    from notebooks import mistakes

    title = next(m.title for m in mistakes(assignment) if m.id == mistake_id)
    return f"the output matches a known mistake: {title}."


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV the grader wrote (grades.csv, grades_by_test.csv), as dicts."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
