"""Write each solution cell's "Not allowed here" note from its metadata (course.forbidden); run before make release.

The note is the cell's first comment lines, so the release (nbgrader keeps everything outside the solution
markers) shows students what each exercise may not use. The metadata is the one source: edit the list there
and run this again; tests/test_from_scratch.py fails while a note and its list disagree.

Usage: python tools/from_scratch_notes.py [--check]   (--check: only report out-of-date notebooks, exit 1 if any)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import SOLUTIONS, assignments, forbidden, with_forbidden_note  # noqa: E402


def updated(path: Path) -> tuple[str, str]:
    """(the notebook file's text, its text with every solution cell's note written from its metadata)."""
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    for cell in notebook["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell["cell_type"] != "code" or not meta.get("solution"):
            continue
        source = "".join(cell["source"])
        cell["source"] = with_forbidden_note(source, forbidden(cell)).splitlines(keepends=True)
    # the repository's notebooks are written as nbformat writes them: one-space indent, sorted keys, UTF-8
    return text, json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report notebooks whose notes are out of date; change nothing")
    args = parser.parse_args()
    stale = []
    for assignment in assignments():
        path = SOLUTIONS / assignment / f"{assignment}.ipynb"
        before, after = updated(path)
        if before != after:
            stale.append(path)
            if not args.check:
                path.write_text(after, encoding="utf-8")
    for path in stale:
        print(f"{'out of date' if args.check else 'updated'}: {path.relative_to(SOLUTIONS.parent)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
