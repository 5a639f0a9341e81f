"""Find the course's assignments and execute notebooks in a real Jupyter kernel."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
MISTAKES = ROOT / "autograder" / "mistakes"


def assignments() -> list[str]:
    """Names of the assignments in solutions/, e.g. ['03_rnn_lstm'], in course order."""
    return sorted(p.name for p in SOLUTIONS.iterdir() if (p / f"{p.name}.ipynb").exists())


def execute(
    path: Path, *, env: dict[str, str] | None = None, timeout: int = 600, allow_errors: bool = False, on_cell_executed=None
) -> nbformat.NotebookNode:
    """Run every cell of the notebook at `path` in a fresh python3 kernel started in its folder.

    `on_cell_executed(cell=..., cell_index=..., execute_reply=...)` is called after each code cell.
    """
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", allow_errors=allow_errors, resources={"metadata": {"path": str(path.parent)}},
        on_cell_executed=on_cell_executed, shutdown_kernel="immediate",  # no exit hooks to wait for: saves a second
    )
    client.execute(env={**os.environ, **(env or {})})
    return notebook


def errors(notebook: nbformat.NotebookNode) -> dict[str, str]:
    """{cell id: 'Name: message'} for every cell whose output holds an error."""
    found = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                found[cell.get("id", "?")] = f"{output.get('ename')}: {output.get('evalue')}"
    return found


SOLUTION_MARKER = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")
HIDDEN_TESTS = "### BEGIN HIDDEN TESTS"


# The one way tests, benches and tools run cells of an instructor's notebook in this process (CS336's adapters.py plays
# this part there): by cell id, with the setup and answers they need, any of them replaced by another source.

def solution_sources(assignment: str) -> dict[str, str]:
    """{cell id: source} of every cell of the instructor's notebook, as written (markers kept)."""
    notebook = nbformat.read(SOLUTIONS / assignment / f"{assignment}.ipynb", as_version=4)
    return {cell.id: cell.source for cell in notebook.cells}


def runnable(source: str, *, hidden: bool = True) -> str:
    """A cell's source as Python runs it: solution markers removed and, unless `hidden`, its hidden tests cut off."""
    if not hidden:
        source = source.split(HIDDEN_TESTS)[0]
    return "\n".join(line for line in source.splitlines() if not SOLUTION_MARKER.match(line))


def cell_source(assignment: str, cell_id: str, *, hidden: bool = False) -> str:
    """One cell of the instructor's notebook, runnable (hidden tests cut off unless `hidden`)."""
    return runnable(solution_sources(assignment)[cell_id], hidden=hidden)


@dataclass
class CellRun:
    """What running some cells left: their shared namespace and what they printed."""

    namespace: dict
    printed: str


def run_cells(assignment: str, cell_ids: list[str], *, replace: dict[str, str] | None = None, hidden: bool = False,
              namespace: dict | None = None) -> CellRun:
    """Run cells of the instructor's notebook in order in one namespace (a fresh one, or `namespace` to go on with).

    `replace` {cell id: source} runs another source in a cell's place (a wrong answer); markers are removed from it
    too. Hidden tests run only with `hidden` (their checks then compare with autograder/references/). What the cells
    print is captured; an exception propagates.
    """
    sources = solution_sources(assignment) | (replace or {})
    namespace = {} if namespace is None else namespace
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for cell_id in cell_ids:
            exec(compile(runnable(sources[cell_id], hidden=hidden), f"<{assignment} cell {cell_id}>", "exec"), namespace)
    return CellRun(namespace, printed.getvalue())


NOT_ALLOWED = "# Not allowed here (write it yourself): "
NOT_ALLOWED_MORE = "#   "
NOTE_WIDTH = 110


def forbidden(cell) -> list[str]:
    """The dotted names a solution cell's exercise may not use (its metadata course.forbidden), [] if none."""
    return list(cell.get("metadata", {}).get("course", {}).get("forbidden", []))


def forbidden_note(names: list[str]) -> str:
    """The comment lines that tell students what a cell may not use ('' for no names), wrapped at NOTE_WIDTH."""
    if not names:
        return ""
    lines, line = [], NOT_ALLOWED
    for i, name in enumerate(names):
        item = name + ("," if i < len(names) - 1 else "")
        if line not in (NOT_ALLOWED, NOT_ALLOWED_MORE) and len(line) + 1 + len(item) > NOTE_WIDTH:
            lines.append(line.rstrip())
            line = NOT_ALLOWED_MORE
        line += item if line in (NOT_ALLOWED, NOT_ALLOWED_MORE) else " " + item
    return "\n".join([*lines, line]) + "\n"


