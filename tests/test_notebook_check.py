"""`python -m shared.notebook_check`: a notebook's graded cells, run headless and scored as nbgrader would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
from nbgrader.utils import compute_checksum

from conftest import BIN, ROOT
from shared import notebook_check

ASSIGNMENT = "01_lstm_by_hand"  # the quickest notebook in fast mode
SOLUTION = ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
RELEASE = ROOT / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
ROW = re.compile(r"^  (?P<exercise>.*?)\s*(?P<check>\S+)\s+(?P<score>[\d.]+) / (?P<points>[\d.]+)  (?P<result>PASS|PARTIAL|FAIL)(  (?P<reason>.*))?$")


def run_check(*arguments: str | Path) -> subprocess.CompletedProcess:
    """Run the command as `make check` does, from the repository root."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "shared.notebook_check", *map(str, arguments)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def result_rows(stdout: str) -> dict[str, dict[str, str]]:
    """{test cell grade_id: the row's fields} for every scored row printed."""
    return {match["check"]: match.groupdict() for match in map(ROW.match, stdout.splitlines()) if match}


def points_of_tests(path: Path) -> dict[str, float]:
    """{grade_id: points} of the notebook's autograded test cells."""
    notebook = nbformat.read(path, as_version=4)
    return {cell.metadata["nbgrader"]["grade_id"]: cell.metadata["nbgrader"]["points"] for cell in notebook.cells if notebook_check.is_test(cell)}


def test_the_solution_passes_every_check_and_is_left_unchanged():
    before = SOLUTION.read_bytes(), SOLUTION.stat().st_mtime_ns
    result = run_check(SOLUTION)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = result_rows(result.stdout)
    points = points_of_tests(SOLUTION)
    assert list(rows) == list(points)  # every test cell, in notebook order
    assert {row["result"] for row in rows.values()} == {"PASS"}
    assert all(float(row["score"]) == float(row["points"]) == points[name] for name, row in rows.items())
    total = sum(points.values())
    assert f"visible checks: {total:g} / {total:g} points passed (0 points are graded by hand;" in result.stdout
    assert f"Running {SOLUTION}" in result.stdout
    assert (SOLUTION.read_bytes(), SOLUTION.stat().st_mtime_ns) == before


def test_the_release_fails_every_check_as_not_done_yet():
    before = RELEASE.read_bytes()
    result = run_check(RELEASE)
    assert result.returncode == 1
    rows = result_rows(result.stdout)
    assert list(rows) == list(points_of_tests(RELEASE))
    for name, row in rows.items():
        assert (row["result"], row["score"], row["reason"]) == ("FAIL", "0", notebook_check.NOT_DONE), name
        assert row["exercise"] == name.removeprefix("test_")  # the answer cell above the test cell
    assert f"visible checks: 0 / {sum(points_of_tests(RELEASE).values()):g} points passed" in result.stdout
    assert "Errors in cells that are not graded" in result.stdout  # demo cells call the stubs too
    assert RELEASE.read_bytes() == before


def test_one_broken_exercise_fails_alone_with_the_checks_message(tmp_path):
    copy = tmp_path / ASSIGNMENT / SOLUTION.name
    copy.parent.mkdir()
    notebook = nbformat.read(SOLUTION, as_version=4)
    answer = next(cell for cell in notebook.cells if cell.metadata.get("nbgrader", {}).get("grade_id") == "product_dimensions")
    right = '"logits": ((V, h), (h, 1), (V, 1))'
    assert right in answer.source
    answer.source = answer.source.replace(right, '"logits": ((h, V), (h, 1), (V, 1))')  # transposed W_out
    nbformat.write(notebook, copy)
    written = copy.read_bytes()

    result = run_check(copy)
    assert result.returncode == 1
    rows = result_rows(result.stdout)
    failed = {name for name, row in rows.items() if row["result"] != "PASS"}
    assert failed == {"test_product_dimensions"}
    assert rows["test_product_dimensions"]["reason"].startswith("Check 'product_dimensions': output['logits']")
    assert "\x1b[" not in result.stdout
    points = points_of_tests(SOLUTION)
    assert f"visible checks: {sum(points.values()) - points['test_product_dimensions']:g} / {sum(points.values()):g}" in result.stdout
    assert copy.read_bytes() == written


def code_cell(source: str, grade_id: str | None = None, points: int | None = None, *, solution: bool = False):
    """A code cell with nbgrader metadata: a test cell when it has points, an answer cell when `solution`."""
    cell = nbformat.v4.new_code_cell(source)
    if grade_id:
        cell.metadata["nbgrader"] = {"grade": points is not None, "solution": solution, "locked": points is not None,
                                     "grade_id": grade_id, "schema_version": 3, **({"points": points} if points else {})}
    return cell


