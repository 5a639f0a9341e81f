"""Find the course's assignments and execute notebooks in a real Jupyter kernel."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def assignments() -> list[str]:
    """Names of the assignments in solutions/, e.g. ['03_rnn_lstm'], in course order."""
    return sorted(p.name for p in (ROOT / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists())


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