def with_forbidden_note(source: str, names: list[str]) -> str:
    """`source` with its leading note (if any) replaced by forbidden_note(names)."""
    lines = source.splitlines(keepends=True)
    if lines and lines[0].startswith(NOT_ALLOWED):
        lines.pop(0)
        while lines and lines[0].startswith(NOT_ALLOWED_MORE):
            lines.pop(0)
    return forbidden_note(names) + "".join(lines)


# What a mistake's first failing check must say (tests/test_mistakes.py asserts it): the mistake named, or a generic
# message. Only "named" entries are recorded by `make references`: recording the others would name them.
EXPECTATIONS = {
    "named": "the output matches a known mistake: {title}.",
    "differs": "differs from the expected values.",
    "wrong shape": "has the wrong shape.",
    "nan": "is NaN somewhere.",
    "fails": "",  # the check cell's own assertion fails: `message` says how its message starts
}


@dataclass(frozen=True)
class Mistake:
    """A mistake students make, written as an edit of one solution cell (autograder/mistakes/<assignment>.toml)."""

    id: str
    cell: str  # grade_id of the solution cell to edit
    find: str  # text that occurs exactly once in that cell
    replace: str
    title: str  # names the mistake, e.g. "the variance divides by d - 1"
    hint: str  # what is right, and where the equation is
    tests: tuple[str, ...] = ()  # test cells that show it; default: those between the cell and the next answer
    expect: str = "named"  # a key of EXPECTATIONS
    same_as: str = ""  # another way to write that entry's mistake: the check names that entry (not recorded itself)
    check: str = ""  # grade_id of the test cell that must fail first; default: any
    message: str = ""  # how the failure message must start, e.g. "Check 'gpt': output['attentions']"

    @property
    def recorded(self) -> bool:
        """Whether `make references` records this mistake's outputs, so that its checks name it."""
        return self.expect == "named" and not self.same_as


REQUIRED = ("id", "cell", "find", "replace", "title", "hint")
OPTIONAL = ("tests", "expect", "same_as", "check", "message")


def load_mistakes(path: Path) -> list[Mistake]:
    """The mistakes in one catalogue file; ValueError, naming the file and the entry, for a malformed entry."""
    entries = tomllib.loads(path.read_text()).get("mistake", [])
    catalogue = []
    for number, entry in enumerate(entries, 1):
        where = f"{path.name}: mistake " + (repr(entry["id"]) if "id" in entry else f"number {number}")
        unknown = sorted(set(entry) - set(REQUIRED) - set(OPTIONAL))
        if unknown:
            raise ValueError(f"{where} has unknown fields {unknown}; the fields are {list(REQUIRED + OPTIONAL)}")
        missing = [field for field in REQUIRED if field not in entry or (field != "replace" and not entry[field])]  # replace may be ""
        if missing:
            raise ValueError(f"{where} lacks {missing}")
        if entry.get("expect", "named") not in EXPECTATIONS:
            raise ValueError(f"{where}: expect = {entry['expect']!r} is none of {list(EXPECTATIONS)}")
        if entry.get("expect") == "fails" and not entry.get("message"):
            raise ValueError(f"{where}: expect = 'fails' needs a `message` (how the check's message starts)")
        if entry.get("same_as") and entry.get("expect", "named") != "named":
            raise ValueError(f"{where}: same_as names another entry's mistake, so expect must be 'named'")
        catalogue.append(Mistake(**{**entry, "tests": tuple(entry.get("tests", ()))}))
    ids = [m.id for m in catalogue]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"{path.name}: mistake ids {repeated} appear more than once")
    recorded = {m.id for m in catalogue if m.recorded}
    for mistake in catalogue:
        if mistake.same_as and mistake.same_as not in recorded:
            raise ValueError(f"{path.name}: mistake {mistake.id!r}: same_as = {mistake.same_as!r} names no recorded entry of this file")
        if mistake.check and mistake.tests and mistake.check not in mistake.tests:
            raise ValueError(f"{path.name}: mistake {mistake.id!r}: check {mistake.check!r} is not among its tests {list(mistake.tests)}")
    return catalogue