def write_notebook(path: Path, cells: list) -> Path:
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def scoring_notebook(path: Path, last_cell: str) -> Path:
    """Test cells that nbgrader scores in each of its ways, then `last_cell`, then a cell with a stale output."""
    written = nbformat.v4.new_markdown_cell("YOUR ANSWER HERE")
    written.metadata["nbgrader"] = {"grade": True, "solution": True, "locked": False, "grade_id": "why", "points": 5, "schema_version": 3}
    written.metadata["nbgrader"]["checksum"] = compute_checksum(written)  # as in a release: unchanged means unanswered
    late = code_cell("print('ran')", "test_late", 1)
    late.outputs = [nbformat.v4.new_output("error", ename="NameError", evalue="from an earlier session", traceback=[])]
    return write_notebook(path, [
        code_cell("def answer():\n    return 42", "answer", solution=True),
        code_cell("import sys; print('a message', file=sys.stderr)", "test_stderr", 2),
        code_cell("import warnings; warnings.warn('a library warning')", "test_warning", 1),  # the autograder ignores it
        code_cell("1.5", "test_partial", 3),
        code_cell("import time\nwhile True: time.sleep(0.1)", "test_loop", 1),
        code_cell("assert answer() == 42", "test_answer", 2),
        code_cell("import os\nassert os.environ.get('COURSE_FAST') == '1'", "test_fast_mode", 1),
        written,
        code_cell("print(undefined_name)"),
        code_cell(last_cell, "test_last", 1),
        late,
    ])


def test_cells_are_scored_as_nbgrader_scores_them(tmp_path):
    dies = scoring_notebook(tmp_path / "dies.ipynb", "import os; os._exit(1)")
    stuck = scoring_notebook(tmp_path / "stuck.ipynb", "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass")

    result = run_check("--timeout", "4", dies, stuck)
    assert result.returncode == 1
    reports = result.stdout.split("\nRunning ")
    assert len(reports) == 2 and str(stuck) in reports[1]
    for report, last_reason in zip(reports, ["the kernel died", "ran longer than 4 s and ignored the interrupt"]):
        rows = result_rows(report)
        assert {name: (row["result"], row["score"]) for name, row in rows.items()} == {
            "test_stderr": ("FAIL", "0"), "test_warning": ("PASS", "1"), "test_partial": ("PARTIAL", "1.5"),
            "test_loop": ("FAIL", "0"), "test_answer": ("PASS", "2"), "test_fast_mode": ("PASS", "1"),
            "test_last": ("FAIL", "0"), "test_late": ("FAIL", "0"),
        }
        assert rows["test_stderr"]["reason"] == "wrote to stderr (nbgrader scores this 0): a message"
        assert rows["test_loop"]["reason"] == "ran longer than 4 s and was interrupted"
        assert rows["test_answer"]["exercise"] == "answer"
        assert rows["test_last"]["reason"].startswith(last_reason)
        assert rows["test_late"]["reason"].startswith("did not run")
        assert re.search(r"^  why\s+-\s+5  graded by hand \(not answered yet\)$", report, re.MULTILINE)
        assert 'cell "print(undefined_name)": NameError: name \'undefined_name\' is not defined' in report
        assert "visible checks: 5.5 / 12 points passed (5 points are graded by hand;" in report
    assert "All 2 notebooks: visible checks: 11 / 24 points passed (10 points are graded by hand;" in result.stdout


def test_full_turns_fast_mode_off(tmp_path):
    path = write_notebook(tmp_path / "mode.ipynb", [code_cell("import os\nassert 'COURSE_FAST' not in os.environ", "test_full", 1)])
    result = run_check("--full", path)  # pytest may run with COURSE_FAST=1: --full must drop it
    assert result.returncode == 0, result.stdout
    assert result_rows(result.stdout)["test_full"]["result"] == "PASS"


