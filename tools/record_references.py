"""Execute each solution notebook and record every checked output as a reference tensor.

Public references go to shared/references/<assignment>.pt (shipped to students), hidden ones to
autograder/references/<assignment>.pt (instructors only), and autograder/references/<assignment>.cells.json
says which test cell records which hidden check, so the grader can score each cell from outside
the student's kernel. Usage: python tools/record_references.py [assignment ...]
"""

import json
import sys
import time

import torch

from notebooks import ROOT, assignments, errors, execute


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
        env={"COURSE_RECORD_REFERENCES": str(root), "COURSE_FAST": "1"},
        allow_errors=True,
        on_cell_executed=note_hidden_checks,
    )
    failed = errors(notebook)
    if failed:
        raise SystemExit(f"{assignment}: the solution notebook failed while recording:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items()))
    (root / "autograder/references" / f"{assignment}.cells.json").write_text(json.dumps(cells, indent=1) + "\n")
    print(f"{assignment}: references recorded in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    for name in sys.argv[1:] or assignments():
        record(name)
