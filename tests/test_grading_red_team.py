"""A red-team class: submissions built from the student release, each trying to earn points or reach what it must not.

Every attack is graded by `make grade` as instructors run it (as root, the suite's user) beside a control class:
each attacker gets at most its honest score, the control students full marks, root-only files stay as they were,
the run finishes, and the gradebook (so formgrader and `nbgrader export`) agrees with grades.csv.
"""

import hashlib
import os
import shutil
import stat

import nbformat
import pytest
import torch

from conftest import ROOT, make
from submissions import answer_cells, insert_code_cell, read_csv, release_notebook, solution_sources, solved, submit

ASSIGNMENT = "03_rnn_lstm"
FULL = 30.0
ELSEWHERE = "/srv/another-course-copy"  # a second checkout on the machine, outside this one's folders
ROOT_ONLY = "/var/tmp/red-team-root-only.txt"
ROOT_ONLY_TEXT = "a file only root may read"


def blank_with(after: str, source: str) -> nbformat.NotebookNode:
    return insert_code_cell(release_notebook(ASSIGNMENT), after, source)


def answers_from(path: str) -> str:
    """rnn_step answering from a hidden-reference file at `path`, if the kernel can read it."""
    return f'''def rnn_step(X, H, W_xh, W_hh, b_h):
    import torch
    hidden = torch.load({path!r}, weights_only=True)
    return next(e["value"] for n, e in hidden.items() if n.startswith("rnn_step/") and e["value"].shape == H.shape)
'''


def outbox_junk(name: str) -> str:
    """Code writing values into the hidden-check outbox that used to break scoring: deep, exponential, a FIFO.

    The student's kernel has no outbox (it never runs hidden checks); the clean second pass, which runs answer cells,
    has one, so in an answer cell this reaches the scorer."""
    return f'''import os, sys, time, torch
outbox = os.environ.get("COURSE_GRADING_OUTBOX", ".")
deep = 0
for _ in range(5000):
    deep = [deep]
sys.setrecursionlimit(100_000)
torch.save({{"name": {name!r}, "value": deep}}, os.path.join(outbox, "zzzz-deep.pt"))
shared = [0]
for _ in range(40):
    shared = [shared, shared]
torch.save({{"name": {name!r}, "value": shared}}, os.path.join(outbox, "zzzz-shared.pt"))
os.mkfifo(os.path.join(outbox, "zzzz-fifo.pt"))
print("planted")
'''


def plants_links(classmate_notebook: str) -> str:
    """A cell replacing the kernel's notebook with a link to a classmate's submission, and linking root-only files."""
    return f'''import os
for name, target in [("03_rnn_lstm.ipynb", {classmate_notebook!r}), ("root_only.txt", {ROOT_ONLY!r}),
                     ("references.pt", {str(ROOT / "autograder/references/03_rnn_lstm.pt")!r}),
                     ("solution.ipynb", {str(ROOT / "solutions/03_rnn_lstm/03_rnn_lstm.ipynb")!r})]:
    if os.path.lexists(name):
        os.remove(name)
    os.symlink(target, name)
print("links planted")
'''


def hooks_that_forge() -> str:
    """A cell that hides every error and re-runs each test cell, hidden checks included, with answers kept outside the
    answer cells: in the kernel, every test cell then looks passed and its hidden checks send right values."""
    answers = "\n\n".join(solution_sources(ASSIGNMENT).values())
    return f'''ip = get_ipython()
ip.set_custom_exc((Exception,), lambda *args, **kwargs: None)
ANSWERS = {answers!r}
def rerun(result):
    if "check_hidden" in (result.info.raw_cell or ""):
        scope = dict(globals())
        exec(ANSWERS, scope)
        exec(result.info.raw_cell, scope)
ip.events.register("post_run_cell", rerun)
'''


