"""nbgrader preprocessors for odd nbgrader metadata in a submission, so that it costs the student nothing and earns nothing.

CheckSourceMetadata runs first among autograde's sanitizing preprocessors. nbgrader's own ones fail the whole
submission on a copied cell, on nbgrader metadata without a grade_id or with one the source lacks (KeyError:
'grade_id', in DeduplicateIds or OverwriteCells.add_missing_task_cells), and on a test cell whose flags were
edited ("Inconsistent checksums" in OverwriteCells). Here each cell's nbgrader metadata is
compared with the cells the gradebook recorded from the source notebook:

* the first cell with a source grade_id keeps it; later copies lose their nbgrader metadata (they still run,
  as ordinary cells, but are never graded);
* nbgrader metadata that names no source cell is removed, so points come only from the source's test cells;
* metadata whose flags or points differ from the source's is replaced by the source's.

ClearSourceHiddenTests removes hidden tests from the source's test cells only: nbgrader's ClearHiddenTests
fails the feedback on a student's own cell that quotes the hidden-test markers; here that cell is shown as written.

What was done is recorded in the notebook's metadata, course_grading.anomalies, which grade.py reads into
grades_by_test.csv: [{"grade_id": the graded cell concerned, or None for the whole submission, "note": ...}].
"""

from __future__ import annotations

from nbconvert.exporters.exporter import ResourcesDict
from nbformat.notebooknode import NotebookNode
from nbgrader import utils
from nbgrader.api import Gradebook
from nbgrader.preprocessors import ClearHiddenTests, NbGraderPreprocessor

HIDDEN_MARKERS = (ClearHiddenTests.begin_test_delimeter.default_value, ClearHiddenTests.end_test_delimeter.default_value)
MAX_SHOWN_ID = 60  # a forged grade_id is the student's text: quote only the start of it
QUOTES_MARKERS = "a cell of the student's quotes the hidden-test markers: it was left as written in the feedback"


def recorded_cells(db_url: str, notebook: str, assignment: str) -> dict[str, NotebookNode]:
    """{grade_id: the nbgrader metadata the source gives that cell}, rebuilt from the gradebook."""
    with Gradebook(db_url) as gradebook:
        source = gradebook.find_notebook(notebook, assignment)
        points = {cell.name: cell.max_score for cell in source.grade_cells + source.task_cells}
        grades = {cell.name for cell in source.grade_cells}
        solutions = {cell.name for cell in source.solution_cells}
        tasks = {cell.name for cell in source.task_cells}
        recorded = {}
        for cell in source.source_cells:
            meta = {"grade": cell.name in grades, "grade_id": cell.name, "locked": cell.locked, "solution": cell.name in solutions,
                    "cell_type": cell.cell_type, "checksum": cell.checksum, "schema_version": 3}
            if cell.name in tasks:
                meta["task"] = True
            if cell.name in points:
                meta["points"] = points[cell.name]
            recorded[cell.name] = NotebookNode(meta)
    return recorded


def role(meta: dict) -> tuple:
    """What decides whether and for how much a cell is graded, read the way nbgrader's utils read it."""
    grade, solution, task = (bool(meta.get(key)) for key in ("grade", "solution", "task"))
    locked = not solution and (grade or bool(meta.get("locked")))
    return grade, solution, locked, task, meta.get("points") if grade or task else None


def row_of(meta: dict) -> str | None:
    """The grade_id of the cell's row in grades_by_test.csv, or None if it is not graded."""
    return meta["grade_id"] if meta.get("grade") or meta.get("task") else None


def is_test_cell(cell: NotebookNode) -> bool:
    """A cell graded automatically: the only kind that holds hidden tests."""
    return bool(utils.is_grade(cell) and not utils.is_solution(cell))


def put_right(cell: NotebookNode, recorded: dict[str, NotebookNode], seen: set[str]) -> dict | None:
    """Make one cell's nbgrader metadata the source's (or remove it); returns the anomaly found, if any."""
    meta = cell.metadata["nbgrader"]
    grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
    source = recorded.get(grade_id) if isinstance(grade_id, str) else None
    if source is None:
        del cell.metadata["nbgrader"]
        named = f" (grade_id {grade_id[:MAX_SHOWN_ID]!r})" if isinstance(grade_id, str) else ""
        return {"grade_id": None, "note": f"nbgrader metadata of a cell the source does not have{named} was removed"}
    if grade_id in seen:
        del cell.metadata["nbgrader"]
        return {"grade_id": row_of(source), "note": f"a copy of cell '{grade_id}' was ignored: it ran as an ordinary cell, ungraded"}
    seen.add(grade_id)
    changed = role(meta) != role(source)
    # nbgrader's OverwriteCells then restores the cell's type and locked source, and checks the checksum.
    cell.metadata["nbgrader"] = NotebookNode(dict(source))
    return {"grade_id": row_of(source), "note": f"the nbgrader metadata of cell '{grade_id}' was restored from the source"} if changed else None


class CheckSourceMetadata(NbGraderPreprocessor):
    """Make every cell's nbgrader metadata the source's: drop copies and forged metadata, restore edited metadata."""

    def preprocess(self, nb: NotebookNode, resources: ResourcesDict) -> tuple[NotebookNode, ResourcesDict]:
        info = resources["nbgrader"]
        recorded = recorded_cells(info["db_url"], info["notebook"], info["assignment"])
        anomalies, seen = [], set()
        for cell in nb.cells:
            if "nbgrader" in cell.metadata:
                anomalies.append(put_right(cell, recorded, seen))
            if not is_test_cell(cell) and any(marker in cell.source for marker in HIDDEN_MARKERS):
                anomalies.append({"grade_id": row_of(cell.metadata.get("nbgrader", {})), "note": QUOTES_MARKERS})
        # Set, never merged: a submission cannot bring notes of its own. The same note twice says nothing more.
        nb.metadata.pop("course_grading", None)
        unique = [anomaly for i, anomaly in enumerate(anomalies) if anomaly and anomaly not in anomalies[:i]]
        if unique:
            nb.metadata["course_grading"] = {"anomalies": unique}
        return nb, resources


class ClearSourceHiddenTests(ClearHiddenTests):
    """nbgrader's ClearHiddenTests, for the source's test cells only.

    Hidden tests only ever come from the source: OverwriteCells restores each test cell's source, and a
    student's cells hold nothing hidden. CheckSourceMetadata has already made every cell's nbgrader
    metadata the source's, so a test cell here is one of the source's test cells.
    """

    def preprocess_cell(self, cell: NotebookNode, resources: ResourcesDict, index: int) -> tuple[NotebookNode, ResourcesDict]:
        if is_test_cell(cell):
            return super().preprocess_cell(cell, resources, index)
        return cell, resources
