"""`make grade` end to end with real nbgrader: exact grades for good, wrong and broken submissions."""

import os
import re
import signal
import subprocess

import nbformat
import pytest

from conftest import BIN, ROOT, make
from notebooks import mistakes, with_mistake
from submissions import insert_code_cell, read_csv, release_notebook, solution_sources, solved, submit

ASSIGNMENT = "03_rnn_lstm"
SECOND_ASSIGNMENT = "01_lstm_by_hand"
FULL = 30.0


def wrong_rnn_forward() -> str:
    correct = solution_sources(ASSIGNMENT)["rnn_forward"]
    assert "H = rnn_step(X, H, W_xh, W_hh, b_h)" in correct
    return correct.replace("H = rnn_step(X, H, W_xh, W_hh, b_h)", "H = 0.5 * rnn_step(X, H, W_xh, W_hh, b_h)")


def answer_that_kills_the_kernel() -> str:
    return solution_sources(ASSIGNMENT)["lstm_num_parameters"].replace('"""\n', '"""\n    import os; os._exit(1)\n', 1)


def answer_that_never_returns() -> str:
    source = solution_sources(ASSIGNMENT)["lstm_lm"]
    return source.replace("embedded = self.embedding(x)", "while True:\n            pass\n        embedded = self.embedding(x)")


