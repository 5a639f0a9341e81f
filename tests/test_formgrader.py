"""Written answers are graded by hand in nbgrader's formgrader; the scores reach the gradebook, the CSVs and feedback.

One student's solved 04_attention is graded with autograder/grade.py, then an instructor's session is
replayed against the real Jupyter server (as `make formgrader` starts it) through formgrader's HTTP
API: the written answer waits for a manual grade, gets a score and a comment, and both must survive
`nbgrader export`, a rerun of grade.py, feedback and a forced regrade.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from conftest import BIN, ROOT
from submissions import solved, submit

# The cheapest assignment with a written answer: ~7 s to autograde here, against ~8.5 s for 02_backprop_by_hand.
ASSIGNMENT = "04_attention"
STUDENT = "ada"


def graded_cells(cell_type: str) -> dict[str, float]:
    """{grade_id: points} of the source notebook's graded cells of one type (code: autograded, markdown: by hand)."""
    source = nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    info = [(c.cell_type, c.metadata.get("nbgrader", {})) for c in source.cells]
    return {i["grade_id"]: float(i["points"]) for kind, i in info if kind == cell_type and i.get("grade")}


TEST_CELLS = graded_cells("code")
[(WRITTEN, WRITTEN_POINTS)] = graded_cells("markdown").items()  # the written answer, graded by hand
MAX_SCORE = sum(TEST_CELLS.values()) + WRITTEN_POINTS
MANUAL_SCORE = WRITTEN_POINTS - 1.5
ANSWER = "Queries are (B, n, d) and keys (B, m, d), so there is one score per query and key: (B, n, m)."
COMMENT = "Right shapes; say why the weights are (B, n, m) too."
AUTOGRADED = sum(TEST_CELLS.values())


@dataclass
class Course:
    """A tiny class in a temporary folder, and the environment every command runs with."""

    submitted: Path
    output: Path
    env: dict[str, str]


def isolated_env(home: Path, submitted: Path, output: Path) -> dict[str, str]:
    """The course's environment, with Jupyter's user config, data and runtime folders in `home`."""
    folders = {name: home / name.lower() for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        **{name: str(folder) for name, folder in folders.items()},
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "SUBMISSIONS": str(submitted),
        "GRADING_OUTPUT": str(output),
    }


def run(command: list[str], course_env: dict[str, str], cwd: Path = ROOT) -> str:
    """Run a command to completion; returns its stdout, or fails the test with its output."""
    result = subprocess.run(command, cwd=cwd, env=course_env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def grade_class(course: Course, *options: str) -> dict[str, str]:
    """Run autograder/grade.py as `make grade` does; returns its stdout and the two CSVs it wrote."""
    command = [sys.executable, str(ROOT / "autograder" / "grade.py"), "--submissions", str(course.submitted),
               "--output", str(course.output), "--workers", "1", *options]
    stdout = run(command, course.env)
    return {"stdout": stdout, **{name: (course.output / name).read_text() for name in ("grades.csv", "grades_by_test.csv")}}


def rows(csv_text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(csv_text)))


def written_row(csv_text: str) -> dict[str, str]:
    return next(row for row in rows(csv_text) if row["grade_id"] == WRITTEN)


