"""Execute each solution notebook and record every checked output as a reference tensor.

Public references go to shared/references/<assignment>.pt (shipped to students), hidden ones to
autograder/references/<assignment>.pt (instructors only), and autograder/references/<assignment>.cells.json
says which test cell records which hidden check, so the grader can score each cell from outside
the student's kernel.

Then each mistake catalogued in autograder/mistakes/<assignment>.toml is run (its edited cell and the
cells down to its tests), and what each check outputs under it goes to <assignment>.mistakes.pt beside
the public and hidden references, so a failing check can name the mistake. A mistake whose edit
changes no check's output is an error: the catalogue would promise a message no student can get.
Usage: python tools/record_references.py [assignment ...]   (make references [ASSIGNMENT=NN_name,...])
"""

import argparse
import json
import shutil
import sys
import time

import torch

from shared import grading_contract as contract
from notebooks import ROOT, assignments, errors, execute, run_in_kernel, run_mistakes


def record(assignment: str, root=ROOT) -> None:
    """Record `assignment`'s references under `root` (the repository, or a scratch folder in tests)."""
    hidden_file = root / "autograder/references" / f"{assignment}.pt"
    for path in (root / "shared/references" / f"{assignment}.pt", hidden_file):
        path.unlink(missing_ok=True)
    cells: dict[str, list[str]] = {}
    seen: set[str] = set()

    def note_hidden_checks(cell, **_):
        """Attribute the hidden checks that appeared while this cell ran to its grade_id."""
        names = set(torch.load(hidden_file, weights_only=True)) if hidden_file.exists() else set()
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if names - seen:
            if not cell.metadata.get("nbgrader", {}).get("grade"):
                raise SystemExit(f"{assignment}: cell {grade_id or cell.get('id')} records hidden checks but is not a graded test cell")
            cells[grade_id] = sorted(names - seen)
            seen.update(names)

    started = time.monotonic()
    notebook = execute(
        ROOT / "solutions" / assignment / f"{assignment}.ipynb",
        env={contract.RECORD_REFERENCES: str(root), contract.FAST: "1"},
        allow_errors=True,
        on_cell_executed=note_hidden_checks,
    )
    failed = errors(notebook)
    if failed:
        raise SystemExit(f"{assignment}: the solution notebook failed while recording:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items()))
    (root / "autograder/references" / f"{assignment}.cells.json").write_text(json.dumps(cells, indent=1) + "\n")
    record_mistakes(assignment, root)
    print(f"{assignment}: references recorded in {time.monotonic() - started:.1f} s")


# Code the recording kernel runs around each mistake: the notebook's checker records that mistake's outputs, then
# goes back to recording references (into the scratch folder).
RECORD_MISTAKE = "import shared.checks as _checks; _course_mode, checker.mode = checker.mode, _checks.RecordMistake(__import__('pathlib').Path({root!r}), {mistake!r})"
RECORD_REFERENCES = "checker.mode = _course_mode"


def record_mistakes(assignment: str, root=ROOT) -> None:
    """Record what the checks output under each catalogued mistake that changes them."""
    from shared.checks import CheckFailed, compare

    targets = {"public": root / "shared/references" / f"{assignment}.mistakes.pt",
               "hidden": root / "autograder/references" / f"{assignment}.mistakes.pt"}
    for path in targets.values():
        path.unlink(missing_ok=True)
    # The checks of the cells around the mistakes record again too: into a scratch folder, thrown away.
    scratch = root / ".mistakes-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    catalogue = run_mistakes(
        assignment, env={contract.RECORD_REFERENCES: str(scratch), contract.FAST: "1"},
        before=lambda client, mistake: run_in_kernel(client, RECORD_MISTAKE.format(root=str(scratch), mistake=mistake.id)),
        after=lambda client, mistake, cells: run_in_kernel(client, RECORD_REFERENCES),
    )
    if not catalogue:
        return
    raw = scratch / "mistakes-recorded" / f"{assignment}.pt"
    recorded = torch.load(raw, weights_only=True) if raw.exists() else {}
    shutil.rmtree(scratch, ignore_errors=True)
    references = {"public": torch.load(root / "shared/references" / f"{assignment}.pt", weights_only=True),
                  "hidden": torch.load(root / "autograder/references" / f"{assignment}.pt", weights_only=True)}
    found: dict[str, dict[str, list[dict]]] = {"public": {}, "hidden": {}}
    for mistake in catalogue:
        changed = 0
        for scope, outputs in recorded.get(mistake.id, {}).items():
            for name, output in outputs.items():
                correct = references[scope][name]
                try:
                    compare(name, output["value"], correct["value"] if scope == "hidden" else correct, rtol=output["rtol"], atol=output["atol"])
                    continue  # this check cannot tell the mistake from the right answer
                except CheckFailed:
                    changed += 1
                entry = {"id": mistake.id, "title": mistake.title, "hint": mistake.hint, "value": output["value"]}
                found[scope].setdefault(name, []).append(entry)
        if not changed:
            raise SystemExit(f"{assignment}: mistake '{mistake.id}' changes no check's output: fix or drop it in autograder/mistakes/{assignment}.toml")
    for scope, path in targets.items():
        torch.save(found[scope], path)
    print(f"{assignment}: {len(catalogue)} catalogued mistakes recorded")


def main(argv: list[str] | None = None) -> None:
    known = assignments()
    parser = argparse.ArgumentParser(description="Execute solution notebooks and record their public and hidden references "
                                                 "and the outputs of their catalogued mistakes (make references).")
    parser.add_argument("assignments", nargs="*", metavar="assignment", help=f"which to record (default: all: {', '.join(known)})")
    chosen = parser.parse_args(argv).assignments
    unknown = [name for name in chosen if name not in known]
    if unknown:
        parser.error(f"no solution notebook for {', '.join(unknown)}; the assignments are {', '.join(known)}")
    for name in chosen or known:
        record(name)


if __name__ == "__main__":
    main()
