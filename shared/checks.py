"""Compare outputs with recorded reference values and explain any difference in a student's terms.

A notebook makes one `Checker` for its assignment and calls `checker.check(name, value, ...)`
after each exercise. What a check does is the checker's mode, chosen once, when the checker is made,
from the variables of shared/grading_contract.py that the process starting the kernel set:

* `Compare` (a student's notebook): compare with the reference recorded from the instructor's solution.
  Public references ship with this package (`shared/references/<assignment>.pt`); hidden ones live only
  in the instructor's repository (`autograder/references/<assignment>.pt`).
* `SendHiddenToOutbox` (grading): hidden checks only write their values to an outbox folder, and the
  grader compares them with the hidden references outside the student's kernel.
* `RecordReferences` (`make references`): record each value as the reference.
* `RecordMistake` (`make references`, while a catalogued mistake runs): record what the checks output.

Known mistakes: `make references` also runs each mistake catalogued in autograder/mistakes/ (a small
edit of the solution, e.g. the unbiased variance in LayerNorm) and records what the checks output
then, in <assignment>.mistakes.pt beside the references. When a value fails its check but matches a
recorded mistake's output, the message names that mistake and points to the equation.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from shared import grading_contract as contract

PUBLIC_DIR = Path(__file__).resolve().parent / "references"
HIDDEN_DIR = Path(__file__).resolve().parent.parent / "autograder" / "references"

Leaf = torch.Tensor | int | float | bool
MAX_ROWS_SHOWN = 5


class CheckFailed(AssertionError):
    """A value differs from what was expected; the message says where and by how much."""


def flatten(value: Any, path: str = "output") -> dict[str, Any]:
    """Flatten nested tuples, lists and dicts into {path: leaf}, e.g. {'output["h"]': tensor}."""
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, item in value.items():
            items.update(flatten(item, f"{path}[{key!r}]"))
        return items
    if isinstance(value, (tuple, list)):
        items = {}
        for index, item in enumerate(value):
            items.update(flatten(item, f"{path}[{index}]"))
        return items
    return {path: value}


def _shape(shape: torch.Size) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def _describe(leaf: Any) -> str:
    if isinstance(leaf, torch.Tensor):
        return f"a tensor of shape {_shape(leaf.shape)} and dtype {leaf.dtype}"
    return f"{type(leaf).__name__} {leaf!r}"


def _shape_hint(got: torch.Size, expected: torch.Size) -> str:
    if len(got) == len(expected) and sorted(got) == sorted(expected):
        return "  The same sizes in another order: a transpose or permute is missing or extra.\n"
    if got.numel() == expected.numel():
        return "  The number of elements is right: look at how the result is reshaped or stacked.\n"
    if len(got) != len(expected):
        return "  The number of dimensions differs: check for a missing or extra (un)squeeze or batch dimension.\n"
    return ""


def _all_close(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, equal_nan: bool) -> bool:
    """Whether |got - expected| <= atol + rtol·|expected| everywhere (booleans: equal), for tensors of one shape and dtype.

    The test torch.testing.assert_close makes, without its first-use imports (over half a second per process)."""
    if got.dtype == torch.bool:
        return torch.equal(got, expected)
    return bool(torch.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=equal_nan).all())


def _compare_tensors(label: str, got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, equal_nan: bool = False) -> None:
    if got.shape != expected.shape:
        raise CheckFailed(
            f"{label} has the wrong shape.\n"
            f"  expected shape {_shape(expected.shape)}, got {_shape(got.shape)}\n" + _shape_hint(got.shape, expected.shape)
        )
    if got.dtype != expected.dtype:
        raise CheckFailed(
            f"{label} has the wrong dtype.\n"
            f"  expected {expected.dtype}, got {got.dtype}\n"
            "  Tensors you create (zeros, ones, arange, ...) should take their dtype from the inputs, e.g. dtype=x.dtype.\n"
        )
    if got.layout != torch.strided:
        raise CheckFailed(f"{label} should be a plain (dense) tensor, but its layout is {got.layout}.\n")
    got = got.detach().cpu()
    if _all_close(got, expected, rtol, atol, equal_nan):
        return
    if got.dtype == torch.bool or not (got.is_floating_point() or got.is_complex()):
        wrong = got != expected
        error = (got.long() - expected.long()).abs().double()
    else:
        wrong = ~torch.isclose(got, expected, rtol=rtol, atol=atol)
        error = (got.double() - expected.double()).abs()
        error = torch.where(torch.isnan(error), torch.full_like(error, math.inf), error)
    flat_wrong = wrong.reshape(-1).nonzero().reshape(-1)
    worst = int(torch.argmax(torch.where(wrong, error, torch.zeros_like(error)).reshape(-1)))
    rows = [worst] + [i for i in flat_wrong.tolist()[:MAX_ROWS_SHOWN] if i != worst][: MAX_ROWS_SHOWN - 1]
    table = "\n".join(_row(i, got, expected) for i in rows)
    worst_got, worst_expected = got.reshape(-1)[worst].item(), expected.reshape(-1)[worst].item()
    relative = abs(worst_got - worst_expected) / abs(worst_expected) if worst_expected else math.inf
    problem = "is NaN somewhere" if torch.isnan(got).any() else "differs from the expected values"
    raise CheckFailed(
        f"{label} {problem}.\n"
        f"  shape {_shape(got.shape)}, dtype {got.dtype}; {len(flat_wrong)} of {got.numel()} elements are off\n"
        f"  allowed: |got - expected| <= {atol:g} + {rtol:g} * |expected|\n"
        f"  worst at index {_index(worst, got.shape)}: abs error {abs(worst_got - worst_expected):.3g}, rel error {relative:.3g}\n"
        f"  {'index':<16}{'got':>16}{'expected':>16}\n{table}\n"
    )


def _index(flat: int, shape: torch.Size) -> str:
    index = []
    for size in reversed(shape):
        index.append(flat % size)
        flat //= size
    return "(" + ", ".join(str(i) for i in reversed(index)) + ")"


def _row(flat: int, got: torch.Tensor, expected: torch.Tensor) -> str:
    return f"  {_index(flat, got.shape):<16}{got.reshape(-1)[flat].item():>16.6g}{expected.reshape(-1)[flat].item():>16.6g}"


def _compare_leaf(label: str, got: Any, expected: Leaf, rtol: float, atol: float, equal_nan: bool = False) -> None:
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"{label} should be {_describe(expected)}, but it is {_describe(got)}.\n")
        _compare_tensors(label, got, expected, rtol, atol, equal_nan)
        return
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(expected, bool) or isinstance(expected, int):
        if isinstance(got, float) or got != expected:
            raise CheckFailed(f"{label}: expected exactly {expected!r}, got {got!r}.\n")
        return
    if equal_nan and isinstance(got, float) and math.isnan(got) and math.isnan(expected):
        return
    if not isinstance(got, (int, float)) or not math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
        raise CheckFailed(f"{label}: expected {expected!r} (within {atol:g} + {rtol:g}·|expected|), got {got!r}.\n")


def compare(name: str, got: Any, expected: Any, *, rtol: float, atol: float, equal_nan: bool = False) -> None:
    """Raise CheckFailed, naming the check and the first differing part, unless `got` matches `expected`."""
    __tracebackhide__ = True
    expected_leaves = flatten(expected)
    got_leaves = flatten(got)
    if list(got_leaves) != list(expected_leaves):
        raise CheckFailed(
            f"Check '{name}': the result has the wrong structure.\n"
            f"  expected {_structure(expected)}\n  got      {_structure(got)}\n"
        )
    for path, expected_leaf in expected_leaves.items():
        label = f"Check '{name}': {path}" if len(expected_leaves) > 1 or path != "output" else f"Check '{name}': the output"
        _compare_leaf(label, got_leaves[path], expected_leaf, rtol, atol, equal_nan)


def matching_mistake(got: Any, mistakes: list[dict], rtol: float, atol: float) -> dict | None:
    """The first recorded mistake ({'id', 'title', 'hint', 'value'}) whose output `got` matches, if any."""
    for mistake in mistakes:
        try:
            compare("mistake", got, mistake["value"], rtol=rtol, atol=atol, equal_nan=True)  # some mistakes give NaN
        except CheckFailed:
            continue
        return mistake
    return None


def mistake_message(name: str, mistake: dict) -> str:
    """A failure message that names a known mistake; its first line is what the grade notes show."""
    return f"Check '{name}': the output matches a known mistake: {mistake['title']}.\n  {mistake['hint']}\n"


def _structure(value: Any) -> str:
    leaves = flatten(value)
    if list(leaves) == ["output"]:
        return _describe(value)
    return ", ".join(f"{path} = {_describe(leaf)}" for path, leaf in leaves.items())


def _to_record(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {key: _to_record(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_record(item) for item in value)
    if isinstance(value, (bool, int, float)):
        return value
    raise TypeError(f"cannot record a reference of type {type(value).__name__}")


class Compare:
    """The usual mode: compare each value with its reference and explain any difference."""

    def __init__(self, hidden_dir: Path = HIDDEN_DIR):
        self.hidden_dir = hidden_dir

    def reference_file(self, assignment: str, scope: str) -> Path:
        return (PUBLIC_DIR if scope == "public" else self.hidden_dir) / f"{assignment}.pt"

    def run(self, checker: Checker, scope: str, name: str, value: Any, rtol: float, atol: float) -> None:
        __tracebackhide__ = True
        reference = checker.reference(scope, name)
        if scope == "hidden":
            reference, rtol, atol = reference["value"], reference["rtol"], reference["atol"]
        try:
            compare(name, value, reference, rtol=rtol, atol=atol)
        except CheckFailed as failure:
            mistake = matching_mistake(value, checker.known_mistakes(scope, name), rtol, atol)
            if mistake is None:
                raise
            raise CheckFailed(mistake_message(name, mistake) + "  What was compared:\n  " + str(failure).replace("\n", "\n  ").rstrip() + "\n") from None
        print(f"✓ {name}: matches the reference")


class SendHiddenToOutbox(Compare):
    """While grading (the second pass): hidden checks only send their values to `outbox`; the grader scores them."""

    def __init__(self, outbox: Path, hidden_dir: Path = HIDDEN_DIR):
        super().__init__(hidden_dir)
        self.outbox, self.sent = outbox, 0

    def run(self, checker: Checker, scope: str, name: str, value: Any, rtol: float, atol: float) -> None:
        __tracebackhide__ = True
        if scope == "public":
            return super().run(checker, scope, name, value, rtol, atol)
        self.sent += 1
        try:
            message = contract.outbox_message(name, _to_record(value))
        except TypeError:
            message = contract.outbox_message(name, error=f"the result is {_describe(value)}, not a tensor, a number or a tuple/dict of them")
        torch.save(message, contract.outbox_file(self.outbox, self.sent))
        print(f"hidden check '{name}' recorded for grading")


class RecordReferences:
    """make references: record each value as the reference, under `root`/shared/references and `root`/autograder/references."""

    def __init__(self, root: Path):
        self.root = root
        self.recorded: dict[str, dict[str, Any]] = {"public": {}, "hidden": {}}

    def reference_file(self, assignment: str, scope: str) -> Path:
        folder = Path("shared/references") if scope == "public" else Path("autograder/references")
        return self.root / folder / f"{assignment}.pt"

    def run(self, checker: Checker, scope: str, name: str, value: Any, rtol: float, atol: float) -> None:
        # Hidden references keep their tolerances: the grader compares outside the student's kernel.
        value = _to_record(value)
        self.recorded[scope][name] = {"value": value, "rtol": rtol, "atol": atol} if scope == "hidden" else value
        path = self.reference_file(checker.assignment, scope)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save(self.recorded[scope], partial)
        partial.replace(path)
        print(f"recorded {scope} reference '{name}'")


class RecordMistake(RecordReferences):
    """make references, while a catalogued mistake runs: keep what each check outputs as that mistake's output."""

    def __init__(self, root: Path, mistake: str):
        super().__init__(root)
        self.mistake = mistake

    def run(self, checker: Checker, scope: str, name: str, value: Any, rtol: float, atol: float) -> None:
        path = self.root / "mistakes-recorded" / f"{checker.assignment}.pt"
        recorded = torch.load(path, weights_only=True) if path.exists() else {}
        try:
            entry = {"value": _to_record(value), "rtol": rtol, "atol": atol}
        except TypeError:
            return
        recorded.setdefault(self.mistake, {}).setdefault(scope, {})[name] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(recorded, path)
        print(f"recorded the output of mistake '{self.mistake}' for {scope} check '{name}'")