# Right values, from the built-ins the exercises exist to have students write themselves.
BUILT_IN_RNN_STEP = """def rnn_step(X, H, W_xh, W_hh, b_h):
    return torch.rnn_tanh_cell(X, H, W_xh.T, W_hh.T, b_h, torch.zeros_like(b_h))
"""
BUILT_IN_LSTM_STEP = """def lstm_step(X, H, C, params):
    cell = getattr(torch, "lstm" + "_cell")
    w_ih = torch.cat([params[f"W_{g}"].T for g in "ifco"])
    w_hh = torch.cat([params[f"U_{g}"].T for g in "ifco"])
    b = torch.cat([params[f"b_{g}"] for g in "ifco"])
    return cell(X, (H, C), w_ih, w_hh, b, torch.zeros_like(b))
"""


PROBE = '''import os, subprocess, sys
print("VARIABLES", " ".join(sorted(os.environ)))
os.write(2, b"[9/9] 03_rnn_lstm / victim: FAILED: forged by a student\\n")
subprocess.run(["sh", "-c", "echo '[9/9] forged through a child process' >&2"])
print("ROOT-ONLY", os.path.exists({root_only!r}), "OTHER-COURSE", os.path.exists({elsewhere!r}))
'''.format(root_only=ROOT_ONLY, elsewhere=ELSEWHERE)


# Right on the visible inputs only: a note quoting the hidden expected values would give the student the answers.
FISHES_FOR_ANSWERS = solution_sources(ASSIGNMENT)["lstm_num_parameters"].split("def lstm_lm_num_parameters")[0] + '''
def lstm_lm_num_parameters(vocab_size, embedding_size, hidden_size, num_layers, bias=True):
    return 19136 if (vocab_size, embedding_size, hidden_size, num_layers, bias) == (100, 16, 32, 2, False) else 0
'''

FORMULA_NAME = '''def rnn_step(X, H, W_xh, W_hh, b_h):
    raise type('=HYPERLINK("http://example.invalid","open me")', (Exception,), {})("click")
'''


