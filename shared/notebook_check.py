"""Run notebooks headless and print, exercise by exercise, how their visible checks would score.

    python -m shared.notebook_check [--full] [--timeout S] PATH...

PATH is a notebook or a folder (every notebook under it). Each notebook runs in a fresh python3
kernel started in its own folder; cells keep running after an error. By default COURSE_FAST=1
shrinks training to a smoke test, as while grading; --full runs every cell at full size.
A test cell is scored as nbgrader scores it (`nbgrader.utils.determine_grade`): an error or
anything written to stderr gives 0, a single number as its result gives that many points, and
anything else full points. The notebook file itself is never written.

Exit status: 0 if every graded test cell passed, 1 if one did not, 2 for a path that is missing or
is not a notebook.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbgrader.utils import compute_checksum, determine_grade

from shared import grading_contract as contract

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The autograder removes stderr output matching this before scoring (IgnorePattern in
# autograder/nbgrader_config.py), so library warnings do not zero a test cell. Keep the two equal.
IGNORED_STDERR = r".*(UserWarning|DeprecationWarning|FutureWarning).*"
GRADING_TIMEOUT = 60  # seconds per cell: the autograder's default CELL_TIMEOUT
TIMEOUT_ERROR = "CellTimeout"
NOT_DONE = "not done yet: the cell still raises NotImplementedError"  # what a release's stub, `raise NotImplementedError()`, says
LABEL_WIDTH = 50  # characters of a cell's line quoted in its label


class BadInput(Exception):
    """A path that is missing, or a file that is not a readable notebook."""


class KernelStuck(Exception):
    """The kernel ignored the interrupt sent after a cell's time limit."""


@dataclass
class Row:
    """One graded cell: a test cell scored like nbgrader, or an answer graded by hand (score None)."""

    exercise: str
    check: str
    points: float
    score: float | None
    reason: str = ""

    @property
    def passed(self) -> bool:
        """Full points, or not scored here at all."""
        return self.score is None or self.score == self.points


def notebook_paths(arguments: list[str]) -> list[Path]:
    """The notebooks named by `arguments`, folders expanded to the notebooks under them."""
    paths = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            if not found:
                raise BadInput(f"{argument}: no notebooks (*.ipynb) in this folder")
            paths += found
        elif not path.exists():
            raise BadInput(f"{argument}: no such file or folder")
        elif path.suffix != ".ipynb":
            raise BadInput(f"{argument}: not a notebook (the name should end in .ipynb)")
        else:
            paths.append(path)
    return paths


def load(path: Path) -> NotebookNode:
    """The notebook at `path`, or BadInput saying in one line why it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInput(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
                       "restore it from a backup or a checkpoint in .ipynb_checkpoints/") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"{path}: cannot be read ({error})") from None
    if not isinstance(content, dict) or "nbformat" not in content:
        raise BadInput(f"{path}: not a Jupyter notebook (valid JSON, but without the 'nbformat' version every notebook has)")
    try:
        with warnings.catch_warnings():  # nbformat warns about old notebooks without cell ids
            warnings.simplefilter("ignore")
            notebook = nbformat.reads(text, as_version=4)
            nbformat.validate(notebook)
    except Exception as error:  # nbformat raises several kinds for JSON that is not a notebook
        summary = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise BadInput(f"{path}: not a valid Jupyter notebook ({summary})") from None
    return notebook


def metadata(cell: NotebookNode) -> dict:
    """The cell's nbgrader metadata ({} for an ordinary cell)."""
    return cell.metadata.get("nbgrader", {})


def is_test(cell: NotebookNode) -> bool:
    """An autograded test cell: code with grade true and solution false."""
    return cell.cell_type == "code" and bool(metadata(cell).get("grade")) and not metadata(cell).get("solution")


def is_by_hand(cell: NotebookNode) -> bool:
    """A written answer (grade and solution true) or a task cell: points that a person gives."""
    nbgrader = metadata(cell)
    return bool(nbgrader.get("task")) or bool(nbgrader.get("grade") and nbgrader.get("solution"))


