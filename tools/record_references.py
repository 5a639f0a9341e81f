"""Execute each solution notebook and record every checked output as a reference tensor.

Public references go to shared/references/<assignment>.pt (shipped to students), hidden ones to
autograder/references/<assignment>.pt (instructors only). Usage: python tools/record_references.py [assignment ...]
"""

import sys
import time

from notebooks import ROOT, assignments, errors, execute


def record(assignment: str) -> None:
    for folder in ("shared/references", "autograder/references"):
        (ROOT / folder / f"{assignment}.pt").unlink(missing_ok=True)
    started = time.monotonic()
    notebook = execute(
        ROOT / "solutions" / assignment / f"{assignment}.ipynb",
        env={"COURSE_RECORD_REFERENCES": str(ROOT), "COURSE_FAST": "1"},
        allow_errors=True,
    )
    failed = errors(notebook)
    if failed:
        raise SystemExit(f"{assignment}: the solution notebook failed while recording:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items()))
    print(f"{assignment}: references recorded in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    for name in sys.argv[1:] or assignments():
        record(name)