def test_bad_input_gets_one_clear_line_and_exit_code_2(tmp_path, capsys):
    """One line on stderr and no exception (the command's `sys.exit(main())` would print it as a traceback)."""
    (tmp_path / "broken.ipynb").write_text('{"cells": [')
    (tmp_path / "list.ipynb").write_text("[1, 2]")
    (tmp_path / "empty").mkdir()
    cases = {
        "broken.ipynb": "not valid JSON (line 1, column 12",
        "list.ipynb": "not a Jupyter notebook",
        "missing.ipynb": "no such file or folder",
        "empty": "no notebooks",
    }
    for name, message in cases.items():
        assert notebook_check.main([str(tmp_path / name)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and message in err, (name, err)


def test_stderr_filter_and_time_limit_match_the_autograders_configuration():
    config = (ROOT / "autograder" / "nbgrader_config.py").read_text()
    assert f'c.IgnorePattern.pattern = r"{notebook_check.IGNORED_STDERR}"' in config
    sys.path.insert(0, str(ROOT / "autograder"))
    import run_config

    assert run_config.DEFAULT_CELL_TIMEOUT == notebook_check.GRADING_TIMEOUT


def test_folders_expand_to_their_notebooks(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()
    for name in ("b/two.ipynb", "one.ipynb", ".ipynb_checkpoints/one-checkpoint.ipynb"):
        (tmp_path / name).write_text("{}")
    assert notebook_check.notebook_paths([str(tmp_path)]) == [tmp_path / "b" / "two.ipynb", tmp_path / "one.ipynb"]


def test_the_exercise_column_looks_past_helper_and_scratch_cells_to_the_answer_above(tmp_path):
    """07's test_loss follows a locked helper cell (loss_inputs), 08's test_lstm_lm_forward one too; a student may add a cell."""
    helper = code_cell("def inputs():\n    return 21", "inputs_helper")
    helper.metadata["nbgrader"]["locked"] = True
    path = write_notebook(tmp_path / "helpers.ipynb", [
        code_cell("def answer():\n    return 42", "answer", solution=True),
        helper,
        code_cell("assert answer() == 2 * inputs()", "test_after_helper", 1),
        code_cell("assert answer() > 0", "test_second", 1),
        code_cell("print(answer())"),  # a cell the student added
        code_cell("assert answer() == 42", "test_after_scratch", 1),
    ])
    result = run_check(path)
    assert result.returncode == 0, result.stdout
    assert {name: row["exercise"] for name, row in result_rows(result.stdout).items()} == {
        "test_after_helper": "answer", "test_second": "answer", "test_after_scratch": "answer"}


def test_the_gpt_notebooks_checks_after_a_helper_cell_name_their_exercise():
    notebook = nbformat.read(ROOT / "solutions" / "07_gpt" / "07_gpt.ipynb", as_version=4)
    exercises = {cell.metadata["nbgrader"]["grade_id"]: notebook_check.exercise_of(notebook.cells, index)
                 for index, cell in enumerate(notebook.cells) if notebook_check.is_test(cell)}
    assert {exercises[name] for name in ("test_loss", "test_accuracy", "test_reductions")} == {"loss_and_accuracy"}
    assert all(exercises.values())


def test_cells_are_named_by_what_a_student_sees_not_by_a_count_of_cells(tmp_path):
    path = write_notebook(tmp_path / "names.ipynb", [
        nbformat.v4.new_markdown_cell("# A heading a count would include"),
        code_cell("x = 1"),
        code_cell("need = 1\nprint(undefined_one)"),
        code_cell("need = 1\nprint(undefined_two)"),
        code_cell("raise ValueError('a setup problem')", "setup"),
    ])
    result = run_check(path)
    errors = result.stdout.split("Errors in cells that are not graded")[1]
    assert re.search(r"\bcell \d", errors) is None, errors
    assert 'cell "need = 1 … print(undefined_one)": NameError' in errors  # the same first line: its own line added
    assert 'cell "need = 1 … print(undefined_two)": NameError' in errors
    assert "cell setup: ValueError: a setup problem" in errors


def test_after_a_timed_out_cell_later_cells_give_their_own_reason_not_not_done_yet(tmp_path):
    """07's and 08's demo cells raise NotImplementedError with a message when training above did not finish."""
    need = "if 'trained' not in globals():\n    raise NotImplementedError('the training above did not complete: run it again')"
    path = write_notebook(tmp_path / "timeout.ipynb", [
        code_cell("def answer():\n    return 42", "answer", solution=True),
        code_cell("assert answer() == 42", "test_answer", 1),
        code_cell("import time\nwhile True: time.sleep(0.1)\ntrained = True"),
        code_cell(need),
        code_cell(need + "\nassert answer() == 42", "test_after_training", 1),
        code_cell("def stub():\n    raise NotImplementedError()", "stub", solution=True),
        code_cell("stub()", "test_stub", 1),
    ])
    result = run_check("--timeout", "3", path)
    rows = result_rows(result.stdout)
    assert rows["test_answer"]["result"] == "PASS"
    assert rows["test_after_training"]["reason"] == (
        'NotImplementedError: the training above did not complete: run it again (after the time-out in cell "import time")')
    assert rows["test_stub"]["reason"].startswith(notebook_check.NOT_DONE)  # a stub is still not done
    errors = result.stdout.split("Errors in cells that are not graded")[1]
    assert 'cell "import time": ran longer than 3 s and was interrupted' in errors
    # its lines are all in the test cell below too: it is named by its place among the cells that start alike
    assert 'cell "if \'trained\' not in globals():" (1 of the 2 cells that start so): NotImplementedError: the training above' in errors
    assert notebook_check.NOT_DONE not in errors