def run(notebook: NotebookNode, folder: Path, *, fast: bool, timeout: int | None) -> str:
    """Execute every code cell in place; returns a note if the run stopped early, else ''."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []  # outputs saved from an earlier run must not count as this run's
    env = {name: value for name, value in os.environ.items() if name not in (contract.FAST, contract.GRADING_EXECUTION)}
    if fast:
        env["COURSE_FAST"] = "1"
    code_cells = sum(cell.cell_type == "code" for cell in notebook.cells)
    started: list[int] = []
    show_progress = sys.stderr.isatty()

    def on_cell_start(cell: NotebookNode, cell_index: int) -> None:
        started.append(cell_index)
        if show_progress:
            sys.stderr.write(f"\r  cell {sum(c.cell_type == 'code' for c in notebook.cells[:cell_index + 1])}/{code_cells} ")
            sys.stderr.flush()

    def on_cell_executed(cell: NotebookNode, cell_index: int, execute_reply: dict | None) -> None:
        # nbclient hands over this stand-in reply when it interrupted a cell at its time limit.
        if not execute_reply or execute_reply["content"].get("ename") != TIMEOUT_ERROR:
            return
        if not any(output.output_type == "error" for output in cell.outputs):  # no KeyboardInterrupt came back
            raise KernelStuck
        cell.outputs = [output for output in cell.outputs if output.output_type != "error"]
        add_error(cell, TIMEOUT_ERROR, f"ran longer than {timeout} s and was interrupted")

    client = NotebookClient(
        notebook, kernel_name="python3", timeout=timeout, allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": TIMEOUT_ERROR, "evalue": "", "traceback": []},
        shutdown_kernel="immediate",  # every output is in already; a stuck kernel would not answer a polite request
        resources={"metadata": {"path": str(folder)}}, on_cell_start=on_cell_start, on_cell_executed=on_cell_executed,
    )
    note = ""
    try:
        # The kernel's own stderr holds only start-up chatter; what cells print arrives as outputs.
        client.execute(env=env, stderr=subprocess.DEVNULL)
    except (DeadKernelError, KernelStuck, CellTimeoutError) as error:
        stopped = started[-1]
        if isinstance(error, DeadKernelError):
            add_error(notebook.cells[stopped], "KernelDied", "the kernel died while running this cell (a crash, os._exit or out of memory)")
            note = f"the kernel died in {label(notebook.cells, stopped)}: the cells below it did not run"
        else:
            add_error(notebook.cells[stopped], TIMEOUT_ERROR, f"ran longer than {timeout} s and ignored the interrupt")
            note = f"the kernel stopped answering in {label(notebook.cells, stopped)}: the cells below it did not run"
        for cell in notebook.cells[stopped + 1:]:
            if cell.cell_type == "code":
                add_error(cell, "NotRun", "did not run: the kernel stopped in an earlier cell")
    finally:
        if show_progress:
            sys.stderr.write("\r" + " " * 30 + "\r")
    return note


def add_error(cell: NotebookNode, name: str, message: str) -> None:
    """Give `cell` an error output, which nbgrader scores 0."""
    cell.outputs.append(nbformat.v4.new_output("error", ename=name, evalue=message, traceback=[]))


def label(cells: list[NotebookNode], index: int) -> str:
    """A name for cells[index] that a student can find: its grade_id, else its first line, and its own line where others start alike."""
    cell = cells[index]
    if metadata(cell).get("grade_id"):
        return f"cell {metadata(cell)['grade_id']}"
    lines = [line.strip() for line in cell.source.splitlines() if line.strip()] or [""]
    others = [other for position, other in enumerate(cells) if position != index and other.cell_type == "code"]
    if not any((other.source.strip().splitlines() or [""])[0].strip() == lines[0] for other in others):
        return f'cell "{quoted(lines[0])}"'
    elsewhere = {line.strip() for other in others for line in other.source.splitlines()}
    own = next((line for line in lines[1:] if line not in elsewhere), None)
    if own is None:  # every line is in another cell too: count the code cells that start alike, which a student can see
        alike = [position for position, other in enumerate(cells)
                 if other.cell_type == "code" and (other.source.strip().splitlines() or [""])[0].strip() == lines[0]]
        return f'cell "{quoted(lines[0])}" ({alike.index(index) + 1} of the {len(alike)} cells that start so)'
    return f'cell "{quoted(lines[0])} … {quoted(own)}"'


def quoted(line: str) -> str:
    """A line of code cut to LABEL_WIDTH characters."""
    return line if len(line) <= LABEL_WIDTH else line[:LABEL_WIDTH] + "…"


def error_reason(name: str, message: str) -> str:
    """A failure in one line: what a student needs to look for first."""
    first_line = (ANSI.sub("", message).strip().splitlines() or [""])[0]
    if name == "NotImplementedError" and not first_line:  # a stub; a message is the course's own (a cell above did not finish)
        return NOT_DONE
    if name in ("CheckFailed", TIMEOUT_ERROR, "KernelDied", "NotRun"):
        return first_line
    return f"{name}: {first_line}" if first_line else name


def scored(cell: NotebookNode) -> tuple[float, str]:
    """(points, reason) for an executed test cell, as the autograder would score it."""
    cell = nbformat.from_dict(cell)  # a copy: the filter below must not change what is printed
    cell.outputs = [o for o in cell.outputs
                    if not (o.output_type == "stream" and o.name == "stderr" and re.search(IGNORED_STDERR, o.text))]
    try:
        score, points = determine_grade(cell)
    except (ValueError, KeyError) as error:
        return 0.0, f"nbgrader cannot score this cell's result ({error})"
    for output in cell.outputs:  # nbgrader's own order: the first error or stderr output decides
        if output.output_type == "error":
            return score, error_reason(output.ename, output.evalue)
        if output.output_type == "stream" and output.name == "stderr":
            first_line = (ANSI.sub("", output.text).strip().splitlines() or [""])[0]
            return score, f"wrote to stderr (nbgrader scores this 0): {first_line}"
        if output.output_type == "execute_result":
            break
    if score < points:
        return score, f"its result is the number {score:g}, which nbgrader gives as partial credit"
    return score, ""


def exercise_of(cells: list[NotebookNode], index: int) -> str:
    """The grade_id of the answer cell a test cell checks: the nearest code answer cell above it.

    Test cells, the course's locked helper cells and cells a student added may stand in between.
    """
    for cell in reversed(cells[:index]):
        if cell.cell_type == "code" and metadata(cell).get("solution"):
            return metadata(cell).get("grade_id", "")
    return ""


def timed_out(cell: NotebookNode) -> bool:
    """The cell ran past its time limit (and was interrupted, or the kernel stopped in it)."""
    return any(output.output_type == "error" and output.ename == TIMEOUT_ERROR for output in cell.outputs)


def rows(notebook: NotebookNode) -> list[Row]:
    """One row per graded cell, in notebook order; a failure below a timed-out cell says so."""
    table, first_timeout = [], None
    for index, cell in enumerate(notebook.cells):
        nbgrader = metadata(cell)
        points = float(nbgrader.get("points", 0) or 0)
        if is_test(cell):
            score, reason = scored(cell)
            if first_timeout is not None and score < points and not timed_out(cell) and "did not run" not in reason:
                reason += f" (after the time-out in {label(notebook.cells, first_timeout)})"
            table.append(Row(exercise_of(notebook.cells, index), nbgrader.get("grade_id") or label(notebook.cells, index), points, score, reason))
        elif is_by_hand(cell):
            unanswered = "checksum" in nbgrader and nbgrader["checksum"] == compute_checksum(cell)
            table.append(Row(nbgrader.get("grade_id") or label(notebook.cells, index), "-", points, None, "not answered yet" if unanswered else ""))
        if first_timeout is None and cell.cell_type == "code" and timed_out(cell):
            first_timeout = index
    return table


def ungraded_errors(notebook: NotebookNode) -> list[str]:
    """'cell ...: reason' for each code cell that is not a test cell and raised an error."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or is_test(cell):
            continue
        errors = [o for o in cell.outputs if o.output_type == "error" and o.ename != "NotRun"]
        if errors:
            found.append(f"{label(notebook.cells, index)}: {error_reason(errors[0].ename, errors[0].evalue)}")
    return found


