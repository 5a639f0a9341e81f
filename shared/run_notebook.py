"""Run a notebook from top to bottom in a fresh kernel and save it in place, outputs included (`make run NB=...`).

    python -m shared.run_notebook notebooks/03_rnn_lstm/03_rnn_lstm.ipynb

For students outside Jupyter: afterwards the notebook holds its outputs, as if run with Run All Cells and
saved, ready for `make pdf`. Cells keep running after one raises, as in `make check`. Training runs at the size
the environment asks for: COURSE_FAST=1 cuts it short, otherwise it runs at full size.

Exit status: 0 if every cell ran without an error, 1 if some cell raised (the notebook is saved all the same),
2 for a missing path or a file that is not a notebook (nothing is written).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from shared.notebook_check import BadInput, load, run
from shared.training import FAST_ENV

USAGE = "make run NB=notebooks/03_rnn_lstm/03_rnn_lstm.ipynb"


def notebook_path(argument: str | None) -> Path:
    """The notebook named by `argument`, or BadInput saying in one sentence what is wrong with it."""
    if not argument:
        raise BadInput(f"which notebook? Name it: {USAGE}")
    path = Path(argument)
    if path.is_dir():
        raise BadInput(f"{argument} is a folder: name one notebook in it, e.g. {USAGE}")
    if not path.exists():
        raise BadInput(f"{argument}: no such file")
    if path.suffix != ".ipynb":
        raise BadInput(f"{argument}: not a notebook (the name should end in .ipynb)")
    return path


def failed_cells(notebook: NotebookNode) -> list[str]:
    """'cell N: Name: message' (or 'not done yet') for every code cell whose outputs hold an error (N counts code cells from 1)."""
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    return [f"cell {number}: " + ("not done yet (NotImplementedError)" if output.get("ename") == "NotImplementedError"
                                  else f"{output.get('ename')}: {output.get('evalue')}")
            for number, cell in enumerate(code, 1) for output in cell.get("outputs", []) if output.get("output_type") == "error"]


def save(notebook: NotebookNode, path: Path) -> None:
    """Write the notebook over `path` in one step, so that an interrupted write never leaves half a notebook."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".ipynb")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            nbformat.write(notebook, file)
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def run_in_place(path: Path) -> list[str]:
    """Execute the notebook at `path` in its own folder and save it with its outputs; returns failed_cells()."""
    notebook = load(path)
    fast = os.environ.get(FAST_ENV) == "1"
    mode = f"fast mode ({FAST_ENV}=1 cuts training short)" if fast else f"full size ({FAST_ENV}=1 would cut training short)"
    print(f"Running {path} in {mode} ...", flush=True)
    started = time.monotonic()
    note = run(notebook, path.resolve().parent, fast=fast, timeout=None)
    save(notebook, path)
    code_cells = sum(cell.cell_type == "code" for cell in notebook.cells)
    print(f"saved {path} with its outputs: {code_cells} code cells in {time.monotonic() - started:.1f} s", flush=True)
    if note:
        print(f"note: {note}")
    return failed_cells(notebook)


def main(argv: list[str] | None = None) -> int:
    """Command line: run the named notebook in place; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m shared.run_notebook", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", nargs="?", help="the notebook to run (.ipynb)")
    arguments = parser.parse_args(argv)
    try:
        path = notebook_path(arguments.notebook)
        failures = run_in_place(path)
    except BadInput as error:
        print(f"make run: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nmake run: interrupted; {arguments.notebook} was left as it was", file=sys.stderr)
        return 130
    if failures:
        print(f"{len(failures)} cell(s) raised an error (their tracebacks are in the notebook):")
        print("\n".join(f"  {failure}" for failure in failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
