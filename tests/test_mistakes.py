"""Feedback that names the mistake: every catalogued mistake, made in the solution, is named by its check."""

import re

import nbformat
import pytest
import torch

from conftest import ROOT
from notebooks import MISTAKES, SOLUTIONS, assignments, mistake_segment, mistakes, run_mistakes, with_mistake
from shared.checks import CheckFailed, Checker, compare, matching_mistake, mistake_message

CATALOGUED = [a for a in assignments() if mistakes(a)]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_catalogues_exist_for_the_graded_notebooks():
    assert set(CATALOGUED) >= {"07_gpt"}
    assert sorted(p.stem for p in MISTAKES.glob("*.toml")) == CATALOGUED, "a catalogue names an assignment that does not exist"


@pytest.mark.parametrize("assignment", CATALOGUED)
def test_each_edit_applies_to_its_cell_once_and_has_tests(assignment):
    notebook = nbformat.read(SOLUTIONS / assignment / f"{assignment}.ipynb", as_version=4)
    sources = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in notebook.cells}
    catalogue = mistakes(assignment)
    assert len({m.id for m in catalogue}) == len(catalogue), "mistake ids must be unique"
    for mistake in catalogue:
        assert with_mistake(sources[mistake.cell], mistake) != sources[mistake.cell]
        start, followers = mistake_segment(notebook, mistake)
        assert followers, mistake.id
        assert mistake.title and mistake.hint and not mistake.title.endswith(".")


@pytest.mark.parametrize("assignment", CATALOGUED)
def test_every_mistake_is_recorded_for_some_check(assignment):
    recorded = set()
    for folder in ("shared/references", "autograder/references"):
        for entries in torch.load(ROOT / folder / f"{assignment}.mistakes.pt", weights_only=True).values():
            recorded.update(entry["id"] for entry in entries)
    assert recorded == {m.id for m in mistakes(assignment)}, "run make references"


@pytest.mark.parametrize("assignment", CATALOGUED)
def test_making_each_mistake_fails_its_first_check_with_the_mistake_named(assignment):
    """Run the solution with each mistake made: the first test cell that fails names that mistake."""
    messages = {}

    def first_failure(client, mistake, cells):
        for cell in cells:
            if not cell.metadata.get("nbgrader", {}).get("grade"):
                continue
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if errors:
                messages[mistake.id] = ANSI.sub("", errors[0]["evalue"])
                return
        messages[mistake.id] = "no test cell failed"

    catalogue = run_mistakes(assignment, env={"COURSE_FAST": "1"}, after=first_failure)
    unnamed = {m.id: messages[m.id] for m in catalogue if f"known mistake: {m.title}." not in messages[m.id]}
    assert not unnamed, "\n\n".join(f"{key}:\n{value}" for key, value in unnamed.items())
    for mistake in catalogue:  # the message says what is right, then shows the comparison
        assert mistake.hint in messages[mistake.id] and "What was compared" in messages[mistake.id]


def test_an_output_that_matches_no_mistake_gets_the_generic_message():
    checker = Checker("07_gpt")
    reference = torch.load(ROOT / "shared/references/07_gpt.pt", weights_only=True)["layer_norm"]
    with pytest.raises(CheckFailed) as failure:
        checker.check("layer_norm", reference + 1e-3, rtol=1e-6, atol=1e-9)
    assert "known mistake" not in str(failure.value) and "differs from the expected values" in str(failure.value)
    checker.check("layer_norm", reference.clone(), rtol=1e-6, atol=1e-9)  # the right answer still passes


def test_a_mistake_that_gives_nan_is_still_recognised():
    mistake = {"id": "nan", "title": "t", "hint": "h", "value": torch.tensor([1.0, float("nan")])}
    assert matching_mistake(torch.tensor([1.0, float("nan")]), [mistake], 1e-6, 1e-9) is mistake
    assert matching_mistake(torch.tensor([1.0, 2.0]), [mistake], 1e-6, 1e-9) is None
    with pytest.raises(CheckFailed):  # ordinary checks never accept NaN
        compare("x", torch.tensor([float("nan")]), torch.tensor([float("nan")]), rtol=0, atol=0)


def test_hidden_checks_name_the_mistake_in_the_grade_note(tmp_path):
    """The grader compares hidden values outside the kernel; a value equal to a mistake's output is named."""
    import sys

    sys.path.insert(0, str(ROOT / "autograder"))
    from grade import hidden_check_verdicts

    hidden_mistakes = torch.load(ROOT / "autograder/references/07_gpt.mistakes.pt", weights_only=True)
    hidden = torch.load(ROOT / "autograder/references/07_gpt.pt", weights_only=True)
    name, entries = next((n, e) for n, e in hidden_mistakes.items() if n.startswith("gpt/"))
    for index, (other, reference) in enumerate(hidden.items()):
        value = entries[0]["value"] if other == name else reference["value"]
        torch.save({"name": other, "value": value}, tmp_path / f"{index:05d}.pt")
    failures = [note for note in hidden_check_verdicts("07_gpt", tmp_path).values() if note]
    assert failures == [f"hidden check '{name}': " + mistake_message(name, entries[0]).removeprefix(f"Check '{name}': ").replace("\n  ", " ").strip()]