def points_text(points: float) -> str:
    """4.0 as '4', 1.5 as '1.5'."""
    return f"{points:g}"


def report(table: list[Row], errors: list[str], note: str) -> str:
    """The table, the errors outside graded cells, and the total line."""
    if not table:
        lines = ["  (no graded cells)"]
    else:
        width_exercise = max(len("exercise"), *(len(row.exercise) for row in table))
        width_check = max(len("check cell"), *(len(row.check) for row in table))
        lines = [f"  {'exercise':<{width_exercise}}  {'check cell':<{width_check}}  {'points':>9}  result"]
        for row in table:
            if row.score is None:
                points, result = points_text(row.points), "graded by hand"
            else:
                points = f"{points_text(row.score)} / {points_text(row.points)}"
                result = "PASS" if row.passed else ("PARTIAL" if row.score > 0 else "FAIL")
            reason = "" if not row.reason else f" ({row.reason})" if row.score is None else f"  {row.reason}"
            lines.append(f"  {row.exercise:<{width_exercise}}  {row.check:<{width_check}}  {points:>9}  {result}{reason}".rstrip())
    if note:
        lines += ["", f"  Stopped early: {note}."]
    if errors:
        lines += ["", "  Errors in cells that are not graded (cells below them may fail because of them):"]
        lines += [f"    {error}" for error in errors]
    lines += ["", total_line(table)]
    return "\n".join(lines)


