"""Build the student bundle: what students clone. No solutions, no hidden references, no grading code.

Usage: python tools/student_bundle.py [--assignments 04_attention[,05_seq2seq_attention...]] [output folder]
(default output dist/student-bundle; the bundle is also written as <output>.tar.gz).

With no --assignments the bundle is the whole course at once (every notebook and the whole `shared` package,
including the modules that hold earlier notebooks' answers, tools/export_helpers.py). With --assignments it holds
only those notebooks, their public references and the `shared` modules they import, and the build refuses a
bundle that would hold the answer to an exercise it releases: a module generated from an assignment's solution
cells enters only with a later assignment that builds on it. The build also fails if anything instructor-only
leaks in.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nbformat

from export_helpers import answer_code, source_assignments
from notebooks import ROOT, SOLUTIONS, assignments

INCLUDE = ["notebooks", "shared", "data", "environment.yml", "requirements.txt", "requirements.lock", "pyproject.toml", "Makefile"]
LEAK_MARKERS = ["BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"]
# `shared` modules every bundle carries whatever its notebooks import: the package's own entry points
# (shared/__init__.py's exports) and the tools behind make check, make run and make pdf.
ALWAYS = {"__init__", "checks", "device", "training", "notebook_check", "pdf", "run_notebook"}
# Import statements that name a `shared` module: from shared.data import ..., import shared.data, from .data import ...,
# from shared import data, glove (names that are not modules, like shared.Checker, are ignored).
SHARED_IMPORT = re.compile(r"^\s*(?:from\s+shared\.(\w+)\s+import|import\s+shared\.(\w+)|from\s+\.(\w+)\s+import"
                           r"|from\s+shared\s+import\s+(?:\(([\w\s,]+)\)|([\w \t,]+)))", re.MULTILINE)
# An answer is in the bundle when a function or class there has code this close to it (difflib's ratio over the
# tokens of the two definitions, docstrings and annotations left out). Measured: a hand-written copy of 04's
# answers scores 0.72 and 0.78, the unrelated helpers that share an exercise's name 0.11 to 0.35.
ANSWER_SIMILARITY = 0.6


def tracked_files() -> list[Path]:
    """Files under INCLUDE that git tracks (so local caches and data downloads stay out)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--", *INCLUDE], cwd=ROOT, capture_output=True, check=True, text=True)
    return [Path(name) for name in listed.stdout.split("\0") if name]


def leaks(bundle: Path) -> list[str]:
    """Instructor-only content found in the bundle, as 'path: reason' lines."""
    found = []
    for path in sorted(bundle.rglob("*")):
        relative = path.relative_to(bundle)
        if relative.parts[0] in {"solutions", "autograder", "tests", "tools"}:
            found.append(f"{relative}: instructor-only folder")
        elif path.is_file() and path.suffix != ".pt":
            text = path.read_text(errors="replace")
            found += [f"{relative}: contains '{marker}'" for marker in LEAK_MARKERS if marker in text]
    return found


# Which shared modules a selection of assignments needs ----------------------------------------------------------

def imported_modules(text: str) -> set[str]:
    """Names of the `shared` modules that a piece of code imports (some may be names of other things)."""
    found = set()
    for match in SHARED_IMPORT.finditer(text):
        module, plain, relative, in_parentheses, on_the_line = match.groups()
        names = in_parentheses or on_the_line
        found |= {module or plain or relative} if names is None else {name.strip() for name in names.split(",") if name.strip()}
    return found


def notebook_code(assignment: str) -> str:
    """The code cells of an assignment's student notebook, as one text."""
    notebook = nbformat.read(ROOT / "notebooks" / assignment / f"{assignment}.ipynb", as_version=4)
    return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")


def needed_modules(selected: list[str]) -> set[str]:
    """The `shared` modules (names, no .py) the selected notebooks and ALWAYS need, imports of imports included."""
    available = {path.stem for path in (ROOT / "shared").glob("*.py")}
    needed, todo = set(), set(ALWAYS)
    for assignment in selected:
        todo |= imported_modules(notebook_code(assignment))
    while todo:
        module = todo.pop()
        if module in needed or module not in available:
            continue
        needed.add(module)
        todo |= imported_modules((ROOT / "shared" / f"{module}.py").read_text(encoding="utf-8"))
    return needed


def bundled(relative: Path, selected: list[str] | None, modules: set[str]) -> bool:
    """Whether a tracked file enters the bundle of `selected` (None: the whole course)."""
    if selected is None:
        return True
    parts = relative.parts
    if parts[0] == "notebooks" and len(parts) > 2:
        return parts[1] in selected
    if parts[:2] == ("shared", "references"):
        return relative.name.split(".")[0] in selected
    if parts[0] == "shared" and relative.suffix == ".py" and len(parts) == 2:
        return relative.stem in modules
    return True


