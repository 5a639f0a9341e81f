"""Stage 4, record: write a submission's outcome into the gradebook and its autograded notebook.

Test cells earn their points once their hidden checks passed (grant_points); a submission that could not be graded
gets 0 everywhere (withhold_all_points); a hand-given score survives a regrade when its answer did not change.
Each function takes the nbgrader API it works through: nothing here keeps state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_error_line(text: str) -> str:
    """The last line of a traceback or log that names an exception, without colour codes."""
    lines = [ANSI.sub("", line).strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Died|Timeout)\b", line)]
    return (named or lines or ["unknown error"])[-1][:300]


def grant_points(api, assignment: str, student: str, verdicts: dict[str, str | None]) -> None:
    """Give each test cell, zeroed by SaveAutoGradesWithheld, nbgrader's score back if its hidden checks passed; note why not in
    the autograded notebook (so in feedback too)."""
    import nbformat
    from nbgrader.api import Gradebook
    from nbgrader.utils import determine_grade, is_grade, is_solution

    path = Path(api.coursedir.format_path(api.coursedir.autograded_directory, student, assignment)) / f"{assignment}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    tests = [cell for cell in notebook.cells if is_grade(cell) and not is_solution(cell)]
    failed = False
    with Gradebook(api.coursedir.db_url) as gradebook:
        for cell in tests:
            grade_id = cell.metadata.nbgrader.grade_id
            reason = verdicts.get(grade_id)
            score, _ = determine_grade(cell, None)
            gradebook.find_grade(grade_id, assignment, assignment, student).auto_score = 0.0 if reason else score
            already_failed = any(output.get("output_type") == "error" for output in cell.get("outputs", []))
            if reason and not already_failed:  # an error in the cell already explains its 0 better
                cell.outputs.append(nbformat.v4.new_output("error", ename="HiddenCheckFailed", evalue=reason, traceback=[f"HiddenCheckFailed: {reason}"]))
                failed = True
        gradebook.db.commit()
    if failed:
        replace_notebook(path, notebook)


def replace_notebook(path: Path, notebook) -> None:
    """Write `notebook` over `path` through a new file, keeping its mode.

    nbgrader leaves autograded notebooks read-only (0444), which only root may open for writing; and the
    folder is the kernel's, so whatever stands at `path` is replaced, never followed.
    """
    import nbformat

    mode = path.lstat().st_mode & 0o777
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=".rewrite-", suffix=".ipynb")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            nbformat.write(notebook, stream)
        os.chmod(partial, mode)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def note_refused_files(api, assignment: str, student: str, refused: list[str]) -> None:
    """Say in the autograded notebook (so in every row of grades_by_test.csv) which submitted entries were not copied."""
    import nbformat

    path = Path(api.coursedir.format_path(api.coursedir.autograded_directory, student, assignment)) / f"{assignment}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
    anomalies = notebook.metadata.setdefault("course_grading", {}).setdefault("anomalies", [])
    anomalies.append({"grade_id": None, "note": f"not copied from the submission: {shown}"})
    replace_notebook(path, notebook)


def withhold_all_points(api, assignment: str, student: str) -> None:
    """Set every automatic score of a submission that could not be graded to 0, as grades.csv has it."""
    from nbgrader.api import Gradebook

    with Gradebook(api.coursedir.db_url) as gradebook:
        for notebook in gradebook.find_submission(assignment, student).notebooks:
            for grade_entry in notebook.grades:
                grade_entry.auto_score = 0.0
        gradebook.db.commit()


def reviewed_answers(api, assignment: str, student: str) -> set[str]:
    """grade_ids of this submission's cells that a person has scored by hand and nothing has asked to review since."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(api.coursedir.db_url) as gradebook:
        try:
            notebooks = gradebook.find_submission(assignment, student).notebooks
        except MissingEntry:
            return set()
        return {g.name for n in notebooks for g in n.grades if g.manual_score is not None and not g.needs_manual_grade}


def keep_reviewed_answers(api, assignment: str, student: str, reviewed: set[str], answers_file: Path) -> None:
    """Clear nbgrader's review flag on hand-scored answers whose text is the one that was scored; remember the texts.

    nbgrader asks for every hand-given score to be reviewed again after any autograde; only an answer the
    student changed since it was scored needs a person's look.
    """
    import nbformat
    from nbgrader.api import Gradebook

    path = Path(api.coursedir.format_path(api.coursedir.autograded_directory, student, assignment)) / f"{assignment}.ipynb"
    cells = nbformat.read(path, as_version=4).cells
    # Answers graded by hand: the student writes in the graded cell itself. (A hand-changed score of a test cell
    # stays flagged: its locked text never changes, but what it tests may have.)
    answers = [c for c in cells if c.metadata.get("nbgrader", {}).get("grade") and c.metadata["nbgrader"].get("solution")]
    texts = {c.metadata["nbgrader"]["grade_id"]: hashlib.sha256(c.source.encode()).hexdigest() for c in answers}
    scored_texts = json.loads(answers_file.read_text()) if answers_file.exists() else {}
    unchanged = {grade_id for grade_id in reviewed if grade_id in texts and scored_texts.get(grade_id) == texts[grade_id]}
    if unchanged:
        with Gradebook(api.coursedir.db_url) as gradebook:
            for grade_id in unchanged:
                gradebook.find_grade(grade_id, assignment, assignment, student).needs_manual_grade = False
            gradebook.db.commit()
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    answers_file.write_text(json.dumps(texts, indent=1, sort_keys=True))