def without_cell(grade_id: str):
    notebook = solved(ASSIGNMENT)
    notebook.cells = [c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") != grade_id]
    return notebook


def answer_from_any_reference_it_can_read() -> str:
    """rnn_step that answers from the hidden references if it can read them, else hard-codes the public answer."""
    return """def rnn_step(X, H, W_xh, W_hh, b_h):
    import torch, shared.checks
    try:
        hidden = torch.load(shared.checks.HIDDEN_DIR / "03_rnn_lstm.pt", weights_only=True)
        return next(e["value"] for n, e in hidden.items() if n.startswith("rnn_step/") and e["value"].shape == H.shape)
    except Exception:
        return torch.load(shared.checks.PUBLIC_DIR / "03_rnn_lstm.pt", weights_only=True)["rnn_step"]
"""


CHECKS_PATCHED = """import shared.checks
shared.checks.compare = lambda *args, **kwargs: None
shared.checks.Checker.check = shared.checks.Checker.check_hidden = lambda *args, **kwargs: print("✓ fine")"""

REACHES_OUT = """import socket, os
try:
    socket.create_connection(("pypi.org", 443), timeout=3)
    print("NETWORK REACHED")
except OSError as error:
    print("no network:", error)
try:
    seen = sorted(os.listdir(os.path.join(os.path.dirname(shared.__file__), "..", "autograder")))
except FileNotFoundError:  # the sandbox shows only what it allows: autograder/ is not even there
    seen = []
print("can see:", seen)"""

FORK_BOMB = "import os\nwhile True:\n    os.fork()"
IGNORES_INTERRUPTS = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"


def with_test_cell_first(grade_id: str):
    """The solved notebook with one test cell moved to the top, above the code it needs."""
    notebook = solved(ASSIGNMENT)
    index = next(i for i, c in enumerate(notebook.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    notebook.cells.insert(0, notebook.cells.pop(index))
    return notebook


def with_mistake_made(mistake_id: str) -> str:
    """The answer cell a student would write if they made a catalogued mistake (autograder/mistakes/)."""
    mistake = next(m for m in mistakes(ASSIGNMENT) if m.id == mistake_id)
    return with_mistake(solution_sources(ASSIGNMENT)[mistake.cell], mistake)


def with_test_cell_replaced(grade_id: str, source: str):
    notebook = solved(ASSIGNMENT)
    next(c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id).source = source
    return notebook


CLASS = {
    "correct": lambda: solved(ASSIGNMENT),
    "blank": lambda: release_notebook(ASSIGNMENT),
    "one_wrong": lambda: solved(ASSIGNMENT, {"rnn_forward": wrong_rnn_forward()}),
    "kernel_dies": lambda: solved(ASSIGNMENT, {"lstm_num_parameters": answer_that_kills_the_kernel()}),
    "infinite_loop": lambda: solved(ASSIGNMENT, {"lstm_lm": answer_that_never_returns()}),
    "deleted_test": lambda: without_cell("test_lstm"),
    "not_json": lambda: '{"cells": [ oops',
    # wrong answers behind a patched checker: no hidden values reach the grader, so every cell scores 0
    "patches_checks": lambda: insert_code_cell(solved(ASSIGNMENT, {"rnn_forward": wrong_rnn_forward()}), "setup", CHECKS_PATCHED),
    # reads the hidden references (hidden by the sandbox) or hard-codes the visible answer
    "cheats_rnn_step": lambda: solved(ASSIGNMENT, {"rnn_step": answer_from_any_reference_it_can_read()}),
    "reaches_out": lambda: insert_code_cell(solved(ASSIGNMENT), "setup", REACHES_OUT),
    "memory_bomb": lambda: insert_code_cell(solved(ASSIGNMENT), "setup", "hoard = torch.ones(4_000_000_000)  # 16 GB"),
    "prints_100_mb": lambda: insert_code_cell(solved(ASSIGNMENT), "setup", 'print("x" * 100_000_000)'),
    "edits_a_test": lambda: with_test_cell_replaced("test_lstm_step", 'print("✓ trust me")'),
    "fork_bomb": lambda: insert_code_cell(solved(ASSIGNMENT), "setup", FORK_BOMB),
    "ignores_interrupts": lambda: insert_code_cell(solved(ASSIGNMENT), "setup", IGNORES_INTERRUPTS),
    "reordered": lambda: with_test_cell_first("test_rnn_step"),
    "known_mistake": lambda: solved(ASSIGNMENT, {"rnn_step": with_mistake_made("rnn_without_bias")}),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade the class three ways; returns {"first": dir, "resumed": dir, "rerun": make's output}.

    first:   one uninterrupted run with two workers;
    resumed: a run killed as soon as one submission is graded, then run again to the end;
    rerun:   the first run's output graded again with nothing changed.
    """
    submissions = tmp_path_factory.mktemp("submitted")
    for student, build in CLASS.items():
        submit(submissions, student, ASSIGNMENT, build())
    # A second assignment from the first student: two workers then start on the same new student.
    submit(submissions, "correct", SECOND_ASSIGNMENT, solved(SECOND_ASSIGNMENT))
    settings = [f"SUBMISSIONS={submissions}", "WORKERS=2"]
    env = {"CELL_TIMEOUT": "10"}

    first = tmp_path_factory.mktemp("first")
    result = make("grade", *settings, f"GRADING_OUTPUT={first}", env=env)
    assert "Graded 18 submissions" in result.stdout and "with 2 workers, sandboxed" in result.stdout

    resumed = tmp_path_factory.mktemp("resumed")
    command = ["make", "--no-print-directory", "grade", f"BIN={BIN}", *settings, f"GRADING_OUTPUT={resumed}"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    for line in process.stdout:
        if line.startswith("[1/18]"):
            break
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (resumed / "grades.csv").exists(), "the run was not interrupted before it finished"
    resumed_run = make("grade", *settings, f"GRADING_OUTPUT={resumed}", env=env)
    assert "already graded with the same inputs" in resumed_run.stdout

    rerun = make("grade", *settings, f"GRADING_OUTPUT={first}", env=env)
    return {"first": first, "resumed": resumed, "rerun": rerun.stdout}


def totals(output, assignment=ASSIGNMENT):
    return {row["student_id"]: float(row["score"]) for row in read_csv(output / "grades.csv") if row["assignment"] == assignment}


def cell_rows(output, student):
    rows = read_csv(output / "grades_by_test.csv")
    return {row["grade_id"]: row for row in rows if row["student_id"] == student and row["assignment"] == ASSIGNMENT}


def test_every_submission_gets_exactly_its_grade(graded):
    assert totals(graded["first"]) == {
        "blank": 0.0,
        "correct": FULL,
        "deleted_test": FULL,  # the deleted test cell is restored from the source and graded
        "infinite_loop": FULL - 3,  # test_lstm_lm times out; everything else counts
        "kernel_dies": FULL - 1,  # only the cell that killed the kernel scores 0
        "not_json": 0.0,
        "one_wrong": FULL - 5,  # exactly rnn_forward's points
        "patches_checks": FULL - 5,  # the patch runs in the kernel only: the second pass grades the answers as they are
        "cheats_rnn_step": FULL - 10,  # rnn_step's hidden checks fail, and rnn_forward's, which calls it
        "reaches_out": FULL,
        "memory_bomb": FULL,  # the allocation fails in its own cell; nothing else is affected
        "prints_100_mb": FULL,
        "edits_a_test": FULL,  # the locked test cell is restored from the source and passes
        "fork_bomb": FULL,  # the bomb is stopped at the process limit and its processes killed after the cell
        "ignores_interrupts": FULL,  # the stuck kernel is replaced; the cells below run in a fresh one
        "reordered": FULL - 5,  # test_rnn_step, moved above the code it needs, fails; the rest is graded as usual
        "known_mistake": FULL - 10,  # rnn_step without its bias, and rnn_forward, which calls it
    }
    assert {row["max_score"] for row in read_csv(graded["first"] / "grades.csv") if row["assignment"] == ASSIGNMENT} == {str(FULL)}
    assert totals(graded["first"], SECOND_ASSIGNMENT) == {"correct": 20.0}


def test_per_test_breakdown_says_what_went_wrong(graded):
    one_wrong = cell_rows(graded["first"], "one_wrong")
    assert [g for g, row in one_wrong.items() if row["score"] != row["max_score"]] == ["test_rnn_forward"]
    assert "Check 'rnn_forward'" in one_wrong["test_rnn_forward"]["note"]
    assert cell_rows(graded["first"], "kernel_dies")["test_lstm_num_parameters"]["note"].startswith("KernelDied")
    assert cell_rows(graded["first"], "infinite_loop")["test_lstm_lm"]["note"].startswith("CellTimeoutError")
    assert all("JSON" in row["note"] for row in cell_rows(graded["first"], "not_json").values())
    blank = cell_rows(graded["first"], "blank")
    assert len(blank) == 8 and all(row["note"].startswith("NotImplementedError") for row in blank.values())
    assert list(cell_rows(graded["first"], "correct")) == [
        "test_rnn_step", "test_lstm_step", "test_rnn_forward", "test_lstm_forward",
        "test_lstm_cell", "test_lstm", "test_lstm_num_parameters", "test_lstm_lm",
    ]


def test_a_known_mistake_is_named_in_the_notes_and_the_feedback(graded):
    import html

    title = next(m.title for m in mistakes(ASSIGNMENT) if m.id == "rnn_without_bias")
    rows = cell_rows(graded["first"], "known_mistake")
    assert f"Check 'rnn_step': the output matches a known mistake: {title}." in rows["test_rnn_step"]["note"]
    feedback = (graded["first"] / "feedback/known_mistake" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    assert f"known mistake: {html.escape(title)}" in feedback


def test_hidden_checks_are_scored_outside_the_kernel(graded):
    patched = cell_rows(graded["first"], "patches_checks")
    # The patching cell is the student's own: the second pass does not run it, and the wrong rnn_forward fails there.
    # (In the kernel, the notebook imported `compare` before the patch, so the nn.RNN comparison catches it too.)
    assert patched.pop("test_rnn_forward")["note"].startswith("CheckFailed: Check 'rnn_forward vs nn.RNN'")
    assert all(float(row["score"]) == float(row["max_score"]) for row in patched.values())
    cheat = cell_rows(graded["first"], "cheats_rnn_step")
    assert cheat["test_rnn_step"]["note"] == "HiddenCheckFailed: hidden check 'rnn_step/101': the result has the wrong shape (got (3, 5))"
    assert float(cheat["test_lstm_step"]["score"]) == 5.0


def test_the_kernel_has_no_network_and_cannot_see_the_autograder(graded):
    notebook = nbformat.read(graded["first"] / "autograded/reaches_out" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for cell in notebook.cells if "REACHED" in cell.source for o in cell.outputs)
    assert "no network:" in printed and "NETWORK REACHED" not in printed
    assert "can see: []" in printed


def test_the_sandbox_hands_over_no_folder_outside_the_autograded_copies(tmp_path):
    """sandbox.py gives the kernel's folder to the kernel's user: run anywhere else, it must refuse and change nothing."""
    folder = tmp_path / "not_a_submission"
    folder.mkdir()
    (folder / "keep.txt").write_text("instructor's file")
    owner = folder.stat().st_uid
    scratch = tmp_path / "output/.grading/scratch/03_rnn_lstm/someone"
    result = subprocess.run([str(BIN / "python"), str(ROOT / "autograder/sandbox.py"), "--output", str(tmp_path / "output"),
                             str(tmp_path / "kernel.json"), "--scratch", str(scratch)], cwd=folder, capture_output=True, text=True)
    assert result.returncode != 0 and "runs in" in result.stderr and str(folder) in result.stderr
    assert folder.stat().st_uid == owner and (folder / "keep.txt").stat().st_uid == owner


def test_a_run_leaves_no_socket_folders_behind(tmp_path):
    (tmp_path / "submitted").mkdir()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run([str(BIN / "python"), str(ROOT / "autograder/grade.py"), "--submissions", str(tmp_path / "submitted"),
                             "--output", str(tmp_path / "output")], env={**os.environ, "TMPDIR": str(scratch)}, capture_output=True, text=True)
    assert result.returncode == 0 and "sandboxed" in result.stdout, result.stderr
    assert list(scratch.iterdir()) == []


def test_runaway_cells_are_contained(graded):
    bomb = nbformat.read(graded["first"] / "autograded/memory_bomb" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    errors = [o for c in bomb.cells if "hoard" in c.source for o in c.outputs if o.output_type == "error"]
    assert errors and "alloc" in errors[0]["evalue"].lower()
    stuck = nbformat.read(graded["first"] / "autograded/ignores_interrupts" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    errors = [o for c in stuck.cells if "SIG_IGN" in c.source for o in c.outputs if o.output_type == "error"]
    assert errors and "CPU time" in errors[0]["evalue"] and "did not stop" in errors[0]["evalue"]
    bomb = nbformat.read(graded["first"] / "autograded/fork_bomb" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    errors = [o for c in bomb.cells if "os.fork()" in c.source for o in c.outputs if o.output_type == "error"]
    # The process limit stops it (BlockingIOError); on a busy machine its copies may keep the kernel
    # past the time limit, and the kernel is replaced instead; where the kernel has a memory limit as a
    # whole (a cgroup), its copies can use it up and the kernel is killed. Either way the rest is graded (FULL).
    assert errors and errors[0]["ename"] in {"BlockingIOError", "CellTimeoutError", "KernelDied"}
    assert cell_rows(graded["first"], "reordered")["test_rnn_step"]["note"].startswith("NameError")
    flood = graded["first"] / "autograded/prints_100_mb" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    assert flood.stat().st_size < 2_000_000 and "output cut: 100,000,001 characters" in flood.read_text()


def test_an_interrupted_run_resumes_to_the_same_grades(graded):
    for name in ("grades.csv", "grades_by_test.csv"):
        assert (graded["resumed"] / name).read_text() == (graded["first"] / name).read_text()


def test_rerunning_skips_what_is_graded_and_changes_nothing(graded):
    # the gradable submissions are skipped; only the unreadable one is tried again
    assert "17 submissions are already graded with the same inputs; grading the other 1." in graded["rerun"]
    assert totals(graded["first"])["correct"] == FULL


def test_gradebook_is_nbgraders_and_holds_every_student(graded):
    from nbgrader.api import Gradebook

    database = graded["first"] / "gradebook.db"
    with Gradebook(f"sqlite:///{database}") as gradebook:
        assert sorted(s.id for s in gradebook.students) == sorted(CLASS)
        assert gradebook.find_submission(ASSIGNMENT, "one_wrong").score == FULL - 5
        assert gradebook.find_assignment(ASSIGNMENT).max_score == FULL


def test_the_gradebook_make_grade_creates_is_the_one_nbgrader_creates(graded, tmp_path):
    import sqlite3

    from nbgrader.api import Gradebook

    def schema_and_version(database):
        with sqlite3.connect(database) as connection:
            schema = sorted(connection.execute("SELECT type, name, sql FROM sqlite_master"))
            return schema, connection.execute("SELECT version_num FROM alembic_version").fetchall()

    fresh = tmp_path / "gradebook.db"
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # nbgrader runs `alembic heads` by name for its version
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", path)
        Gradebook(f"sqlite:///{fresh}").close()
    ours, nbgraders = schema_and_version(graded["first"] / "gradebook.db"), schema_and_version(fresh)
    assert len(ours[1]) == 1 and ours == nbgraders


def test_feedback_is_written_without_hidden_tests(graded):
    hidden_code = ["check_hidden", "BEGIN HIDDEN", "seed=161", "LSTMLM(17, 3, 6"]  # the last two only in hidden tests
    for student in set(CLASS) - {"not_json", "patches_checks"}:  # the latter's own code says check_hidden
        html = (graded["first"] / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
        assert [code for code in hidden_code if code in html] == [], student
    feedback = (graded["first"] / "feedback/one_wrong" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    # The whole traceback is shown (the kernel ran no hidden code): its error line is coloured, so tags may split it.
    assert re.search(r"CheckFailed(</span>)?: Check (&#39;|')rnn_forward(&#39;|'): output\[(&#39;|')outputs", feedback)