# Answers in the bundle -----------------------------------------------------------------------------------------

def _definitions(tree: ast.Module) -> list[ast.FunctionDef | ast.ClassDef]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def _tokens(definition: ast.AST) -> list[str]:
    """The tokens of a definition's code without docstrings and type annotations (so style does not hide a copy)."""
    node = ast.parse(ast.unparse(definition)).body[0]
    for inner in ast.walk(node):
        if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = inner.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                inner.body = body[1:] or [ast.Pass()]
        if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner.returns = None
            for argument in inner.args.posonlyargs + inner.args.args + inner.args.kwonlyargs:
                argument.annotation = None
    return re.findall(r"\w+|[^\w\s]", ast.unparse(node))


def answers(assignment: str) -> dict[str, list[str]]:
    """{'grade_id: name': tokens} for every top-level function and class an assignment's solution cells define."""
    notebook = nbformat.read(SOLUTIONS / assignment / f"{assignment}.ipynb", as_version=4)
    found = {}
    for cell in notebook.cells:
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution"):
            try:
                tree = ast.parse(answer_code(cell.source))
            except SyntaxError:
                continue  # a cell with IPython syntax holds no importable answer
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    found[f"{cell.metadata.nbgrader.grade_id}: {node.name}"] = _tokens(node)
    return found


def answers_in_bundle(bundle: Path, released: list[str]) -> list[str]:
    """'path: name is the answer to assignment's exercise' for each bundled definition that is a released answer."""
    expected = {f"{assignment} {key}": tokens for assignment in released for key, tokens in answers(assignment).items()}
    found = []
    for path in sorted(bundle.rglob("*.py")):
        for definition in _definitions(ast.parse(path.read_text(encoding="utf-8"))):
            tokens = _tokens(definition)
            for exercise, answer in expected.items():
                matcher = difflib.SequenceMatcher(None, tokens, answer, autojunk=False)
                if matcher.real_quick_ratio() >= ANSWER_SIMILARITY and matcher.ratio() >= ANSWER_SIMILARITY:
                    assignment, cell = exercise.split(" ", 1)
                    found.append(f"{path.relative_to(bundle)}: {definition.name} is the answer to {assignment}'s exercise {cell}")
    return found


# The build -----------------------------------------------------------------------------------------------------

def check_selection(selected: list[str]) -> None:
    """Stop with a clear message for an unknown assignment or a selection that would release answers with exercises."""
    known = assignments()
    unknown = [name for name in selected if name not in known]
    if unknown:
        raise SystemExit(f"Unknown assignment(s) {', '.join(unknown)}: the assignments are {', '.join(known)}.")
    modules = needed_modules(selected)
    for module, sources in sorted(source_assignments().items()):
        clash = sorted(sources & set(selected))
        if Path(module).stem in modules and clash:
            users = [name for name in selected if Path(module).stem in imported_modules(notebook_code(name))]
            raise SystemExit(f"{', '.join(users)} needs {module}, which holds the answers to {', '.join(clash)}: a bundle "
                             f"cannot release both. Release {', '.join(clash)} first, then the others in a later bundle.")


def build(output: Path, selected: list[str] | None = None) -> Path:
    """Write the bundle of `selected` assignments (None: the whole course) to `output` and `output`.tar.gz."""
    if selected is not None:
        check_selection(selected)
    modules = needed_modules(selected or assignments())
    shutil.rmtree(output, ignore_errors=True)
    for relative in tracked_files():
        if bundled(relative, selected, modules):
            target = output / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, target)
    shutil.copy2(ROOT / "README.student.md", output / "README.md")
    problems = leaks(output) + (answers_in_bundle(output, selected) if selected is not None else [])
    if problems:
        shutil.rmtree(output)
        raise SystemExit("Refusing to build a bundle that leaks instructor material:\n  " + "\n  ".join(problems))
    archive = output.with_name(output.name + ".tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(output, arcname=output.name)
    released = ", ".join(selected) if selected is not None else "every assignment (the whole course at once)"
    print(f"student bundle: {output} ({sum(1 for p in output.rglob('*') if p.is_file())} files) and {archive}: {released}")
    if selected is None:
        held = "; ".join(f"{module} ({', '.join(sorted(sources))})" for module, sources in sorted(source_assignments().items()))
        print(f"  it holds the answers that later notebooks build on: {held}. To release one assignment at a time: "
              f"make student-bundle ASSIGNMENTS=NN_name[,...]")
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assignments", help="comma-separated assignments to release (default: the whole course)")
    parser.add_argument("output", nargs="?", type=Path, default=ROOT / "dist" / "student-bundle")
    args = parser.parse_args()
    selected = [name.strip() for name in args.assignments.split(",") if name.strip()] if args.assignments else None
    build(args.output, selected)


if __name__ == "__main__":
    main()
