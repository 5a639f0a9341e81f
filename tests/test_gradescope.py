"""`make gradescope`: the zip in Gradescope's autograder format, unzipped into a temporary /autograder and run there.

Each test runs the zip's own `run_autograder` with GRADESCOPE_ROOT in place of /autograder, on 04 (25 points graded by
the autograder, 5 by hand): the solution, the blank release, a catalogued mistake (graded as make grade grades it),
and an upload without the notebook. The environment is this one (course/.venv links to it); setup.sh, which
installs it on Gradescope's image, is only checked for syntax here (it needs the internet).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import nbformat
import pytest

from conftest import ROOT, make
from notebooks import mistakes
from submissions import named, read_csv, release_notebook, solution_sources, solved, submit

ASSIGNMENT = "04_attention"
HAND_GRADED = {"shapes_answer": 5.0}

# Gradescope's results.json, as its autograder documentation specifies it (the fields this course writes).
RESULTS_SCHEMA = {
    "type": "object",
    "required": ["score", "tests"],
    "properties": {
        "score": {"type": "number", "minimum": 0},
        "execution_time": {"type": "number"},
        "output": {"type": "string"},
        "stdout_visibility": {"enum": ["hidden", "after_due_date", "after_published", "visible"]},
        "extra_data": {"type": "object"},
        "tests": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "score", "max_score", "output", "visibility"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "score": {"type": "number", "minimum": 0},
                "max_score": {"type": "number", "minimum": 0},
                "output": {"type": "string"},
                "visibility": {"enum": ["hidden", "after_due_date", "after_published", "visible"]},
            },
            "additionalProperties": False,
        }},
    },
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def autograder(tmp_path_factory) -> Path:
    """/autograder as Gradescope lays it out: the zip unzipped into source/, with this environment as course/.venv."""
    make("gradescope", f"ASSIGNMENT={ASSIGNMENT}")
    archive = ROOT / "dist" / "gradescope" / f"{ASSIGNMENT}.zip"
    root = tmp_path_factory.mktemp("gradescope") / "autograder"
    with zipfile.ZipFile(archive) as zip_file:
        zip_file.extractall(root / "source")
        for info in zip_file.infolist():  # as unzip does: the mode bits the zip records
            mode = info.external_attr >> 16
            if mode:
                os.chmod(root / "source" / info.filename, mode)
    (root / "source" / "course" / ".venv").symlink_to(Path(sys.prefix))
    os.chmod(root.parent, 0o755)  # graded kernels run under user ids of their own
    return root


def run_autograder(root: Path, files: dict[str, nbformat.NotebookNode | str], path: str | None = None) -> dict:
    """Upload `files` as a submission, run run_autograder as Gradescope does (PATH: `path`), and return results.json."""
    for folder in ("submission", "results"):
        shutil.rmtree(root / folder, ignore_errors=True)
        (root / folder).mkdir(parents=True)
    for name, content in files.items():
        upload = root / "submission" / name
        if isinstance(content, str):
            upload.write_text(content)
        else:
            nbformat.write(content, upload)
    result = subprocess.run([str(root / "source" / "run_autograder")], env={**os.environ, "GRADESCOPE_ROOT": str(root), "PATH": path or os.environ["PATH"]},
                            capture_output=True, text=True, timeout=900)
    assert (root / "results" / "results.json").is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((root / "results" / "results.json").read_text())
    jsonschema.validate(results, RESULTS_SCHEMA)
    return results


def by_name(results: dict) -> dict[str, dict]:
    return {test["name"]: test for test in results["tests"]}


def test_zip_has_gradescopes_layout_and_no_solution(autograder):
    source = autograder / "source"
    assert os.access(source / "run_autograder", os.X_OK) and os.access(source / "setup.sh", os.X_OK)
    assert subprocess.run(["bash", "-n", str(source / "setup.sh")]).returncode == 0
    assert "download.pytorch.org/whl/cpu" in (source / "setup.sh").read_text()  # not PyPI's CUDA build
    course = source / "course"
    assert sorted(p.name for p in (course / "solutions").iterdir()) == [ASSIGNMENT]
    assert sorted(p.name for p in (course / "autograder" / "references").iterdir()) == [
        f"{ASSIGNMENT}.cells.json", f"{ASSIGNMENT}.mistakes.pt", f"{ASSIGNMENT}.pt"]
    assert not (course / "shared" / "attention.py").exists()  # 04's own answers, importable by the graded kernel
    copy = nbformat.read(course / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    text = nbformat.writes(copy)
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" in text  # the hidden tests are what it grades with
    for grade_id, answer in solution_sources(ASSIGNMENT).items():
        cell = next(c for c in copy.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
        if cell.cell_type == "code":
            assert "raise NotImplementedError()" in cell.source
            body = [line for line in answer.splitlines() if line.strip() and line.strip() not in cell.source]
            assert body, f"{grade_id}: the grading copy holds its answer"
    from student_bundle import answers_in_bundle

    assert answers_in_bundle(course, [ASSIGNMENT]) == []


def test_solution_gets_every_autograded_point_and_written_answers_wait_for_a_grader(autograder):
    results = run_autograder(autograder, {f"{ASSIGNMENT}.ipynb": solved(ASSIGNMENT)})
    tests = by_name(results)
    assert results["score"] == 25.0
    assert results["output"] == f"Graded {ASSIGNMENT}: 25 of 25 autograded points; 5 more points for written answers, graded by hand."
    for name, test in tests.items():
        if name in HAND_GRADED:
            assert (test["score"], test["max_score"]) == (0.0, HAND_GRADED[name])
            assert "graded by hand" in test["output"]
        else:
            assert test["score"] == test["max_score"] > 0, test
            assert test["output"].startswith("Passed.")
    assert sum(t["max_score"] for t in tests.values()) == 30.0
    assert all(t["visibility"] == "visible" for t in tests.values())


def test_blank_release_scores_zero(autograder):
    results = run_autograder(autograder, {f"{ASSIGNMENT}.ipynb": release_notebook(ASSIGNMENT)})
    assert results["score"] == 0.0
    assert any("NotImplementedError" in test["output"] for test in results["tests"])


def test_a_mistake_loses_exactly_the_cells_make_grade_takes_and_is_named(autograder, tmp_path):
    mistake = next(m for m in mistakes(ASSIGNMENT) if m.id == "missing_scale")
    wrong = solved(ASSIGNMENT, {mistake.cell: solution_sources(ASSIGNMENT)[mistake.cell].replace(mistake.find, mistake.replace)})
    results = run_autograder(autograder, {"my work.ipynb": wrong})  # any name, when it is the only notebook
    submit(tmp_path / "submitted", "ada", ASSIGNMENT, wrong)
    make("grade", f"SUBMISSIONS={tmp_path / 'submitted'}", f"GRADING_OUTPUT={tmp_path / 'graded'}", "WORKERS=1")
    local = {row["grade_id"]: float(row["score"]) for row in read_csv(tmp_path / "graded" / "grades_by_test.csv")}
    tests = by_name(results)
    assert {name: test["score"] for name, test in tests.items()} == local
    lost = [name for name, test in tests.items() if test["score"] < test["max_score"] and name not in HAND_GRADED]
    assert lost and all(tests[name]["output"].count(named(ASSIGNMENT, mistake.id)) == 1 for name in lost)  # said once
    assert results["score"] == sum(local.values())


def test_an_upload_without_the_notebook_says_what_to_upload(autograder):
    results = run_autograder(autograder, {"notes.txt": "I forgot the notebook"})
    assert results["score"] == 0.0 and results["tests"] == []
    assert f"Upload your notebook {ASSIGNMENT}.ipynb" in results["output"]
    two = run_autograder(autograder, {"a.ipynb": release_notebook(ASSIGNMENT), "b.ipynb": release_notebook(ASSIGNMENT)})
    assert "exactly one .ipynb file" in two["output"] and "a.ipynb, b.ipynb" in two["output"]


def test_make_gradescope_names_the_assignment_it_needs():
    result = make("gradescope", check=False)
    assert result.returncode != 0 and "make gradescope ASSIGNMENT=NN_name" in result.stdout + result.stderr
    result = make("gradescope", "ASSIGNMENT=4_attention", check=False)
    assert result.returncode != 0 and "Unknown assignment 4_attention" in result.stdout + result.stderr


def test_a_container_where_bwrap_cannot_sandbox_still_grades_and_says_so(autograder, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "bwrap").write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n")
    (fake / "bwrap").chmod(0o755)
    results = run_autograder(autograder, {f"{ASSIGNMENT}.ipynb": solved(ASSIGNMENT)}, path=f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert results["score"] == 25.0
    assert results["extra_data"]["isolation"].startswith("Isolation: none")
