"""The README's grading commands, literally: `make grade` then `make export`, with their defaults and with
SUBMISSIONS/GRADING_OUTPUT elsewhere, as root and as a normal user.

Each run works in a fresh copy of this checkout (tracked and new files, the venv linked in), so the defaults
put the submissions, the gradebook, the CSVs and the feedback inside that copy, exactly where an instructor's
`make grade` puts them. The class: a correct and a blank submission of every assignment.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from notebooks import assignments
from submissions import read_csv, release_notebook, solved, submit

NORMAL_USER = "course-grader"  # created when the tests run as root
VENV = Path(sys.executable).parent.parent


def autograded_points(assignment: str) -> float:
    """Points of the source notebook's test cells (written answers are graded by hand)."""
    source = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    info = [c.metadata.get("nbgrader", {}) for c in source.cells]
    return sum(float(i["points"]) for i in info if i.get("grade") and not i.get("solution"))


def written_answers(assignment: str) -> set[str]:
    source = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"] for c in source.cells if c.cell_type == "markdown" and c.metadata.get("nbgrader", {}).get("grade")}


def checkout_copy(destination: Path) -> Path:
    """A copy of this checkout's files (what `git clone` plus the work in progress gives), with the venv linked in."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    (destination / ".venv").symlink_to(VENV)
    return destination


def normal_user() -> pwd.struct_passwd:
    """The account the normal-user runs use: this one when not root, else NORMAL_USER (created once)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(NORMAL_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", NORMAL_USER], check=True)
        return pwd.getpwnam(NORMAL_USER)


def as_user(user: pwd.struct_passwd, command: list[str]) -> list[str]:
    """`command` run as `user` from root, in a mount namespace where the Python install is reachable.

    The interpreter may live under /root (pyenv), which other users cannot enter: a private tmpfs on /root
    shows only that install, so nothing of root's is opened to the user outside this command.
    """
    base = Path(sys.base_prefix).resolve()
    mounts = ""
    if base.is_relative_to("/root"):
        top = Path("/root") / base.relative_to("/root").parts[0]
        mounts = (f"mkdir -p /run/course-test-root && mount --bind /root /run/course-test-root && "
                  f"mount -t tmpfs -o mode=755 tmpfs /root && mkdir -p {top} && "
                  f"mount --bind /run/course-test-root/{top.relative_to('/root')} {top} && ")
    switch = f'exec setpriv --reuid={user.pw_uid} --regid={user.pw_gid} --init-groups "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts + switch, "sh", *command]


def run_as(identity: str, command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # COURSE_DATA_DIR stays: where the session's TinyStories splits are when data/tiny was not prepared (conftest.py),
    # as an instructor who keeps the data out of the checkout sets it.
    env = {key: value for key, value in os.environ.items()
           if key == "COURSE_DATA_DIR" or not key.startswith(("JUPYTER", "SUBMISSIONS", "GRADING", "COURSE_"))}
    if identity == "normal user" and os.geteuid() == 0:
        user = normal_user()
        command = as_user(user, command)
        env |= {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


CASES = [("root", "defaults"), ("root", "elsewhere"), ("normal user", "defaults"), ("normal user", "elsewhere")]


@pytest.fixture(scope="module", params=CASES, ids=[f"{who}-{where}" for who, where in CASES])
def graded_as_run(request):
    """One class graded by `make grade` then `make export`, as the README gives them; returns the folders and output."""
    identity, where = request.param
    if identity == "root" and os.geteuid() != 0:
        pytest.skip("needs root")
    # Not in /tmp: the sandbox empties /tmp, /root and /home and rebuilds the paths it needs there, so a course
    # under them takes another path through the sandbox than a checkout elsewhere (/srv, /work, ...).
    scratch = Path(tempfile.mkdtemp(prefix="course-as-run-", dir="/var/tmp"))
    scratch.chmod(0o755)  # the normal user must reach the copy
    try:
        checkout = checkout_copy(scratch / "course")
        submitted, output = (checkout / "submitted", checkout) if where == "defaults" else (scratch / "class", scratch / "grading")
        for assignment in assignments():
            submit(submitted, "correct", assignment, solved(assignment))
            submit(submitted, "blank", assignment, release_notebook(assignment))
        settings = [] if where == "defaults" else [f"SUBMISSIONS={submitted}", f"GRADING_OUTPUT={output}"]
        if identity == "normal user" and os.geteuid() == 0:
            output.mkdir(exist_ok=True)
            user = normal_user()
            subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(scratch)], check=True)
        grading = run_as(identity, ["make", "grade", *settings], checkout)
        export = run_as(identity, ["make", "export", *settings], checkout)
        yield {"output": output, "grade": grading.stdout, "export": export.stdout}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_a_correct_submission_earns_every_autograded_point_and_a_blank_one_none(graded_as_run):
    output = graded_as_run["output"]
    totals = {(row["student_id"], row["assignment"]): float(row["score"]) for row in read_csv(output / "grades.csv")}
    expected = {("correct", a): autograded_points(a) for a in assignments()} | {("blank", a): 0.0 for a in assignments()}
    assert totals == expected
    assert "sandboxed; 0 could not be graded" in graded_as_run["grade"]
    for row in read_csv(output / "grades_by_test.csv"):
        if row["student_id"] == "correct":
            assert row["note"] in {"", "needs manual grading"}, row
        else:  # graded, and failing for the right reason: the stub's NotImplementedError (an untouched written answer scores 0)
            assert float(row["score"]) == 0, row
            assert row["note"].startswith("NotImplementedError") or row["grade_id"] in written_answers(row["assignment"]), row


def test_feedback_is_where_the_defaults_put_it(graded_as_run):
    for assignment in assignments():
        for student in ("correct", "blank"):
            assert (graded_as_run["output"] / "feedback" / student / assignment / f"{assignment}.html").is_file()


def test_make_export_gives_nbgraders_csv_with_the_same_totals(graded_as_run):
    output = graded_as_run["output"]
    ours = {(row["student_id"], row["assignment"]): float(row["score"]) for row in read_csv(output / "grades.csv")}
    nbgraders = {(row["student_id"], row["assignment"]): float(row["score"]) for row in read_csv(output / "nbgrader_export.csv")}
    assert nbgraders == ours and len(ours) == 2 * len(assignments())
