"""Feedback that names the mistake: every entry of autograder/mistakes/, made in the solution, fails as it expects.

The catalogues are the one list of wrong answers the checks must catch: most are named by their check (and
recorded by `make references`); the others expect the check's generic message (tools/notebooks.py, EXPECTATIONS).
"""

import functools

import matplotlib.pyplot as plt
import nbformat
import pytest
import torch

from conftest import ROOT
import notebooks
from notebooks import EXPECTATIONS, MISTAKES, SOLUTIONS, assignments, load_mistakes, mistake_segment, mistakes, with_mistake
from shared.checks import CheckFailed, Checker, compare, matching_mistake, mistake_message

CATALOGUED = [a for a in assignments() if mistakes(a)]
TEST_CELLS = {a: {c.id for c in nbformat.read(SOLUTIONS / a / f"{a}.ipynb", as_version=4).cells
                  if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"} for a in CATALOGUED}  # id = grade_id


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


ENTRY = 'id = "m"\ncell = "c"\nfind = "a"\nreplace = ""\ntitle = "t"\nhint = "h"\n'


def catalogue_file(tmp_path, *entries: str):
    path = tmp_path / "99_example.toml"
    path.write_text("".join(f"[[mistake]]\n{entry}\n" for entry in entries))
    return path


def test_an_entry_in_the_plain_format_is_a_named_recorded_mistake(tmp_path):
    (mistake,) = load_mistakes(catalogue_file(tmp_path, ENTRY + 'tests = ["test_c"]\n'))
    assert (mistake.expect, mistake.tests, mistake.recorded) == ("named", ("test_c",), True)
    variant = ENTRY.replace('"m"', '"v"') + 'same_as = "m"\n'
    generic = ENTRY.replace('"m"', '"g"') + 'expect = "differs"\n'
    recorded = [m.recorded for m in load_mistakes(catalogue_file(tmp_path, variant, generic, ENTRY))]
    assert recorded == [False, False, True]  # only a named entry of its own is recorded by make references


@pytest.mark.parametrize("extra, problem", [
    ('expected = "differs"\n', "has unknown fields ['expected']"),
    ('expect = "different"\n', "expect = 'different' is none of"),
    ('expect = "fails"\n', "expect = 'fails' needs a `message`"),
    ('same_as = "elsewhere"\n', "same_as = 'elsewhere' names no recorded entry"),
    ('expect = "differs"\nsame_as = "m"\n', "so expect must be 'named'"),
    ('tests = ["test_c"]\ncheck = "test_d"\n', "check 'test_d' is not among its tests"),
])
def test_a_malformed_entry_is_refused_with_its_file_and_id_named(tmp_path, extra, problem):
    with pytest.raises(ValueError) as refused:
        load_mistakes(catalogue_file(tmp_path, ENTRY.replace('"m"', '"bad"') + extra))
    assert str(refused.value).startswith("99_example.toml: mistake 'bad'") and problem in str(refused.value)


def test_an_entry_without_a_required_field_or_a_unique_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"99_example.toml: mistake 'm' lacks \['hint'\]"):
        load_mistakes(catalogue_file(tmp_path, ENTRY.replace('hint = "h"\n', "")))
    with pytest.raises(ValueError, match=r"99_example.toml: mistake number 1 lacks \['id'\]"):
        load_mistakes(catalogue_file(tmp_path, ENTRY.replace('id = "m"\n', "")))
    with pytest.raises(ValueError, match=r"99_example.toml: mistake ids \['m'\] appear more than once"):
        load_mistakes(catalogue_file(tmp_path, ENTRY, ENTRY))


@pytest.mark.parametrize("assignment", CATALOGUED)
def test_every_mistake_is_recorded_for_some_check(assignment):
    recorded = set()
    for folder in ("shared/references", "autograder/references"):
        for entries in torch.load(ROOT / folder / f"{assignment}.mistakes.pt", weights_only=True).values():
            recorded.update(entry["id"] for entry in entries)
    assert recorded == {m.id for m in mistakes(assignment) if m.recorded}, "run make references"


def first_failing_check(assignment: str, cells: list[str], replace: dict[str, str], namespace: dict) -> tuple[str, str]:
    """(grade_id, message) of the first test cell among `cells` that raises (or of the edited cell, if it raises).

    ('', 'no test cell failed') if none does. As under nbgrader, a cell that raises does not stop the ones after it."""
    for cell_id in cells:
        try:
            notebooks.run_cells(assignment, [cell_id], replace=replace, hidden=True, namespace=namespace)
        except Exception as error:  # noqa: BLE001 - a wrong answer may raise anything
            if cell_id in TEST_CELLS[assignment] or cell_id in replace:
                return cell_id, (str(error) if isinstance(error, AssertionError) else f"{type(error).__name__}: {error}")
    return "", "no test cell failed"


@functools.cache
def outcomes(assignment: str) -> dict[str, tuple[str, str]]:
    """{mistake id: (first failing test cell, its message)}: the solution runs once, cell by cell, in one namespace
    (this process, hidden checks included); each mistake runs on a copy of it, just before its cell would."""
    notebook = nbformat.read(SOLUTIONS / assignment / f"{assignment}.ipynb", as_version=4)
    catalogue = mistakes(assignment)
    segments = {m.id: mistake_segment(notebook, m) for m in catalogue}
    end = max(followers[-1] for _, followers in segments.values())
    namespace: dict = {}
    found = {}
    for index, cell in enumerate(notebook.cells[: end + 1]):
        if cell.cell_type != "code":
            continue
        for mistake in (m for m in catalogue if segments[m.id][0] == index):
            torch.manual_seed(0)  # sampling without the notebook's generator draws from the global one
            cells = [cell.id] + [notebook.cells[i].id for i in segments[mistake.id][1]]
            found[mistake.id] = first_failing_check(assignment, cells, {cell.id: with_mistake(cell.source, mistake)}, dict(namespace))
        notebooks.run_cells(assignment, [cell.id], hidden=True, namespace=namespace)
    plt.close("all")
    return found


ENTRIES = [pytest.param(a, m, id=f"{a}:{m.id}") for a in CATALOGUED for m in mistakes(a)]


@pytest.mark.parametrize("assignment, mistake", ENTRIES)
def test_making_each_mistake_fails_its_first_check_as_the_catalogue_expects(assignment, mistake):
    """Each entry, made in the solution: the first test cell that fails says what its `expect` promises."""
    cell, message = outcomes(assignment)[mistake.id]
    assert cell, f"{mistake.id}: no test cell failed"
    first_line = message.splitlines()[0] if message else ""
    if mistake.check:
        assert cell == mistake.check, f"{mistake.id}: {cell} failed first, not {mistake.check}:\n{message}"
    assert message.startswith(mistake.message), message
    if mistake.expect == "named":  # the message names it, says what is right, then shows the comparison
        named = next(m for m in mistakes(assignment) if m.id == (mistake.same_as or mistake.id))
        assert EXPECTATIONS["named"].format(title=named.title) in first_line, message
        assert named.hint in message and "What was compared" in message, message
    else:
        assert first_line.endswith(EXPECTATIONS[mistake.expect]) and "known mistake" not in message, message


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
    from scoring import hidden_check_verdicts

    hidden_mistakes = torch.load(ROOT / "autograder/references/07_gpt.mistakes.pt", weights_only=True)
    hidden = torch.load(ROOT / "autograder/references/07_gpt.pt", weights_only=True)
    name, entries = next((n, e) for n, e in hidden_mistakes.items() if n.startswith("gpt/"))
    for index, (other, reference) in enumerate(hidden.items()):
        value = entries[0]["value"] if other == name else reference["value"]
        torch.save({"name": other, "value": value}, tmp_path / f"{index:05d}.pt")
    failures = [note for note in hidden_check_verdicts("07_gpt", tmp_path).values() if note]
    assert failures == [f"hidden check '{name}': " + mistake_message(name, entries[0]).removeprefix(f"Check '{name}': ").replace("\n  ", " ").strip()]