def stored_marks(course: Course) -> dict:
    """What nbgrader's gradebook holds for the written answer and the submission."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course.output / 'gradebook.db'}") as gradebook:
        grade = gradebook.find_grade(WRITTEN, ASSIGNMENT, ASSIGNMENT, STUDENT)
        comment = gradebook.find_comment(WRITTEN, ASSIGNMENT, ASSIGNMENT, STUDENT)
        return {"manual_score": grade.manual_score, "needs_manual_grade": grade.needs_manual_grade,
                "comment": comment.manual_comment, "total": gradebook.find_submission(ASSIGNMENT, STUDENT).score}


def feedback_page(course: Course) -> str:
    return (course.output / "feedback" / STUDENT / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Formgrader:
    """The Jupyter server as `make formgrader` runs it (in autograder/, with the class's environment), on a free port."""

    def __init__(self, course: Course, log: Path):
        port, self.token, self.log = free_port(), secrets.token_hex(16), log
        self.url = f"http://127.0.0.1:{port}"
        command = [str(BIN / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
                   f"--IdentityProvider.token={self.token}", *(["--allow-root"] if os.geteuid() == 0 else [])]
        with log.open("w") as sink:  # a file, not a pipe: an unread pipe would block the server once full
            self.process = subprocess.Popen(command, cwd=ROOT / "autograder", env=course.env, stdout=sink,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        # Requests go straight to the local server, never through a proxy from the environment.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body: dict | None = None, token: bool = True) -> tuple[int, str]:
        """(status, body text) of one request; the token goes in the Authorization header."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"token {self.token}")
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def api(self, method: str, path: str, body: dict | None = None):
        """The JSON answer of a formgrader API call that must succeed."""
        status, text = self.call(method, "/formgrader/api/" + path, body)
        assert status == 200, f"{method} {path}: {status}\n{text[:500]}"
        return json.loads(text)

    def wait_until_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the Jupyter server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if self.call("GET", "/api/status")[0] == 200:
                    return
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        raise AssertionError(f"the Jupyter server did not answer within {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> tuple[int, bool]:
        """Stop the server with SIGTERM, as a service manager would; returns (exit code, whether processes were left)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.killpg(self.process.pid, 0)  # anything still alive in the server's own session?
        except ProcessLookupError:
            return self.process.returncode, False
        os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode, True


def served_grading_page(course: Course, assignment: str, student: str, log: Path) -> tuple[int, str]:
    """(status, HTML) of formgrader's grading page of `student`'s `assignment`, from a real Jupyter server started for it."""
    server = Formgrader(course, log)
    try:
        server.wait_until_ready()
        notebooks = server.api("GET", f"submitted_notebooks/{assignment}/{assignment}")
        notebook_id = next(n["id"] for n in notebooks if n["student"] == student)
        return server.call("GET", f"/formgrader/submissions/{notebook_id}/")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    """A class of one student, who handed in 04_attention solved, with a written answer of her own."""
    root = tmp_path_factory.mktemp("formgrader")
    submitted, output = root / "submitted", root / "out"
    submit(submitted, STUDENT, ASSIGNMENT, solved(ASSIGNMENT, {WRITTEN: ANSWER}))
    return Course(submitted, output, isolated_env(root / "jupyter", submitted, output))


@pytest.fixture(scope="module")
def first_run(course) -> dict[str, str]:
    """Autograding with the real pipeline, before anyone grades by hand."""
    return grade_class(course)


@pytest.fixture(scope="module")
def session(course, first_run, tmp_path_factory) -> dict:
    """An instructor's formgrader session, recorded: what the API showed and answered, and how the server stopped."""
    server = Formgrader(course, tmp_path_factory.mktemp("server") / "jupyter.log")
    seen: dict = {}
    try:
        server.wait_until_ready()
        seen["submissions"] = server.api("GET", f"submissions/{ASSIGNMENT}")
        seen["notebooks"] = server.api("GET", f"submitted_notebooks/{ASSIGNMENT}/{ASSIGNMENT}")
        notebook_id = next(n["id"] for n in seen["notebooks"] if n["student"] == STUDENT)
        seen["grades"] = {g["name"]: g for g in server.api("GET", f"grades?submission_id={notebook_id}")}
        comments = {c["name"]: c for c in server.api("GET", f"comments?submission_id={notebook_id}")}
        seen["page"] = server.call("GET", f"/formgrader/submissions/{notebook_id}/")

        grade_id, comment_id = seen["grades"][WRITTEN]["id"], comments[WRITTEN]["id"]
        seen["put_grade"] = server.api("PUT", f"grade/{grade_id}", {"manual_score": MANUAL_SCORE})
        seen["put_comment"] = server.api("PUT", f"comment/{comment_id}", {"manual_comment": COMMENT})
        seen["anonymous_put"] = server.call("PUT", f"/formgrader/api/grade/{grade_id}", {"manual_score": 0.0}, token=False)
        seen["grade_after"] = server.api("GET", f"grade/{grade_id}")
        seen["comment_after"] = server.api("GET", f"comment/{comment_id}")
        seen["submissions_after"] = server.api("GET", f"submissions/{ASSIGNMENT}")
    finally:
        seen["exit_code"], seen["processes_left"] = server.stop()
    return seen


@pytest.fixture(scope="module")
def exported(course, session) -> dict:
    """After manual grading: the gradebook, `nbgrader export`, and a rerun of grade.py (which rewrites the feedback)."""
    gradebook = stored_marks(course)  # as formgrader left it, before anything else touches it
    nbgrader_csv = course.output / "nbgrader_export.csv"
    run([str(BIN / "nbgrader"), "export", f"--to={nbgrader_csv}"], course.env, cwd=ROOT / "autograder")
    rerun = grade_class(course)
    return {"gradebook": gradebook, "nbgrader_csv": nbgrader_csv.read_text(), "rerun": rerun,
            "feedback": feedback_page(course)}


@pytest.fixture(scope="module")
def regraded(course, exported) -> dict:
    """A forced regrade (make grade FORCE=1) after manual grading."""
    return {"run": grade_class(course, "--force"), "gradebook": stored_marks(course), "feedback": feedback_page(course)}


def test_autograding_leaves_the_written_answer_for_a_person(first_run):
    assert f"[1/1] {ASSIGNMENT} / {STUDENT}: ok" in first_run["stdout"]
    assert rows(first_run["grades.csv"]) == [
        {"student_id": STUDENT, "assignment": ASSIGNMENT, "score": str(AUTOGRADED), "max_score": str(MAX_SCORE)}]
    row = written_row(first_run["grades_by_test.csv"])
    assert (row["score"], row["max_score"], row["note"]) == ("0.0", str(WRITTEN_POINTS), "needs manual grading")


def test_formgrader_lists_the_submission_with_its_written_answer_to_grade(session):
    [submission] = session["submissions"]
    assert submission["student"] == STUDENT and submission["autograded"] and submission["needs_manual_grade"]
    assert (submission["score"], submission["max_score"], submission["written_score"], submission["max_written_score"]) == (
        AUTOGRADED, MAX_SCORE, 0.0, WRITTEN_POINTS)
    written = session["grades"][WRITTEN]
    assert written["cell_type"] == "markdown" and written["needs_manual_grade"] is True
    assert written["auto_score"] is None and written["manual_score"] is None and written["max_score"] == WRITTEN_POINTS
    for name, points in TEST_CELLS.items():
        assert session["grades"][name]["auto_score"] == points and not session["grades"][name]["needs_manual_grade"]
    status, page = session["page"]
    assert status == 200 and ANSWER in page  # the grader reads the student's answer on the grading page


def test_a_manual_score_and_comment_are_saved_and_read_back(session):
    assert session["put_grade"]["manual_score"] == MANUAL_SCORE and session["put_grade"]["needs_manual_grade"] is False
    assert session["grade_after"]["manual_score"] == MANUAL_SCORE and session["grade_after"]["needs_manual_grade"] is False
    assert session["comment_after"]["manual_comment"] == COMMENT
    [submission] = session["submissions_after"]
    assert submission["score"] == AUTOGRADED + MANUAL_SCORE and submission["written_score"] == MANUAL_SCORE
    assert submission["needs_manual_grade"] is False


def test_grades_cannot_be_changed_without_the_token(session):
    status, _ = session["anonymous_put"]
    assert status == 403  # jupyter_server asks for an _xsrf token from requests that are not token-authenticated
    assert session["grade_after"]["manual_score"] == MANUAL_SCORE


def test_the_server_stops_cleanly(session):
    assert session["exit_code"] == 0
    assert not session["processes_left"]


def test_the_manual_score_is_in_nbgraders_gradebook(exported):
    assert exported["gradebook"] == {"manual_score": MANUAL_SCORE, "needs_manual_grade": False, "comment": COMMENT,
                                     "total": AUTOGRADED + MANUAL_SCORE}


def test_nbgrader_export_counts_the_manual_score(exported):
    [row] = rows(exported["nbgrader_csv"])
    assert (row["student_id"], row["assignment"]) == (STUDENT, ASSIGNMENT)
    assert float(row["score"]) == AUTOGRADED + MANUAL_SCORE and float(row["max_score"]) == MAX_SCORE


def test_rerunning_grade_rewrites_the_csvs_with_the_manual_score(exported):
    rerun = exported["rerun"]
    assert "1 submissions are already graded with the same inputs; grading the other 0." in rerun["stdout"], (
        "grade.py regraded instead of skipping: were solutions/, the references or the grading code edited during the test?")
    assert rows(rerun["grades.csv"]) == [
        {"student_id": STUDENT, "assignment": ASSIGNMENT, "score": str(AUTOGRADED + MANUAL_SCORE), "max_score": str(MAX_SCORE)}]
    row = written_row(rerun["grades_by_test.csv"])
    assert (row["score"], row["max_score"], row["note"]) == (str(MANUAL_SCORE), str(WRITTEN_POINTS), "")
    assert sum(float(row["score"]) for row in rows(rerun["grades_by_test.csv"])) == AUTOGRADED + MANUAL_SCORE


def test_rerunning_grade_rewrites_the_feedback_with_the_manual_score_and_comment_but_no_hidden_tests(exported):
    assert "Rewrote the feedback of 1 submissions" in exported["rerun"]["stdout"]
    feedback = exported["feedback"]
    assert f"Score: {MANUAL_SCORE} / {WRITTEN_POINTS}" in feedback and f"Score: {AUTOGRADED + MANUAL_SCORE} / {MAX_SCORE}" in feedback
    assert COMMENT in feedback
    assert not re.search("check_hidden|BEGIN HIDDEN", feedback)


@pytest.fixture(scope="module")
def answer_changed(course, regraded) -> dict:
    """The student hands in a new written answer after it was graded by hand; make grade regrades the changed submission."""
    submit(course.submitted, STUDENT, ASSIGNMENT, solved(ASSIGNMENT, {WRITTEN: ANSWER + " The softmax runs over the keys."}))
    return {"run": grade_class(course), "gradebook": stored_marks(course)}


def test_a_forced_regrade_keeps_the_manual_score_of_an_unchanged_answer_as_reviewed(regraded):
    assert f"[1/1] {ASSIGNMENT} / {STUDENT}: ok" in regraded["run"]["stdout"]
    assert float(rows(regraded["run"]["grades.csv"])[0]["score"]) == AUTOGRADED + MANUAL_SCORE
    row = written_row(regraded["run"]["grades_by_test.csv"])
    assert (row["score"], row["note"]) == (str(MANUAL_SCORE), "")
    # nbgrader would ask for the score to be reviewed again; the answer is the one that was scored, so it is not.
    assert regraded["gradebook"] == {"manual_score": MANUAL_SCORE, "needs_manual_grade": False, "comment": COMMENT,
                                     "total": AUTOGRADED + MANUAL_SCORE}
    assert f"Score: {MANUAL_SCORE} / {WRITTEN_POINTS}" in regraded["feedback"] and COMMENT in regraded["feedback"]


def test_a_changed_answer_keeps_its_manual_score_and_is_flagged_for_review(answer_changed):
    assert f"[1/1] {ASSIGNMENT} / {STUDENT}: ok" in answer_changed["run"]["stdout"]
    row = written_row(answer_changed["run"]["grades_by_test.csv"])
    assert (row["score"], row["note"]) == (str(MANUAL_SCORE), "manual score given before regrading: review it in formgrader")
    assert answer_changed["gradebook"]["needs_manual_grade"] is True and answer_changed["gradebook"]["manual_score"] == MANUAL_SCORE
