"""Stage 1, collect: which submissions there are, a safe copy of each, and whether its grade is already up to date.

Submissions follow nbgrader's layout, <submissions>/<student>/<assignment>/<notebook>.ipynb. A fingerprint of
everything a grade depends on (the submitted files, the source notebook, the hidden references and cell map, the
grading code) is saved under <output>/.grading/ once a submission is graded, so a rerun skips it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Every file whose change may change a grade (fingerprint).
GRADING_CODE = ("grade.py", "run_config.py", "collect.py", "execute.py", "record.py", "feedback.py", "export.py",
                "nbgrader_config.py", "preprocessors.py", "sandbox.py", "isolation.py", "anomalies.py", "scoring.py",
                "harness.py", "harness_zygote.py", "kernel_zygote.py", "from_scratch.py", "inert.py")


def find_submissions(submitted: Path) -> list[tuple[str, str]]:
    """(assignment, student) pairs present under submitted/<student>/<assignment>/, sorted.

    A student folder that is a link is not followed; an assignment folder that is a link is listed, and refused
    when it is graded (stage_submission).
    """
    pairs = []
    for student_dir in sorted(p for p in submitted.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
        for assignment_dir in sorted(p for p in student_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            pairs.append((assignment_dir.name, student_dir.name))
    return pairs


MAX_SUBMISSION_FILES = 10_000


# formgrader serves every file of a graded submission from the Jupyter server's own origin, typed by its suffix:
# a student's page or script there would run in the instructor's session.
ACTIVE_SUFFIXES = {".html", ".htm", ".xhtml", ".shtml", ".svg", ".svgz", ".xml", ".xsl", ".xslt", ".js", ".mjs", ".swf"}


MAX_SUBMISSION_BYTES = 2**30


def submission_files(folder: Path) -> tuple[list[Path], list[str]]:
    """(the regular files under `folder`, relative to it, sorted; notes on every other entry, which is never followed).

    A student's folder may hold symbolic links (to the solutions, the hidden references, a classmate's notebook),
    FIFOs or devices: root would read through them, so they are left out, and said so.
    """
    if folder.is_symlink() or not folder.is_dir():
        return [], [f"{folder.name} is a symbolic link or not a folder"]
    files, refused, pending = [], [], [Path()]
    while pending:
        relative = pending.pop()
        with os.scandir(folder / relative) as entries:
            for entry in sorted(entries, key=lambda entry: entry.name):
                path = relative / entry.name
                if entry.is_symlink():
                    refused.append(f"{path} (a symbolic link)")
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif not entry.is_file(follow_symlinks=False):
                    refused.append(f"{path} (not a regular file)")
                elif path.suffix.lower() in ACTIVE_SUFFIXES:
                    refused.append(f"{path} (a web page or script, which formgrader would serve to the instructor's browser)")
                elif len(files) >= MAX_SUBMISSION_FILES:
                    refused.append(f"{path} (more than {MAX_SUBMISSION_FILES:,} files)")
                else:
                    files.append(path)
    return sorted(files), refused


def stage_submission(submitted: Path, staged: Path, assignment: str, student: str) -> list[str]:
    """Copy a submission's regular files to `staged`/<student>/<assignment>, never through a link; notes on what was left out.

    nbgrader copies a submission to the autograded folder as root, following links: it is given this copy instead.
    """
    source, target = submitted / student / assignment, staged / student / assignment
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    files, refused = submission_files(source)
    total = 0
    for relative in files:
        try:
            handle = os.open(source / relative, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as error:
            refused.append(f"{relative} ({error.strerror.lower()})")
            continue
        with os.fdopen(handle, "rb") as stream:
            size = os.fstat(handle).st_size
            if total + size > MAX_SUBMISSION_BYTES:
                refused.append(f"{relative} (the submission is over {MAX_SUBMISSION_BYTES // 2**20} MB)")
                continue
            total += size
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            with open(target / relative, "xb") as copy:
                shutil.copyfileobj(stream, copy)
    return refused


def fingerprint(submitted: Path, assignment: str, student: str) -> str:
    """SHA-256 over everything the grade of one submission depends on."""
    digest = hashlib.sha256()
    folder = submitted / student / assignment
    files, refused = submission_files(folder)
    digest.update(repr(refused).encode())  # a link replaced by a file, or the reverse, is a change
    paths = [folder / relative for relative in files]
    paths += sorted(f for f in (HERE.parent / "solutions" / assignment).rglob("*") if f.is_file())
    references = [HERE / "references" / f"{assignment}{suffix}" for suffix in (".pt", ".cells.json", ".mistakes.pt")]
    grading_code = [HERE / name for name in GRADING_CODE]
    shared = [HERE.parent / "shared" / name for name in ("checks.py", "grading_contract.py")]  # checks.compare scores hidden checks
    paths += references + grading_code + shared
    for path in paths:
        if path.exists():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def marker(output: Path, assignment: str, student: str) -> Path:
    """Where the fingerprint of a graded submission is kept."""
    return output / ".grading" / assignment / f"{student}.sha256"


def pending(pairs: list[tuple[str, str]], submitted: Path, output: Path, force: bool) -> tuple[list[tuple[str, str]], dict]:
    """(the pairs to grade: new, changed, or all with `force`; {pair: fingerprint})."""
    prints = {(assignment, student): fingerprint(submitted, assignment, student) for assignment, student in pairs}
    todo = []
    for assignment, student in pairs:
        done = marker(output, assignment, student)
        if force or not done.exists() or done.read_text() != prints[(assignment, student)]:
            done.unlink(missing_ok=True)
            todo.append((assignment, student))
    return todo, prints


def course_assignments() -> list[str]:
    """The assignments in solutions/."""
    return sorted(p.name for p in (HERE.parent / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists())


@functools.cache
def from_scratch_rules(assignment: str) -> dict[str, list[str]]:
    """{answer cell grade_id: the built-ins it may not use}, from the source notebook's metadata (from_scratch.py)."""
    import from_scratch

    return from_scratch.forbidden_by_cell(HERE.parent / "solutions" / assignment / f"{assignment}.ipynb")
