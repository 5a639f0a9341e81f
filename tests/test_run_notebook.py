"""`make run NB=...` (shared.run_notebook): run a notebook top to bottom and save it in place with its outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from conftest import make
from shared import pdf

CELLS = [
    "from shared.training import fast_mode, progress_bar\nprint('fast mode:', fast_mode())",
    "for _ in progress_bar(range(5), desc='training'):\n    pass",
    "raise ValueError('boom')",
    "print('the cells below an error still run')",
]


def student_notebook(folder: Path) -> Path:
    """A notebook that was never run, with a cell that raises."""
    path = folder / "mine.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in CELLS]), path)
    return path


def outputs(path: Path) -> list[str]:
    """Each code cell's outputs as one string (error outputs as 'Name: message')."""
    cells = nbformat.read(path, as_version=4).cells
    return ["".join(o.get("text") or o.get("data", {}).get("text/plain", "") or f"{o.get('ename')}: {o.get('evalue')}"
                    for o in cell.outputs) for cell in cells]


def test_make_run_saves_the_notebook_with_its_outputs_in_fast_mode(tmp_path):
    path = student_notebook(tmp_path)
    result = make("run", f"NB={path}", env={"COURSE_FAST": "1"}, check=False)
    assert result.returncode != 0  # a cell raised: said, and the notebook is saved all the same
    assert f"saved {path} with its outputs" in result.stdout
    assert "cell 3: ValueError: boom" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    setup, bar, error, after = outputs(path)
    assert setup == "fast mode: True\n"
    assert bar.startswith("training: 5/5 steps, ") and "%" not in bar
    assert error == "ValueError: boom"
    assert after == "the cells below an error still run\n"
    assert all(cell.execution_count for cell in nbformat.read(path, as_version=4).cells)
    if pdf.find_browser() is not None:  # now that it has run, make pdf takes it
        exported = make("pdf", f"NB={path}", check=False)
        assert exported.returncode == 0, exported.stderr
        assert path.with_suffix(".pdf").is_file()


def test_make_run_takes_full_size_from_the_environment(tmp_path):
    path = student_notebook(tmp_path)
    result = make("run", f"NB={path}", env={"COURSE_FAST": ""}, check=False)
    assert "full size" in result.stdout
    assert outputs(path)[0] == "fast mode: False\n"


@pytest.mark.parametrize("argument, message", [
    (None, "which notebook? Name it: make run NB="),
    ("README.md", "README.md: not a notebook (the name should end in .ipynb)"),
    ("missing.ipynb", "missing.ipynb: no such file"),
    ("tests", "tests is a folder: name one notebook in it"),
])
def test_make_run_without_a_notebook_says_what_is_wrong(argument, message):
    result = make("run", *([f"NB={argument}"] if argument else []), check=False)
    assert result.returncode != 0
    assert f"make run: {message}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_that_is_not_a_notebook_is_left_as_it_was(tmp_path):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not json")
    result = make("run", f"NB={broken}", check=False)
    assert result.returncode != 0 and f"make run: {broken}: not valid JSON" in result.stderr
    assert broken.read_text() == "{ not json"
