"""Solutions run green; the release is in sync, stubbed, and fails only where students must write code."""

import filecmp
import json
import os
import subprocess
import sys

import nbformat
import pytest
import torch

from conftest import BIN, ROOT
from notebooks import assignments, errors, execute
from submissions import answer_cells

ASSIGNMENTS = assignments()


def graded_cells(notebook, kind):
    """Code cells with nbgrader's `kind` flag set (written answers are markdown and are graded by hand)."""
    return [c for c in notebook.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get(kind)]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_runs_top_to_bottom_with_every_check_passing(assignment):
    notebook = execute(ROOT / "solutions" / assignment / f"{assignment}.ipynb", env={"COURSE_FAST": "1"}, allow_errors=True)
    assert errors(notebook) == {}
    for cell in graded_cells(notebook, "grade"):
        printed = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert "✓" in printed, f"test cell {cell.id} ran no check"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_is_in_sync_with_solutions(assignment, tmp_path):
    """Regenerating the release with nbgrader gives exactly the committed notebooks/ folder."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GRADING_OUTPUT": str(tmp_path)}
    command = [str(BIN / "nbgrader"), "generate_assignment", assignment, "--force", "--log-level=WARN",
               f"--CourseDirectory.release_directory={tmp_path / 'release'}"]
    subprocess.run(command, cwd=ROOT / "autograder", env=env, check=True, capture_output=True)
    comparison = filecmp.dircmp(tmp_path / "release" / assignment, ROOT / "notebooks" / assignment)
    assert comparison.left_only == comparison.right_only == []
    for name in comparison.common_files:
        assert (tmp_path / "release" / assignment / name).read_bytes() == (ROOT / "notebooks" / assignment / name).read_bytes(), (
            f"notebooks/{assignment}/{name} is out of date with solutions/: run make release"
        )


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_hides_solutions_and_stubs_every_answer(assignment):
    path = ROOT / "notebooks" / assignment / f"{assignment}.ipynb"
    text = path.read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "check_hidden"):
        assert marker not in text
    notebook = nbformat.read(path, as_version=4)
    answers = answer_cells(notebook)
    assert answers, "the release has no answer cells"
    for grade_id, cell in answers.items():
        if cell.cell_type == "markdown":
            assert cell.source.strip() == "YOUR ANSWER HERE", grade_id
        else:
            assert "# YOUR CODE HERE\n" in cell.source and "raise NotImplementedError()" in cell.source, grade_id


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_runs_from_its_folder_and_fails_only_on_the_stubs(assignment):
    """Students' starting point: `import shared` works, every check fails with NotImplementedError."""
    notebook = execute(ROOT / "notebooks" / assignment / f"{assignment}.ipynb", env={"COURSE_FAST": "1"}, allow_errors=True)
    failed = errors(notebook)
    tests = {c.id for c in graded_cells(notebook, "grade")}
    assert tests <= set(failed), f"checks that passed on an empty answer: {tests - set(failed)}"
    for cell_id, error in failed.items():
        assert error.startswith("NotImplementedError"), f"{cell_id}: {error}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_recorded_references_match_a_fresh_recording(assignment, tmp_path):
    """`make references` is up to date: re-recording gives the same names, values and cell map."""
    from record_references import record

    record(assignment, root=tmp_path)
    for folder in ("shared/references", "autograder/references"):
        fresh = torch.load(tmp_path / folder / f"{assignment}.pt", weights_only=True)
        committed = torch.load(ROOT / folder / f"{assignment}.pt", weights_only=True)
        assert sorted(fresh) == sorted(committed), f"{folder}/{assignment}.pt is stale: run make references"
        for name in fresh:
            torch.testing.assert_close(fresh[name], committed[name], rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
        mistakes_file = f"{folder}/{assignment}.mistakes.pt"
        assert (tmp_path / mistakes_file).exists() == (ROOT / mistakes_file).exists(), f"{mistakes_file} is stale: run make references"
        if (ROOT / mistakes_file).exists():
            fresh = torch.load(tmp_path / mistakes_file, weights_only=True)
            committed = torch.load(ROOT / mistakes_file, weights_only=True)
            texts = lambda recorded: {n: [(e["id"], e["title"], e["hint"]) for e in v] for n, v in recorded.items()}  # noqa: E731
            assert texts(fresh) == texts(committed), f"{mistakes_file} is stale: run make references"
            values = lambda recorded: {n: [e["value"] for e in v] for n, v in recorded.items()}  # noqa: E731
            torch.testing.assert_close(values(fresh), values(committed), rtol=1e-12, atol=1e-12, equal_nan=True)
    cell_map = f"autograder/references/{assignment}.cells.json"
    assert (tmp_path / cell_map).read_text() == (ROOT / cell_map).read_text(), f"{cell_map} is stale: run make references"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_graded_code_cell_is_scored_by_hidden_checks(assignment):
    """Hidden checks are compared outside the student's kernel, so each test cell needs some."""
    notebook = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    cells = json.loads((ROOT / "autograder/references" / f"{assignment}.cells.json").read_text())
    hidden = torch.load(ROOT / "autograder/references" / f"{assignment}.pt", weights_only=True)
    assert sorted(cells) == sorted(c.metadata["nbgrader"]["grade_id"] for c in graded_cells(notebook, "grade"))
    assert all(cells.values()) and sorted(name for names in cells.values() for name in names) == sorted(hidden)
    assert all(set(entry) == {"value", "rtol", "atol"} for entry in hidden.values())


def test_hidden_references_are_not_copies_of_public_ones():
    """Hidden checks use other inputs: no hidden value equals a public one, so returning a
    visible answer cannot pass a hidden check."""
    from shared.checks import flatten

    def same(a, b):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        return not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and a == b

    def same_value(a, b):
        a, b = flatten(a), flatten(b)
        return list(a) == list(b) and all(same(a[path], b[path]) for path in a)

    for assignment in ASSIGNMENTS:
        public = torch.load(ROOT / "shared/references" / f"{assignment}.pt", weights_only=True)
        hidden = torch.load(ROOT / "autograder/references" / f"{assignment}.pt", weights_only=True)
        assert len(hidden) >= len(public) and set(public).isdisjoint(hidden)
        for name, entry in hidden.items():
            assert not any(same_value(entry["value"], value) for value in public.values()), f"{assignment}: {name}"