Mode = Compare | SendHiddenToOutbox | RecordReferences | RecordMistake


def mode_from_environment(environ: dict[str, str] | None = None) -> Mode:
    """The mode the process that started this kernel asked for (see shared/grading_contract.py): compare by default."""
    environ = os.environ if environ is None else environ
    hidden_dir = Path(environ.get(contract.HIDDEN_REFERENCES) or HIDDEN_DIR)
    if environ.get(contract.RECORD_REFERENCES):
        return RecordReferences(Path(environ[contract.RECORD_REFERENCES]))
    if environ.get(contract.OUTBOX):
        return SendHiddenToOutbox(Path(environ[contract.OUTBOX]), hidden_dir)
    return Compare(hidden_dir)


class Checker:
    """Checks one assignment's outputs against its public and hidden reference files, in one mode (see Mode)."""

    def __init__(self, assignment: str, mode: Mode | None = None):
        self.assignment = assignment
        self.mode = mode_from_environment() if mode is None else mode
        self._loaded: dict[str, dict[str, Any]] = {}
        self._mistakes: dict[str, dict[str, list[dict]]] = {}

    def reference(self, scope: str, name: str) -> Any:
        """The recorded reference of check `name` ("public" or "hidden" scope); a readable CheckFailed if there is none."""
        if scope not in self._loaded:
            path = self.mode.reference_file(self.assignment, scope)
            if not path.exists():
                if scope == "hidden":
                    raise CheckFailed(f"Hidden checks for '{self.assignment}' run only on the grading machine ({path} is missing).\n")
                raise CheckFailed(
                    f"The reference file for '{self.assignment}' is missing ({path}).\n"
                    "  Reinstall the course package (make setup) or ask your instructor.\n"
                )
            self._loaded[scope] = torch.load(path, weights_only=True)
        references = self._loaded[scope]
        if name not in references:
            raise CheckFailed(f"No reference is recorded for check '{name}' of '{self.assignment}': instructors, run `make references`.\n")
        return references[name]

    def known_mistakes(self, scope: str, name: str) -> list[dict]:
        """The catalogued mistakes recorded for check `name`: [{"id", "title", "hint", "value"}]."""
        if scope not in self._mistakes:
            path = self.mode.reference_file(self.assignment, scope).with_suffix(".mistakes.pt")
            self._mistakes[scope] = torch.load(path, weights_only=True) if path.exists() else {}
        return self._mistakes[scope].get(name, [])

    def _run(self, scope: str, name: str, value: Any, rtol: float, atol: float) -> None:
        __tracebackhide__ = True
        self.mode.run(self, scope, name, value, rtol, atol)

    def check(self, name: str, value: Any, *, rtol: float, atol: float) -> None:
        """Compare `value` (tensor, number, or tuple/dict of them) with the public reference `name`."""
        __tracebackhide__ = True
        self._run("public", name, value, rtol, atol)

    def check_hidden(self, name: str, value: Any, *, rtol: float, atol: float) -> None:
        """Compare `value` with the hidden reference `name` (available only when grading)."""
        __tracebackhide__ = True
        self._run("hidden", name, value, rtol, atol)
