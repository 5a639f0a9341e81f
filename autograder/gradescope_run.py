"""Grade one Gradescope submission with the course's grader and write Gradescope's results.json.

Run by the autograder zip's `run_autograder` (tools/gradescope.py builds the zip). Gradescope puts the student's
files in <root>/submission/ and reads <root>/results/results.json; <root> is /autograder, or $GRADESCOPE_ROOT for a
trial on one's own machine. The submission is graded exactly as `make grade` grades a class of one (the same
sandbox, hidden checks and references, named mistakes), then each graded cell becomes one Gradescope test whose
output is the explanation our feedback gives. Written answers are listed at 0 of their points, to be graded by hand.

Usage: python autograder/gradescope_run.py --root /autograder [--visibility visible]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
COURSE = HERE.parent
STUDENT = "student"  # one submission per run: the id only names folders
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MAX_OUTPUT = 8_000  # characters of one test's output: enough for a check's message and its hint
VISIBILITIES = ("visible", "after_due_date", "after_published", "hidden")  # Gradescope's names


@dataclass(frozen=True)
class Run:
    """Where one Gradescope run reads and writes, and how its tests are shown."""

    root: Path  # /autograder, or $GRADESCOPE_ROOT
    assignment: str  # the one assignment this zip grades
    visibility: str
    work: Path  # a scratch folder for nbgrader's layout and the grading output

    @property
    def results(self) -> Path:
        return self.root / "results" / "results.json"


def the_assignment() -> str:
    """The only assignment in this zip's solutions/ (tools/gradescope.py ships one)."""
    names = sorted(p.name for p in (COURSE / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists())
    if len(names) != 1:
        raise SystemExit(f"this autograder should hold exactly one assignment in solutions/, found {names}")
    return names[0]


def find_notebook(run: Run) -> tuple[Path | None, str]:
    """(the submitted notebook, '') or (None, what the student should upload instead)."""
    folder = run.root / "submission"
    expected = f"{run.assignment}.ipynb"
    # A link is never followed: it could name the grading copy of the notebook, which holds the hidden tests.
    found = sorted(p for p in folder.rglob("*.ipynb")
                   if p.is_file() and not p.is_symlink() and ".ipynb_checkpoints" not in p.parts) if folder.is_dir() else []
    named = [p for p in found if p.name == expected]
    if len(named) == 1:
        return named[0], ""
    if len(found) == 1:
        return found[0], ""
    listed = ", ".join(str(p.relative_to(folder)) for p in found) or "no notebook"
    return None, f"Upload your notebook {expected} (exactly one .ipynb file); this submission has {listed}."


def stage(run: Run, notebook: Path) -> Path:
    """nbgrader's layout for a class of one: <work>/submitted/student/<assignment>/<assignment>.ipynb and its folder's files."""
    target = run.work / "submitted" / STUDENT / run.assignment
    target.mkdir(parents=True)
    for entry in notebook.parent.iterdir():  # files an answer writes beside the notebook (08's lm_model.pt) count too
        if entry.is_file() and not entry.is_symlink() and entry.suffix != ".ipynb":
            shutil.copyfile(entry, target / entry.name)
    shutil.copyfile(notebook, target / f"{run.assignment}.ipynb")
    return run.work / "submitted"


def grade(run: Run, submitted: Path) -> tuple[Path, str]:
    """Run the course's grader on the staged class of one; returns (its output folder, its log)."""
    output = run.work / "graded"
    environment = dict(os.environ)
    import sandbox

    failure = sandbox.sandbox_failure() if shutil.which("bwrap") else "bubblewrap (bwrap) is not installed"
    if failure:  # Gradescope's container is the student's alone; say in the log that the kernel ran without bwrap
        environment["GRADING_SANDBOX"] = "0"
    command = [sys.executable, str(HERE / "grade.py"), "--submissions", str(submitted), "--output", str(output), "--workers", "1"]
    result = subprocess.run(command, cwd=COURSE, env=environment, capture_output=True, text=True)
    log = result.stdout + result.stderr + (f"\nNo sandbox: {failure}" if failure else "")
    if result.returncode != 0:
        raise RuntimeError(f"the grader stopped (exit status {result.returncode}):\n{log[-4000:]}")
    return output, log


def explanations(output: Path, assignment: str) -> dict[str, str]:
    """{test cell grade_id: the text of its errors and printed lines}, hidden test code removed as in our feedback."""
    from inert import HiddenLines, is_test_cell, merge_streams, redact_output, source_test_cells

    path = output / "autograded" / STUDENT / assignment / f"{assignment}.ipynb"
    if not path.exists():
        return {}
    notebook = nbformat.read(path, as_version=4)
    hidden = HiddenLines([c.source for c in notebook.cells if is_test_cell(c)]
                         + source_test_cells(COURSE / "solutions" / assignment / f"{assignment}.ipynb"), 12)
    texts = {}
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.cell_type != "code" or not grade_id:
            continue
        lines = []
        for item in merge_streams(cell.get("outputs", [])):
            redact_output(item, hidden)
            if item.get("output_type") == "error":
                lines.append(f"{item.get('ename', '')}: {item.get('evalue', '')}")
            elif item.get("output_type") == "stream":
                lines.append(item.get("text", ""))
        texts[grade_id] = ANSI.sub("", "\n".join(line.rstrip() for line in lines if line.strip()))
    return texts


def tests(output: Path, run: Run) -> list[dict]:
    """One Gradescope test per graded cell, in notebook order, from grades_by_test.csv and the graded notebook."""
    with (output / "grades_by_test.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    texts = explanations(output, run.assignment)
    found = []
    for row in rows:
        score, max_score = float(row["score"]), float(row["max_score"])
        note = row["note"].lstrip("'")  # grade.py quotes text a spreadsheet would run as a formula
        if note in ("needs manual grading", "manual score given before regrading: review it in formgrader"):
            text = (f"Written answer, graded by hand ({max_score:g} points): your instructor adds these points; "
                    f"0 here until then.")
        elif score >= max_score:
            text = "\n".join(filter(None, ["Passed.", texts.get(row["grade_id"], "")]))
        else:
            detail = texts.get(row["grade_id"], "")  # the whole message, when the note is its first line
            text = (detail if note and note in detail else "\n".join(filter(None, [note, detail]))) or "Lost points."
        found.append({"name": row["grade_id"], "score": score, "max_score": max_score, "output": text[:MAX_OUTPUT],
                      "visibility": run.visibility})
    return found


def results_for(run: Run) -> dict:
    """The results.json of this run: graded tests, or a score of 0 that says what to upload or what went wrong."""
    started = time.monotonic()
    notebook, problem = find_notebook(run)
    if notebook is None:
        return {"score": 0.0, "output": problem, "tests": [], "execution_time": 0}
    output, log = grade(run, stage(run, notebook))
    graded = tests(output, run)
    by_hand = sum(t["max_score"] for t in graded if t["output"].startswith("Written answer, graded by hand"))
    summary = (f"Graded {run.assignment}: {sum(t['score'] for t in graded):g} of {sum(t['max_score'] for t in graded) - by_hand:g} "
               f"autograded points" + (f"; {by_hand:g} more points for written answers, graded by hand." if by_hand else "."))
    isolation = next((line for line in log.splitlines() if line.startswith(("Isolation:", "No sandbox:"))), "")
    return {"score": round(sum(t["score"] for t in graded), 4), "output": summary, "tests": graded,
            "execution_time": round(time.monotonic() - started), "stdout_visibility": "hidden",
            "extra_data": {"assignment": run.assignment, "isolation": isolation}}


def write_results(run: Run, results: dict) -> None:
    run.results.parent.mkdir(parents=True, exist_ok=True)
    partial = run.results.with_suffix(".partial")
    partial.write_text(json.dumps(results, indent=1))
    partial.replace(run.results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("GRADESCOPE_ROOT") or "/autograder"))
    parser.add_argument("--visibility", choices=VISIBILITIES, default="visible", help="when students see each test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gradescope-") as work:
        os.chmod(work, 0o755)  # graded kernels run under their own user id and must reach their folder
        run = Run(args.root.resolve(), the_assignment(), args.visibility, Path(work))
        try:
            results = results_for(run)
        except Exception as error:  # the run must always leave a results.json, or Gradescope shows only "failed"
            results = {"score": 0.0, "tests": [], "stdout_visibility": "hidden",
                       "output": "The autograder could not grade this submission. Tell your instructor: nothing you "
                                 "uploaded was lost, and it can be graded again once the problem is fixed."}
            write_results(run, results)
            print(f"{type(error).__name__}: {error}")  # the instructor's view (stdout is hidden from students)
            return 1
    write_results(run, results)
    print(results["output"])
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