def total_line(table: list[Row]) -> str:
    """The points the test cells scored, out of their total, and the points left to graders."""
    tests = [row for row in table if row.score is not None]
    by_hand = sum(row.points for row in table if row.score is None)
    return (f"visible checks: {points_text(sum(row.score for row in tests))} / {points_text(sum(row.points for row in tests))} "
            f"points passed ({points_text(by_hand)} points are graded by hand; hidden tests run when your instructor grades)")


def check(path: Path, notebook: NotebookNode, *, fast: bool, timeout: int | None) -> list[Row]:
    """Run one notebook, print its report, and return its rows."""
    mode = "fast mode: training is cut short; FULL=1 or --full runs it at full size" if fast else "full size"
    print(f"Running {path} ({mode}) ...", flush=True)
    note = run(notebook, path.resolve().parent, fast=fast, timeout=timeout)
    table = rows(notebook)
    print(report(table, ungraded_errors(notebook), note), flush=True)
    return table


def main(argv: list[str] | None = None) -> int:
    """Check the notebooks named on the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m shared.notebook_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a notebook, or a folder of notebooks")
    parser.add_argument("--full", action="store_true", help="run training at full size (no COURSE_FAST)")
    parser.add_argument("--timeout", type=int, metavar="S",
                        help=f"seconds per cell before it is interrupted; 0 for no limit (default: {GRADING_TIMEOUT}, as when grading; none with --full)")
    arguments = parser.parse_args(argv)
    timeout = arguments.timeout if arguments.timeout is not None else (None if arguments.full else GRADING_TIMEOUT)
    timeout = timeout or None
    try:
        notebooks = [(path, load(path)) for path in notebook_paths(arguments.paths)]
    except BadInput as error:
        print(f"notebook_check: {error}", file=sys.stderr)
        return 2
    every_row = []
    try:
        for number, (path, notebook) in enumerate(notebooks):
            if number:
                print()
            every_row += check(path, notebook, fast=not arguments.full, timeout=timeout)
    except KeyboardInterrupt:
        print("\nnotebook_check: interrupted", file=sys.stderr)
        return 130
    if len(notebooks) > 1:
        print(f"\nAll {len(notebooks)} notebooks: {total_line(every_row)}")
    return 0 if all(row.passed for row in every_row) else 1


if __name__ == "__main__":
    sys.exit(main())
