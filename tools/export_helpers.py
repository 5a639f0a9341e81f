"""Write the course package's modules that are answers to an exercise from the solution cells they come from.

A later notebook sometimes builds on an earlier exercise (05 and 06 attend with 04's `DotProductAttention`; 07
compares with 03's `LSTMLM`). Such a module is generated, never written by hand, so it cannot drift from the
answer: a solution cell whose metadata says `"course": {"export": "shared/attention.py"}` is copied there, without
its solution markers and its "Not allowed here" note, below the module header that HEADERS gives (the
way d2l's `#@save` cells build its package). Every answer cell of the notebook a module comes from forbids the
module's functions and classes (course.forbidden), since the grading kernel can import them. `make release` runs this; tests/test_bundle.py fails while a module
and its cells disagree, and `make student-bundle` uses EXPORTS to keep each module out of the bundle that
releases its exercise.

Usage: python tools/export_helpers.py [--check]   (--check: only report out-of-date modules, exit 1 if any)
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import ROOT, SOLUTION_MARKER, SOLUTIONS, assignments, with_forbidden_note  # noqa: E402

# What a generated module holds above the exported cells: its docstring, its imports and, where the later
# notebook needs it, code of its own (kept short: everything else comes from the cells).
HEADERS = {
    "shared/attention.py": '''"""Masked softmax and scaled dot-product attention: notebook 04's answers, for the notebooks that build on them.

Shapes follow notebook 04: scores X are (batch, queries, keys); `valid_lens` is None, (batch,) with one length
per example, or (batch, queries) with one length per query row. Keys at positions >= the valid length get
exactly zero weight; a row whose valid length is 0 gets all-zero weights (its output is the zero vector).
"""

import math

import torch
from torch import nn
''',
    "shared/lstm_lm.py": '''"""The LSTM language model of notebook 03 (embedding -> multi-layer LSTM -> linear), for the GPT notebook.

The class is 03's answer; only its LSTM is PyTorch's fused `nn.LSTM` in place of 03's from-scratch one (same
arguments, batch first), so that the model trains as fast as PyTorch allows on a CPU. It is the package's only
LSTMLM: 08's `LSTMLM` (frozen GloVe rows, packed stories, optional attention) is a separate exercise of its own
handout, written by the student in that notebook.
"""

from torch import nn


def LSTM(input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True, dropout: float = 0.0) -> nn.LSTM:
    """03's `LSTM(input_size, hidden_size, num_layers, bias, dropout)` as a batch-first `nn.LSTM`."""
    return nn.LSTM(input_size, hidden_size, num_layers, bias=bias, batch_first=True,
                   dropout=dropout if num_layers > 1 else 0.0)  # nn.LSTM warns about dropout after a single layer
''',
}


@dataclass(frozen=True)
class ExportedCell:
    """One solution cell copied into a module of the course package."""

    assignment: str
    grade_id: str
    module: str  # path from the repository root, e.g. "shared/attention.py"
    code: str  # the cell's answer, markers and note removed


def answer_code(source: str) -> str:
    """A solution cell's source as the module holds it: no solution markers, no "Not allowed here" note."""
    lines = [line for line in with_forbidden_note(source, []).splitlines() if not SOLUTION_MARKER.match(line)]
    return "\n".join(lines).strip() + "\n"


def exported_cells() -> list[ExportedCell]:
    """Every solution cell marked for export, in course and notebook order."""
    found = []
    for assignment in assignments():
        notebook = nbformat.read(SOLUTIONS / assignment / f"{assignment}.ipynb", as_version=4)
        for cell in notebook.cells:
            module = cell.metadata.get("course", {}).get("export")
            if module:
                if module not in HEADERS:
                    raise SystemExit(f"{assignment}: cell {cell.metadata.nbgrader.grade_id} exports to {module}, "
                                     f"which has no header in tools/export_helpers.py HEADERS")
                found.append(ExportedCell(assignment, cell.metadata.nbgrader.grade_id, module, answer_code(cell.source)))
    return found


def module_texts(cells: list[ExportedCell]) -> dict[str, str]:
    """{module path: its full text}: a generated-file banner, the header, then the cells."""
    texts = {}
    for module, header in HEADERS.items():
        parts = [cell for cell in cells if cell.module == module]
        if not parts:
            raise SystemExit(f"{module} has a header in tools/export_helpers.py but no solution cell exports to it")
        sources = ", ".join(sorted({f"solutions/{cell.assignment}" for cell in parts}))
        banner = (f"# Generated by `make release` (tools/export_helpers.py) from the solution cells "
                  f"{', '.join(cell.grade_id for cell in parts)} of {sources}: edit those cells, not this file.\n")
        texts[module] = banner + header + "".join("\n\n" + cell.code for cell in parts)
    return texts


def source_assignments() -> dict[str, set[str]]:
    """{module path: the assignments whose answers it holds}."""
    exports: dict[str, set[str]] = {}
    for cell in exported_cells():
        exports.setdefault(cell.module, set()).add(cell.assignment)
    return exports


def public_names(text: str) -> list[str]:
    """The functions and classes a module's text defines at its top level, private ones (_name) left out."""
    return [node.name for node in ast.parse(text).body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")]


def with_exports_forbidden(path: Path, texts: dict[str, str]) -> tuple[str, str]:
    """(a solution notebook's text, its text with every answer cell forbidding what the notebook's exported modules define).

    The kernel that grades an assignment can import the whole course package, so the answers generated from its
    cells (shared/attention.py while 04 is graded) are forbidden in all of its answer cells, the way a built-in is;
    the release's "Not allowed here" notes (from_scratch_notes.py) then name them too.
    """
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    exported = [cell.get("metadata", {}).get("course", {}).get("export") for cell in notebook["cells"]]
    dotted = [f"{module.removesuffix('.py').replace('/', '.')}.{name}"
              for module in dict.fromkeys(filter(None, exported)) for name in public_names(texts[module])]
    for cell in notebook["cells"]:
        if dotted and cell["cell_type"] == "code" and cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
            course = cell["metadata"].setdefault("course", {})
            course["forbidden"] = list(course.get("forbidden", [])) + [name for name in dotted if name not in course.get("forbidden", [])]
    return text, json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report modules that are out of date; change nothing")
    args = parser.parse_args()
    stale = []
    texts = module_texts(exported_cells())
    for module, text in texts.items():
        path = ROOT / module
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(module)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    for assignment in assignments():
        path = SOLUTIONS / assignment / f"{assignment}.ipynb"
        before, after = with_exports_forbidden(path, texts)
        if before != after:
            stale.append(str(path.relative_to(ROOT)) + " (its answer cells must forbid its exported modules)")
            if not args.check:
                path.write_text(after, encoding="utf-8")
    for module in stale:
        print(f"{'out of date' if args.check else 'written'}: {module}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
