"""Find the course's assignments and execute notebooks in a real Jupyter kernel."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"


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
        on_cell_executed=on_cell_executed,
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


def solution_namespace(assignment: str, cell_ids: list[str], namespace: dict | None = None) -> dict:
    """Run the given cells of the instructor's notebook (solution markers removed) in one namespace; returns it."""
    notebook = nbformat.read(SOLUTIONS / assignment / f"{assignment}.ipynb", as_version=4)
    sources = {cell.id: cell.source for cell in notebook.cells}
    namespace = {} if namespace is None else namespace
    for cell_id in cell_ids:
        exec("\n".join(line for line in sources[cell_id].splitlines() if not SOLUTION_MARKER.match(line)), namespace)
    return namespace
