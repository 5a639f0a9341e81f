"""Autograde every submission with nbgrader, then write grades.csv, grades_by_test.csv and feedback.

Run through `make grade` (optionally SUBMISSIONS=dir, GRADING_OUTPUT=dir). Submissions follow
nbgrader's layout, <submissions>/<student>/<assignment>/<notebook>.ipynb. Each submission is
graded on its own: one that cannot be graded (invalid JSON, ...) gets 0 with the reason written
down, and the run goes on.

Submissions are graded by --workers processes at once, all writing to nbgrader's one SQLite
gradebook. After a submission is graded, a fingerprint of everything its grade depends on (the
submitted files, the source notebook, the hidden references, the grading configuration) is saved
under <output>/.grading/. A later run skips submissions whose fingerprint is unchanged, so an
interrupted run picks up where it stopped, and a rerun gives the same grades; --force regrades all.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import multiprocessing
import os
import re
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_api():
    """An NbGraderAPI configured by autograder/nbgrader_config.py (reads $SUBMISSIONS, $GRADING_OUTPUT)."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(HERE)).load_config()
    return NbGraderAPI(config=config)


def find_submissions(submitted: Path) -> list[tuple[str, str]]:
    """(assignment, student) pairs present under submitted/<student>/<assignment>/, sorted."""
    pairs = []
    for student_dir in sorted(p for p in submitted.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for assignment_dir in sorted(p for p in student_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            pairs.append((assignment_dir.name, student_dir.name))
    return pairs


def register_assignment(api, assignment: str) -> None:
    """Record the assignment's graded cells in the gradebook without touching notebooks/."""
    from nbgrader.utils import temp_attrs

    with tempfile.TemporaryDirectory() as scratch, temp_attrs(api.coursedir, release_directory=scratch):
        result = api.generate_assignment(assignment, force=True, create=True)
    if not result["success"]:
        raise SystemExit(f"Could not register assignment {assignment} from solutions/:\n{result.get('error', '')}")


def register_students(api, students: list[str]) -> None:
    """Create every student in the gradebook up front: parallel workers creating one student race."""
    from nbgrader.api import Gradebook

    with Gradebook(api.coursedir.db_url) as gradebook:
        for student in students:
            gradebook.update_or_create_student(student)


def first_error_line(text: str) -> str:
    """The last line of a traceback or log that names an exception, without colour codes."""
    lines = [ANSI.sub("", line).strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Died|Timeout)\b", line)]
    return (named or lines or ["unknown error"])[-1][:300]


def cell_notes(autograded_dir: Path) -> dict[tuple[str, str], str]:
    """{(notebook, grade_id): reason} for graded cells whose autograded output holds an error."""
    import nbformat

    notes = {}
    for path in sorted(autograded_dir.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if grade_id and errors:
                error = errors[-1]
                summary = (error.get("evalue", "").strip().splitlines() or [""])[0]
                notes[(path.stem, grade_id)] = ANSI.sub("", f"{error.get('ename', '')}: {summary}")[:300]
    return notes


def fingerprint(submitted: Path, assignment: str, student: str) -> str:
    """SHA-256 over everything the grade of one submission depends on."""
    digest = hashlib.sha256()
    inputs = [submitted / student / assignment, HERE.parent / "solutions" / assignment]
    files = [f for folder in inputs for f in sorted(folder.rglob("*")) if f.is_file()]
    files += [HERE / "references" / f"{assignment}.pt", HERE / "nbgrader_config.py", HERE / "preprocessors.py"]
    for path in files:
        if path.exists():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def marker(output: Path, assignment: str, student: str) -> Path:
    return output / ".grading" / assignment / f"{student}.sha256"


_API = None


def _start_worker() -> None:
    global _API
    warnings.filterwarnings("ignore", message=".*not in session.*")
    _API = load_api()


def grade_one(assignment: str, student: str) -> tuple[str, str, str, float]:
    """Autograde one submission and write its feedback; returns (assignment, student, failure reason or '', seconds)."""
    started = time.monotonic()
    result = _API.autograde(assignment, student, force=True, create=True)
    reason = ""
    if not result["success"]:
        reason = first_error_line(result.get("error", "") + "\n" + result.get("log", ""))
    else:
        feedback = _API.generate_feedback(assignment, student, force=True)
        if not feedback["success"]:
            reason = "feedback failed: " + first_error_line(feedback.get("error", ""))
    return assignment, student, reason, time.monotonic() - started


def grade(pairs: list[tuple[str, str]], submitted: Path, output: Path, workers: int, force: bool) -> dict[tuple[str, str], str]:
    """Grade the pairs whose fingerprint changed, `workers` at a time; returns {(assignment, student): failure reason}."""
    todo, failures = [], {}
    for assignment, student in pairs:
        done = marker(output, assignment, student)
        if force or not done.exists() or done.read_text() != fingerprint(submitted, assignment, student):
            done.unlink(missing_ok=True)
            todo.append((assignment, student))
    if len(todo) < len(pairs):
        print(f"{len(pairs) - len(todo)} submissions are already graded with the same inputs; grading the other {len(todo)}.")
    if not todo:
        return failures
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context, initializer=_start_worker) as pool:
        jobs = [pool.submit(grade_one, assignment, student) for assignment, student in todo]
        for number, job in enumerate(as_completed(jobs), 1):
            assignment, student, reason, seconds = job.result()
            if reason:
                failures[(assignment, student)] = reason
            else:
                done = marker(output, assignment, student)
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(fingerprint(submitted, assignment, student))
            status = f"FAILED: {reason}" if reason else "ok"
            print(f"[{number}/{len(todo)}] {assignment} / {student}: {status} ({seconds:.1f} s)", flush=True)
    return failures


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
                        by_test.append([student, assignment, notebook.name, cell.name, 0.0, cell.max_score, f"submission not graded: {reason}"])
                continue
            notes = cell_notes(Path(api.coursedir.format_path(api.coursedir.autograded_directory, student, assignment)))
            totals.append([student, assignment, round(submission.score, 4), max_score])
            for notebook in submission.notebooks:
                for grade_entry in sorted(notebook.grades, key=lambda g: cell_order(assignment, notebook.name, g.name)):
                    score = grade_entry.score
                    note = notes.get((notebook.name, grade_entry.name), "")
                    if grade_entry.needs_manual_grade and grade_entry.manual_score is None:
                        note = note or "needs manual grading"
                    by_test.append([student, assignment, notebook.name, grade_entry.name, score, grade_entry.max_score, note])
    write_csv(output / "grades.csv", ["student_id", "assignment", "score", "max_score"], totals)
    write_csv(output / "grades_by_test.csv", ["student_id", "assignment", "notebook", "grade_id", "score", "max_score", "note"], by_test)


def cell_order(assignment: str, notebook: str, grade_id: str) -> int:
    """Position of a graded cell in the source notebook, so CSV rows follow the notebook."""
    import nbformat

    key = (assignment, notebook)
    if key not in _ORDER:
        source = nbformat.read(HERE.parent / "solutions" / assignment / f"{notebook}.ipynb", as_version=4)
        ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in source.cells]
        _ORDER[key] = {grade_id: index for index, grade_id in enumerate(ids) if grade_id}
    return _ORDER[key].get(grade_id, len(_ORDER[key]))


_ORDER: dict[tuple[str, str], dict[str, int]] = {}


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    partial.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", default=os.environ.get("SUBMISSIONS", str(HERE.parent / "submitted")))
    parser.add_argument("--output", default=os.environ.get("GRADING_OUTPUT", str(HERE.parent)))
    parser.add_argument("--assignment", action="append", help="grade only this assignment (repeatable)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or os.cpu_count() or 1))
    parser.add_argument("--force", action="store_true", default=os.environ.get("FORCE") == "1", help="regrade everything")
    args = parser.parse_args()

    submitted, output = Path(args.submissions).resolve(), Path(args.output).resolve()
    if not submitted.is_dir():
        print(f"No submissions folder at {submitted}: put submissions in <student>/<assignment>/<notebook>.ipynb.", file=sys.stderr)
        return 2
    output.mkdir(parents=True, exist_ok=True)
    os.environ["SUBMISSIONS"], os.environ["GRADING_OUTPUT"] = str(submitted), str(output)
    # nbgrader's gradebook code trips SQLAlchemy's autoflush warnings on every submission: noise, not errors.
    warnings.filterwarnings("ignore", message=".*not in session.*")
    api = load_api()

    pairs = [pair for pair in find_submissions(submitted) if not args.assignment or pair[0] in args.assignment]
    known = {p.name for p in (HERE.parent / "solutions").iterdir() if p.is_dir()}
    unknown = sorted({assignment for assignment, _ in pairs} - known)
    if unknown:
        print(f"Skipping folders that are not assignments in solutions/: {', '.join(unknown)}", file=sys.stderr)
        pairs = [pair for pair in pairs if pair[0] in known]
    for assignment in sorted({assignment for assignment, _ in pairs}):
        register_assignment(api, assignment)
    register_students(api, sorted({student for _, student in pairs}))
    started = time.monotonic()
    failures = grade(pairs, submitted, output, max(args.workers, 1), args.force)
    export(api, pairs, failures, output)
    elapsed = time.monotonic() - started
    print(f"Graded {len(pairs)} submissions in {elapsed:.1f} s with {args.workers} workers; "
          f"{len(failures)} could not be graded. Wrote {output / 'grades.csv'} and {output / 'grades_by_test.csv'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