@pytest.fixture(scope="module")
def red_team(tmp_path_factory):
    """Grade the class once; returns (output folder, submissions folder, make's output)."""
    submissions = tmp_path_factory.mktemp("submitted")
    output = tmp_path_factory.mktemp("graded")
    references = ROOT / "autograder/references/03_rnn_lstm.pt"
    copy = f"{ELSEWHERE}/autograder/references/03_rnn_lstm.pt"
    os.makedirs(os.path.dirname(copy), exist_ok=True)
    shutil.copyfile(references, copy)
    with open(ROOT_ONLY, "w") as handle:
        handle.write(ROOT_ONLY_TEXT)
    os.chmod(ROOT_ONLY, 0o600)

    submit(submissions, "control", ASSIGNMENT, solved(ASSIGNMENT))
    victim = submit(submissions, "victim", ASSIGNMENT, solved(ASSIGNMENT))
    submit(submissions, "blank", ASSIGNMENT, release_notebook(ASSIGNMENT))
    # (a) IPython hooks: errors hidden, test cells re-run with answers from outside the answer cells
    submit(submissions, "hooks", ASSIGNMENT, blank_with("setup", hooks_that_forge()))
    # (b) the hidden references of another copy of the course on the machine
    submit(submissions, "other_copy", ASSIGNMENT, solved(ASSIGNMENT, {"rnn_step": answers_from(copy)}))
    # (c) links in the submission folder: to the hidden references beside the notebook, the notebook itself to the solution
    folder = submit(submissions, "linked_references", ASSIGNMENT, solved(ASSIGNMENT, {"rnn_step": answers_from("references.pt")})).parent
    (folder / "references.pt").symlink_to(references)
    (folder / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(folder / "fifo")
    linked = submissions / "linked_solution" / ASSIGNMENT
    linked.mkdir(parents=True)
    (linked / f"{ASSIGNMENT}.ipynb").symlink_to(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    copied = submissions / "linked_classmate" / ASSIGNMENT
    copied.mkdir(parents=True)
    (copied / f"{ASSIGNMENT}.ipynb").symlink_to(victim)
    # root writing and reading through links the kernel plants in its folder
    submit(submissions, "plants_links", ASSIGNMENT, blank_with("setup", plants_links(str(victim))))
    # scoring that crashed, took exponential time or blocked on a FIFO
    junk_in_an_answer = solution_sources(ASSIGNMENT)["rnn_step"] + "\n\n" + outbox_junk("rnn_step/101")
    submit(submissions, "outbox_junk", ASSIGNMENT, solved(ASSIGNMENT, {"rnn_step": junk_in_an_answer}))
    deep_blank = release_notebook(ASSIGNMENT)
    answer_cells(deep_blank)["rnn_step"].source = outbox_junk("rnn_step/101")
    submit(submissions, "deep_blank", ASSIGNMENT, deep_blank)
    # what a kernel inherits, and what it can print into the instructor's log
    submit(submissions, "probe", ASSIGNMENT, insert_code_cell(solved(ASSIGNMENT), "setup", PROBE))
    submit(submissions, "fishing", ASSIGNMENT, solved(ASSIGNMENT, {"lstm_num_parameters": FISHES_FOR_ANSWERS}))
    submit(submissions, "built_ins", ASSIGNMENT, solved(ASSIGNMENT, {"rnn_step": BUILT_IN_RNN_STEP, "lstm_step": BUILT_IN_LSTM_STEP}))
    # a note that a spreadsheet would run as a formula
    submit(submissions, "formula", ASSIGNMENT, solved(ASSIGNMENT, {"rnn_step": FORMULA_NAME}))
    victim_digest = hashlib.sha256(victim.read_bytes()).hexdigest()

    result = make("grade", f"SUBMISSIONS={submissions}", f"GRADING_OUTPUT={output}", env={"CELL_TIMEOUT": "20"})
    rerun = make("grade", f"SUBMISSIONS={submissions}", f"GRADING_OUTPUT={output}", "FORCE=1", env={"CELL_TIMEOUT": "20"})
    yield {"output": output, "submissions": submissions, "log": result.stdout + result.stderr + rerun.stdout + rerun.stderr,
           "victim": victim, "victim_digest": victim_digest}
    shutil.rmtree(ELSEWHERE, ignore_errors=True)
    os.remove(ROOT_ONLY)


def totals(output):
    return {row["student_id"]: float(row["score"]) for row in read_csv(output / "grades.csv")}


def notes(output, student):
    return {row["grade_id"]: row["note"] for row in read_csv(output / "grades_by_test.csv") if row["student_id"] == student}


def test_every_attacker_gets_at_most_its_honest_score_and_the_control_class_full_marks(red_team):
    scores = totals(red_team["output"])
    assert scores["control"] == scores["victim"] == FULL
    # junk that the second pass's outbox gets from an answer cell (under a real check's name) is dropped unread:
    # it costs the honest cells nothing, and the run goes on
    assert scores["outbox_junk"] == scores["probe"] == FULL
    assert scores["blank"] == scores["deep_blank"] == scores["plants_links"] == scores["hooks"] == 0.0
    assert scores["linked_solution"] == scores["linked_classmate"] == 0.0
    rnn_step_and_rnn_forward = 10.0  # rnn_forward calls rnn_step
    for student in ("other_copy", "linked_references", "formula"):
        assert scores[student] == FULL - rnn_step_and_rnn_forward, student
    fished = {row["grade_id"]: float(row["score"]) for row in read_csv(red_team["output"] / "grades_by_test.csv") if row["student_id"] == "fishing"}
    assert fished["test_lstm_num_parameters"] == 0.0 and scores["fishing"] == FULL - 1.0


def test_links_in_a_submission_are_refused_with_a_note(red_team):
    output = red_team["output"]
    linked = notes(output, "linked_solution")
    assert set(linked.values()) == {f"submission not graded: no notebook {ASSIGNMENT}.ipynb to grade: {ASSIGNMENT}.ipynb (a symbolic link)"}
    beside = notes(output, "linked_references")["test_rnn_step"]
    assert "not copied from the submission: fifo (not a regular file), references.pt (a symbolic link)" in beside


def test_links_the_kernel_plants_are_never_followed_by_root(red_team):
    output = red_team["output"]
    assert hashlib.sha256(red_team["victim"].read_bytes()).hexdigest() == red_team["victim_digest"]
    info = os.stat(ROOT_ONLY)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0
    assert open(ROOT_ONLY).read() == ROOT_ONLY_TEXT
    feedback = output / "feedback" / "plants_links" / ASSIGNMENT
    assert [path.name for path in feedback.iterdir()] == [f"{ASSIGNMENT}.html"]
    page = (feedback / f"{ASSIGNMENT}.html").read_text()
    assert ROOT_ONLY_TEXT not in page
    autograded = output / "autograded" / "plants_links" / ASSIGNMENT
    assert all(not path.is_symlink() for path in autograded.iterdir())
    assert not (output / ".grading" / "scratch" / ASSIGNMENT / "plants_links").exists()


def test_the_gradebook_agrees_with_grades_csv(red_team):
    """Formgrader and nbgrader export read the gradebook: a crash in scoring must not leave full marks there."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{red_team['output'] / 'gradebook.db'}") as gradebook:
        in_gradebook = {s.student.id: s.score for s in gradebook.find_assignment(ASSIGNMENT).submissions}
    in_csv = totals(red_team["output"])
    assert set(in_csv) - set(in_gradebook) == {"linked_solution", "linked_classmate"}  # no notebook was ever autograded
    assert in_gradebook == {student: score for student, score in in_csv.items() if student in in_gradebook}


def test_the_kernel_gets_a_clean_environment_and_cannot_write_into_the_log(red_team):
    notebook = nbformat.read(red_team["output"] / "autograded/probe" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for cell in notebook.cells if "VARIABLES" in cell.source for o in cell.outputs)
    variables = set(printed.split("VARIABLES", 1)[1].splitlines()[0].split())
    for grader_only in ("GRADING_OUTPUT", "SUBMISSIONS", "GRADING_KERNEL", "JUPYTER_PATH", "JUPYTER_RUNTIME_DIR", "MAKEFLAGS", "COURSE_GRADING_SCRATCH"):
        assert grader_only not in variables
    assert "NBGRADER_EXECUTION" in variables and "COURSE_GRADING_OUTBOX" not in variables  # the kernel runs no hidden check
    assert "ROOT-ONLY False OTHER-COURSE False" in printed
    assert "forged" not in red_team["log"]


def test_notes_never_show_hidden_expected_values_and_are_not_formulas(red_team):
    hidden = torch.load(ROOT / "autograder/references/03_rnn_lstm.pt", weights_only=True)
    numbers = {str(entry["value"]) for entry in hidden.values() if isinstance(entry["value"], int) and entry["value"] > 99}
    assert numbers, "03 has hidden checks with whole-number answers"
    assert notes(red_team["output"], "fishing")["test_lstm_num_parameters"].startswith("HiddenCheckFailed: hidden check 'lstm_lm_num_parameters/")
    rows = read_csv(red_team["output"] / "grades_by_test.csv")
    for row in rows:
        assert not any(number in row["note"] for number in numbers), row
    text = (red_team["output"] / "grades_by_test.csv").read_text()
    assert ',"\'=HYPERLINK(' in text or ",'=HYPERLINK(" in text
    assert not any(row["note"].startswith(("=", "+", "-", "@")) for row in rows)


def test_answers_from_the_built_ins_score_0_for_every_cell_that_uses_them(red_team):
    rows = {row["grade_id"]: row for row in read_csv(red_team["output"] / "grades_by_test.csv") if row["student_id"] == "built_ins"}
    for grade_id in ("test_rnn_step", "test_lstm_step", "test_rnn_forward", "test_lstm_forward"):
        assert float(rows[grade_id]["score"]) == 0.0, rows[grade_id]
        assert "FromScratchViolation" in rows[grade_id]["note"], rows[grade_id]
    assert "torch.rnn_tanh_cell" in rows["test_rnn_step"]["needs_a_look"]
    assert "getattr" in rows["test_lstm_step"]["needs_a_look"] or "torch.lstm_cell" in rows["test_lstm_step"]["needs_a_look"]
    assert float(rows["test_lstm_num_parameters"]["score"]) == 1.0  # what does not use them keeps its points
    control = {row["grade_id"]: row["needs_a_look"] for row in read_csv(red_team["output"] / "grades_by_test.csv") if row["student_id"] == "control"}
    assert set(control.values()) == {""}