def mistakes(assignment: str) -> list[Mistake]:
    """The mistakes catalogued for `assignment` (none if it has no catalogue)."""
    path = MISTAKES / f"{assignment}.toml"
    return load_mistakes(path) if path.exists() else []


def with_mistake(source: str, mistake: Mistake) -> str:
    """`source` with the mistake's edit made; ValueError unless its text occurs exactly once."""
    count = source.count(mistake.find)
    if count != 1:
        raise ValueError(f"mistake '{mistake.id}': its `find` text occurs {count} times in cell '{mistake.cell}', not once")
    return source.replace(mistake.find, mistake.replace)


def _grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _is_answer(cell) -> bool:
    return cell.cell_type == "code" and cell.get("metadata", {}).get("nbgrader", {}).get("solution", False)


def _is_test(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.cell_type == "code" and meta.get("grade", False) and not meta.get("solution", False)


def mistake_segment(notebook: nbformat.NotebookNode, mistake: Mistake) -> tuple[int, list[int]]:
    """(index of the edited cell, indices of the code cells to run after it, down to its last test cell)."""
    cells = notebook.cells
    start = next((i for i, c in enumerate(cells) if _grade_id(c) == mistake.cell and _is_answer(c)), None)
    if start is None:
        raise ValueError(f"mistake '{mistake.id}': no answer cell '{mistake.cell}'")
    if mistake.tests:
        missing = set(mistake.tests) - {_grade_id(c) for c in cells if _is_test(c)}
        if missing:
            raise ValueError(f"mistake '{mistake.id}': no test cells {sorted(missing)}")
        last = max(i for i, c in enumerate(cells) if _grade_id(c) in mistake.tests)
    else:
        after = [i for i in range(start + 1, len(cells)) if cells[i].cell_type == "code"]
        tests = []
        for i in after:
            if _is_answer(cells[i]):
                break
            if _is_test(cells[i]):
                tests.append(i)
        if not tests:
            raise ValueError(f"mistake '{mistake.id}': no test cell follows '{mistake.cell}' before the next answer")
        last = tests[-1]
    return start, [i for i in range(start + 1, last + 1) if cells[i].cell_type == "code"]


def run_mistakes(
    assignment: str, *, env: dict[str, str], before: Callable[[NotebookClient, Mistake], None] | None = None,
    after: Callable[[NotebookClient, Mistake, list], None] | None = None, timeout: int = 600,
) -> list[Mistake]:
    """Run the solution notebook cell by cell in one kernel; just before each catalogued cell, run each
    of its recorded mistakes (the edited cell, then the cells down to its tests) on copies of the cells.

    `before(client, mistake)` runs just before a mistake's cells, `after(client, mistake, cells)` receives
    the executed copies ([edited cell, following cells...]). Stops after the last mistake.
    """
    catalogue = [m for m in mistakes(assignment) if m.recorded]
    if not catalogue:
        return []
    path = SOLUTIONS / assignment / f"{assignment}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    segments = {m: mistake_segment(notebook, m) for m in catalogue}
    end = max(followers[-1] for _, followers in segments.values())  # a segment always ends at a test cell
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}}, shutdown_kernel="immediate")
    client.reset_execution_trackers()
    with client.setup_kernel(env={**os.environ, **env}):
        client.wait_for_reply(client.kc.kernel_info())
        for index, cell in enumerate(notebook.cells[: end + 1]):
            if cell.cell_type != "code":
                continue
            for mistake in (m for m in catalogue if segments[m][0] == index):
                edited = copy.deepcopy(cell)
                edited.source = with_mistake(cell.source, mistake)
                followers = [copy.deepcopy(notebook.cells[i]) for i in segments[mistake][1]]
                if before:
                    before(client, mistake)
                for copied in [edited] + followers:
                    client.execute_cell(copied, index)
                if after:
                    after(client, mistake, [edited] + followers)
            client.execute_cell(cell, index)
    return catalogue


def run_in_kernel(client: NotebookClient, source: str) -> None:
    """Run a line of setup code in the client's kernel (not part of the notebook)."""
    client.execute_cell(nbformat.v4.new_code_cell(source), 0)
