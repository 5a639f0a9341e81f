"""The from-scratch rule: an exercise may not be done by the PyTorch built-in that does the same job.

Each solution cell of a source notebook may list, in its metadata `course.forbidden`, the dotted names
of the public PyTorch objects it must not use (`forbidden_by_cell`). Three checks read those lists:

* `static_flags(source, forbidden)` reads a student's cell without running it and returns short findings
  for the instructor's "needs a look" column: forbidden names however they are reached (import aliases,
  assignments, getattr with a constant-folded name, subclasses, partials), and the tricks that could hide
  a call from the runtime guard (exec, frames, ctypes, profile hooks, IPython hooks, the notebook file...).
* `Guard` (`install_guard`) watches a plain Python process that runs the student's cells, compiled with
  filenames that say which cell they come from ("<solution rnn_step>"): a forbidden object called while
  a frame of a cell that forbids it is anywhere on the stack is a violation. Forbidden objects are replaced
  where they are published by wrappers that check the stack and raise `FromScratchViolation`; a profile
  function (sys.setprofile, threading.setprofile) catches calls that reach the originals another way and
  records them (an exception raised from a profile function would turn the profiler off, so it only records);
  an audit hook refuses what would switch the guard off or reach around it (`REFUSED`, `REFUSED_FROM_STUDENT`).
* `aliased_builtins(namespace, student_names, forbidden)` reports names a student's cells bound, at top level,
  to a forbidden object, a subclass of a forbidden class or a partial of one: calls through them need no
  student frame, so neither the wrappers nor the profiler see a student behind them.

The guard cannot be uninstalled (audit hooks never can): install it only in a process made for grading.
"""

from __future__ import annotations

import ast
import functools
import importlib
import json
import os
import re
import sys
import threading
import types
from pathlib import Path
from typing import Callable, Iterable

SOLUTION_PREFIX = "<solution "

# Audit events refused once the guard is on, whoever raises them, and why:
REFUSED = {
    "sys.setprofile": "replaces or removes the guard's profile function (allowed only for the guard's own, in new threads)",
    "sys.settrace": "code run inside a trace function is invisible to the profile function",
    "ctypes.*": "raw memory and C calls can switch the guard off without any audited Python API",
    "gc.get_objects": "reaches every object, the guard's own state and the originals behind its wrappers included",
    "gc.get_referrers": "reaches the objects that hold a given one (e.g. the guard's closures)",
    "gc.get_referents": "reaches what an object holds (e.g. the originals inside the guard's wrappers)",
    "object.__setattr__ __code__": "swapping a function's code would re-route a guarded function or a course check",
    "object.__setattr__ __defaults__/__kwdefaults__ of the guard's functions": "would change what the guard compares with",
    "open /proc/<pid>/mem": "writing the process's own memory bypasses everything, as ctypes does",
}
# ... and refused only while a frame of a student's cell is on the stack (the library and the grader may need them):
REFUSED_FROM_STUDENT = {
    "code.__new__": "code.replace() or CodeType() copies a guarded function under a code object the guard does not know",
    "subprocess.Popen": "another interpreter runs without the guard",
    "os.system": "another interpreter runs without the guard",
    "os.exec": "replaces this process by one without the guard",
    "os.posix_spawn": "another interpreter runs without the guard",
    "os.fork": "os.spawn*, pty.spawn and the like fork, then exec a program without the guard",
    "os.forkpty": "forks, then the child may exec a program without the guard",
}
# Python 3.11 audits no thread start: _thread.start_new_thread (threading's too) is wrapped instead, and refused the same way.
REFUSED_BY_WRAPPER = {
    "_thread.start_new_thread": "a thread started by a student's cell runs without that cell's frames on its stack",
}
_PROTECTED_ATTRIBUTES = ("__defaults__", "__kwdefaults__")
_PROC_MEM = re.compile(r"^/proc/(self|thread-self|\d+)(/task/\d+)?/mem$")


class FromScratchViolation(Exception):
    """A student's cell used a PyTorch built-in its exercise forbids, or tried to reach around the guard."""


# ---------------------------------------------------------------------------------------------------------
# The forbidden lists


def forbidden_by_cell(source_notebook_path: str | os.PathLike) -> dict[str, list[str]]:
    """{grade_id: forbidden dotted names} for the solution cells of a source notebook that have a list."""
    notebook = json.loads(Path(source_notebook_path).read_text(encoding="utf-8"))
    found = {}
    for cell in notebook["cells"]:
        meta = cell.get("metadata", {})
        nbgrader = meta.get("nbgrader", {})
        names = meta.get("course", {}).get("forbidden")
        if cell.get("cell_type") == "code" and nbgrader.get("solution") and names:
            found[nbgrader["grade_id"]] = list(names)
    return found


def resolve(dotted: str) -> object:
    """The object a dotted name such as 'torch.nn.functional.layer_norm' names (importing its module); AttributeError if none."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            continue
        for part in parts[split:]:
            obj = getattr(obj, part)
        return obj
    raise AttributeError(f"nothing is called {dotted}")


def solution_cell(filename: str) -> str | None:
    """The grade_id in a filename such as '<solution rnn_step>', None for any other filename."""
    if filename.startswith(SOLUTION_PREFIX) and filename.endswith(">"):
        return filename[len(SOLUTION_PREFIX) : -1]
    return None


# ---------------------------------------------------------------------------------------------------------
# Static analysis of a student's cell

# name (as resolved) -> finding; a prefix ends with "." and matches everything under it
_SUSPICIOUS = {
    "importlib": "imports importlib",
    "importlib.": "imports importlib",
    "builtins.__import__": "uses __import__",
    "sys.setprofile": "sets sys.setprofile",
    "sys.getprofile": "reads sys.getprofile",
    "sys.settrace": "sets sys.settrace",
    "sys.gettrace": "reads sys.gettrace",
    "threading.settrace": "sets threading.settrace",
    "threading.setprofile": "sets threading.setprofile",
    "sys.addaudithook": "adds an audit hook (sys.addaudithook)",
    "sys.modules": "touches sys.modules",
    "sys._getframe": "inspects frames (sys._getframe)",
    "inspect.currentframe": "inspects frames (inspect.currentframe)",
    "inspect.stack": "inspects frames (inspect.stack)",
    "inspect.getouterframes": "inspects frames (inspect.getouterframes)",
    "inspect.getsource": "reads source code (inspect.getsource)",
    "gc.get_objects": "uses gc.get_objects",
    "gc.get_referrers": "uses gc.get_referrers",
    "gc.get_referents": "uses gc.get_referents",
    "ctypes": "uses ctypes",
    "ctypes.": "uses ctypes",
    "_ctypes": "uses ctypes",
    "_ctypes.": "uses ctypes",
    "cffi": "uses ctypes",
    "builtins.exec": "uses exec/eval/compile",
    "builtins.eval": "uses exec/eval/compile",
    "builtins.compile": "uses exec/eval/compile",
    "builtins": "imports builtins",
    "builtins.globals": "reads globals()",
    "types.CodeType": "builds code objects (types.CodeType)",
    "types.FunctionType": "builds functions (types.FunctionType)",
    "torch._VF": "uses torch._VF",
    "torch._VF.": "uses torch._VF",
    "torch._C": "uses torch._C internals",
    "torch._C.": "uses torch._C internals",
    "torch.ops": "uses the operator registry torch.ops",
    "torch.ops.": "uses the operator registry torch.ops",
    "torch.overrides": "uses torch.overrides",
    "torch.overrides.": "uses torch.overrides",
    "subprocess": "starts processes (subprocess)",
    "subprocess.": "starts processes (subprocess)",
    "multiprocessing": "starts processes (multiprocessing)",
    "multiprocessing.": "starts processes (multiprocessing)",
    "os.system": "starts processes (os.system)",
    "os.popen": "starts processes (os.popen)",
    "_thread": "starts raw threads (_thread)",
    "_thread.": "starts raw threads (_thread)",
    "atexit.register": "registers an exit hook (atexit)",
    "builtins.get_ipython": None,  # only its attributes below are findings
}
_SUSPICIOUS_ATTRIBUTES = {
    "register": None,  # events.register: checked with its receiver
    "ast_transformers": "changes IPython's AST transformers (ast_transformers)",
    "input_transformers_cleanup": "changes IPython's input transformers (input_transformers_cleanup)",
    "input_transformers_post": "changes IPython's input transformers (input_transformers_post)",
    "input_transformer_manager": "changes IPython's input transformers (input_transformer_manager)",
    "f_back": "inspects frames (f_back)",
    "f_globals": "inspects frames (f_globals)",
    "f_locals": "inspects frames (f_locals)",
    "f_code": "inspects frames (f_code)",
    "tb_frame": "inspects frames (tb_frame)",
    "gi_frame": "inspects frames (gi_frame)",
    "cr_frame": "inspects frames (cr_frame)",
    "__code__": "touches function internals (__code__)",
    "__closure__": "touches function internals (__closure__)",
    "cell_contents": "touches function internals (cell_contents)",
    "__globals__": "touches function internals (__globals__)",
    "__wrapped__": "touches function internals (__wrapped__)",
    "__defaults__": "touches function internals (__defaults__)",
    "__kwdefaults__": "touches function internals (__kwdefaults__)",
    "__builtins__": "touches __builtins__",
    "__subclasses__": "walks classes (__subclasses__)",
    "__dict__": "reads an object's __dict__",
    "__getattribute__": "calls __getattribute__ directly",
}
# the names the notebooks' setup cells bind (import torch; from torch import nn; from torch.nn import functional as F)
DEFAULT_ALIASES = {"torch": "torch", "nn": "torch.nn", "F": "torch.nn.functional"}
_DYNAMIC_CALLS = {"builtins.getattr", "builtins.setattr", "builtins.delattr", "builtins.hasattr", "operator.attrgetter"}
_BUILTIN_NAMES = {"getattr", "setattr", "delattr", "hasattr", "exec", "eval", "compile", "__import__", "globals", "open",
                  "vars", "get_ipython", "breakpoint"}


def _fold(node: ast.AST, constants: dict[str, str], unknown: str | None = None) -> str | None:
    """The string a constant expression evaluates to ('LS' + 'TM', ''.join([...]), f-strings, .format, [::-1]), else None.

    With `unknown`, a sum of strings stands for its unknown parts by that text (to find '.ipynb' in NAME + '.ipy' + 'nb').
    """
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id, unknown)
    if isinstance(node, ast.BinOp):
        left, right = _fold(node.left, constants, unknown), _fold(node.right, constants, unknown)
        if unknown is not None and isinstance(node.op, ast.Add):
            return (left if left is not None else unknown) + (right if right is not None else unknown)
        if isinstance(node.op, ast.Add) and left is not None and right is not None:
            return left + right
        if isinstance(node.op, ast.Mult) and left is not None and isinstance(node.right, ast.Constant) and isinstance(node.right.value, int):
            return left * node.right.value if 0 <= node.right.value < 100 else None
        if isinstance(node.op, ast.Mod) and left is not None:
            items = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
            values = [_fold(item, constants) for item in items]
            if None not in values:
                try:
                    return left % tuple(values)
                except (TypeError, ValueError):
                    return None
        return None
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            folded = _fold(value.value if isinstance(value, ast.FormattedValue) else value, constants)
            if folded is None:
                return None
            parts.append(folded)
        return "".join(parts)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
        base = _fold(node.value, constants)
        bounds = [node.slice.lower, node.slice.upper, node.slice.step]
        if base is not None and all(b is None or (isinstance(b, ast.Constant) and isinstance(b.value, int))
                                    or (isinstance(b, ast.UnaryOp) and isinstance(b.op, ast.USub) and isinstance(b.operand, ast.Constant))
                                    for b in bounds):
            values = [None if b is None else (b.value if isinstance(b, ast.Constant) else -b.operand.value) for b in bounds]
            return base[slice(*values)]
        return None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        receiver = _fold(node.func.value, constants)
        if receiver is None:
            return None
        method = node.func.attr
        if method == "join" and len(node.args) == 1 and isinstance(node.args[0], (ast.List, ast.Tuple)):
            items = [_fold(item, constants) for item in node.args[0].elts]
            return None if None in items else receiver.join(items)
        if method == "format" and not node.keywords:
            items = [_fold(item, constants) for item in node.args]
            return None if None in items else receiver.format(*items)
        if method in ("lower", "upper", "strip", "title", "capitalize", "swapcase") and not node.args:
            return getattr(receiver, method)()
        if method == "replace" and len(node.args) == 2:
            old, new = (_fold(a, constants) for a in node.args)
            return None if old is None or new is None else receiver.replace(old, new)
    return None


class _Reader(ast.NodeVisitor):
    """One pass over a cell: resolves expressions to dotted names with the aliases known so far."""

    def __init__(self, aliases: dict[str, str], constants: dict[str, str], star_modules: list[str], forbidden: dict[str, str]):
        self.aliases, self.constants, self.star_modules, self.forbidden = aliases, constants, star_modules, forbidden
        self.findings: list[str] = []
        self.changed = False

    # --- resolution
    def dotted(self, node: ast.AST) -> str | None:
        """The dotted name an expression stands for (through aliases, getattr with a constant name, __import__), else None."""
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return self.aliases[node.id]
            for module in self.star_modules:
                candidate = f"{module}.{node.id}"
                if candidate in self.forbidden:
                    return candidate
            return f"builtins.{node.id}" if node.id in _BUILTIN_NAMES else None
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base is not None else None
        if isinstance(node, ast.Call):
            func = self.dotted(node.func)
            if func in ("builtins.getattr",) and len(node.args) >= 2:
                base, name = self.dotted(node.args[0]), _fold(node.args[1], self.constants)
                if base is not None and name is not None:
                    return f"{base}.{name}"
            if func in ("builtins.__import__", "importlib.import_module") and node.args:
                self.note("uses __import__" if func == "builtins.__import__" else "imports importlib")
                name = _fold(node.args[0], self.constants)
                if name is not None:
                    with_fromlist = len(node.args) >= 4 or any(k.arg == "fromlist" for k in node.keywords)
                    return name if func == "importlib.import_module" or with_fromlist else name.split(".")[0]
            if func == "builtins.vars" and len(node.args) == 1:
                return self.dotted(node.args[0])
            if func == "functools.partial" and node.args:
                return self.dotted(node.args[0])
        if isinstance(node, ast.Subscript):  # vars(torch.nn)["LSTM"], torch.nn.__dict__["LSTM"]
            base = self.dotted(node.value)
            key = _fold(node.slice, self.constants)
            if base is not None and key is not None:
                return f"{base.removesuffix('.__dict__')}.{key}"
        return None

    def note(self, finding: str | None) -> None:
        if finding and finding not in self.findings:
            self.findings.append(finding)

    def bind(self, name: str, dotted: str | None) -> None:
        if dotted is not None and self.aliases.get(name) != dotted:
            self.aliases[name] = dotted
            self.changed = True

    # --- bindings
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.bind(alias.asname, alias.name)
            else:
                root = alias.name.split(".")[0]
                self.bind(root, root)
            self.check_name(alias.name, node, call=False)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return
        for alias in node.names:
            if alias.name == "*":
                if node.module not in self.star_modules:
                    self.star_modules.append(node.module)
                    self.changed = True
                continue
            self.bind(alias.asname or alias.name, f"{node.module}.{alias.name}")
            self.check_name(f"{node.module}.{alias.name}", node, call=False)
        self.check_name(node.module, node, call=False)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self.assign(target, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.assign(node.target, node.value)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.assign(node.target, node.value)
        self.generic_visit(node)

    def assign(self, target: ast.AST, value: ast.AST) -> None:
        if isinstance(target, ast.Name):
            self.bind(target.id, self.dotted(value))
            folded = _fold(value, self.constants)
            if folded is not None and self.constants.get(target.id) != folded:
                self.constants[target.id] = folded
                self.changed = True
        elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)) and len(target.elts) == len(value.elts):
            for t, v in zip(target.elts, value.elts):
                self.assign(t, v)

    # --- findings
    def check_name(self, dotted: str | None, node: ast.AST, call: bool) -> None:
        if dotted is None:
            return
        if dotted.startswith("torch.ops."):
            self.note(_SUSPICIOUS["torch.ops"])
            if dotted.startswith("torch.ops.aten."):  # torch.ops.aten.lstm_cell(.default) is torch.lstm_cell's operator
                dotted = "torch." + dotted.split(".")[3]
        public = self.forbidden.get(dotted) or self.forbidden.get(_canonical(dotted) or "")
        if public:
            self.note(f"{'calls' if call else 'uses'} {public}")
        if dotted in _SUSPICIOUS:
            self.note(_SUSPICIOUS[dotted])
        else:
            for prefix, finding in _SUSPICIOUS.items():
                if prefix.endswith(".") and dotted.startswith(prefix):
                    self.note(finding)
                    break

    def visit_Call(self, node: ast.Call) -> None:
        func = self.dotted(node.func)
        self.check_name(func, node, call=True)
        if func in _DYNAMIC_CALLS and len(node.args) >= 2 and _fold(node.args[1], self.constants) is None:
            self.note(f"uses {func.split('.')[-1]} with a computed name")
        if func == "builtins.__import__" or func == "importlib.import_module":
            self.note("uses __import__" if func == "builtins.__import__" else "imports importlib")
            resolved = self.dotted(node)
            if resolved is None:
                self.note("imports a module with a computed name")
            else:
                self.check_name(resolved, node, call=False)
        if func in ("builtins.getattr", "functools.partial", "builtins.vars"):
            self.check_name(self.dotted(node), node, call=False)
        if func == "builtins.open" or (func or "").endswith((".open", ".read_text", ".read_bytes", ".load", ".read")):
            for arg in node.args[:1]:
                text = _fold(arg, self.constants)
                if text is not None and ".ipynb" in text:
                    self.note("reads the notebook file (.ipynb)")
        if isinstance(node.func, ast.Attribute) and node.func.attr == "register" and isinstance(node.func.value, ast.Attribute) \
                and node.func.value.attr == "events":
            self.note("registers an IPython hook (events.register)")
        if isinstance(node.func, ast.Attribute) and func is None and f"torch.Tensor.{node.func.attr}" in self.forbidden:
            self.note(f"calls .{node.func.attr}() (torch.Tensor.{node.func.attr})")
        if func is None:
            self.visit(node.func)
        for child in [*node.args, *node.keywords]:
            self.visit(child)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.note(_SUSPICIOUS_ATTRIBUTES.get(node.attr))
        resolved = self.dotted(node)
        self.check_name(resolved, node, call=False)
        if resolved is None:
            self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        folded = _fold(node, self.constants, unknown="\0")
        if folded is not None and ".ipynb" in folded:
            self.note("reads the notebook file (.ipynb)")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        self.check_name(self.dotted(node), node, call=False)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        resolved = self.dotted(node)
        if resolved is not None:
            self.check_name(resolved, node, call=False)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and ".ipynb" in node.value:
            self.note("reads the notebook file (.ipynb)")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            public = self.forbidden.get(self.dotted(base) or "") or self.forbidden.get(_canonical(self.dotted(base) or "") or "")
            if public:
                self.note(f"subclasses {public}")
        self.generic_visit(node)


@functools.lru_cache(maxsize=4096)
def _canonical(dotted: str) -> str | None:
    """For a name under torch that names the same object as another (torch._VF.lstm, torch.nn.modules.rnn.LSTM),
    an id for that object: 'id:<n>' (compared with the ids of the forbidden objects); None when it names nothing."""
    if not dotted.startswith("torch.") or "torch" not in sys.modules:
        return None
    obj = sys.modules["torch"]
    try:
        for part in dotted.split(".")[1:]:
            obj = getattr(obj, part)  # loaded modules and attributes only: a student's name imports nothing
    except Exception:  # noqa: BLE001: any failure means "not a known object"
        return None
    return f"id:{id(obj)}"


def static_flags(source: str, forbidden: list[str], *, context: str = "") -> list[str]:
    """Findings for the instructor about a student's cell source: forbidden names it reaches, tricks it uses; [] if it does not parse.

    Aliases bound in `context` (e.g. the notebook's earlier cells) count too, as do DEFAULT_ALIASES (torch, nn, F).
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    try:
        context_tree = ast.parse(context)
    except (SyntaxError, ValueError):
        context_tree = ast.Module(body=[], type_ignores=[])
    tree = ast.Module(body=[*[n for n in context_tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.Assign))], *tree.body],
                      type_ignores=[])
    names = {name: name for name in forbidden}
    for name in forbidden:
        canonical = _canonical(name)
        if canonical is not None:
            names.setdefault(canonical, name)
    aliases: dict[str, str] = dict(DEFAULT_ALIASES)
    constants: dict[str, str] = {}
    star_modules: list[str] = []
    for _ in range(10):  # aliases may be bound after their first use: read until nothing new is learnt
        reader = _Reader(aliases, constants, star_modules, names)
        reader.visit(tree)
        if not reader.changed:
            break
    return reader.findings


# ---------------------------------------------------------------------------------------------------------
# The runtime guard

_WRAPPERS: dict[int, str] = {}  # id(wrapper) -> public name of what it stands for (read by aliased_builtins)


def _homes(obj: object) -> list[tuple[object, str]]:
    """(namespace, attribute) pairs of loaded modules and torch.Tensor that hold `obj` itself."""
    found = []
    for module in list(sys.modules.values()):
        if not isinstance(module, types.ModuleType) or module.__name__ == __name__:
            continue
        try:
            namespace = vars(module)
        except TypeError:
            continue
        for attribute, value in list(namespace.items()):
            if value is obj:
                found.append((module, attribute))
    if "torch" in sys.modules:
        tensor = sys.modules["torch"].Tensor
        for attribute, value in list(vars(tensor).items()):
            if value is obj:
                found.append((tensor, attribute))
    return found


class Guard:
    """The runtime side of the from-scratch rule for one grading process; see the module's docstring.

    forbidden: {cell grade_id: dotted names}; cell_of(filename): the grade_id of a student's code object's
    filename, None for code that is not a student's; on_violation(text) is called with each new violation.
    """

    def __init__(self, forbidden: dict[str, list[str]], cell_of: Callable[[str], str | None] = solution_cell,
                 on_violation: Callable[[str], None] | None = None, watch_originals: bool = True):
        self.forbidden = {cell: frozenset(names) for cell, names in forbidden.items() if names}
        self.watch_originals = watch_originals  # the profile function: it only records, and costs every call
        self.cell_of = cell_of
        self.on_violation = on_violation
        self.violations: list[str] = []
        self.unresolved: list[str] = []
        self.installed = False

    # --- what a violation is
    def _offender(self, frame: types.FrameType | None, name: str) -> str | None:
        """The cell of the innermost frame from `frame` outwards whose cell forbids `name`, else None."""
        cell_of, forbidden = self.cell_of, self.forbidden
        while frame is not None:
            cell = cell_of(frame.f_code.co_filename)
            if cell is not None and name in forbidden.get(cell, ()):
                return cell
            frame = frame.f_back
        return None

    def _any_student(self, frame: types.FrameType | None) -> str | None:
        """The cell of the innermost student frame from `frame` outwards (possibly ''), else None."""
        while frame is not None:
            cell = self.cell_of(frame.f_code.co_filename)
            if cell is not None:
                return cell
            frame = frame.f_back
        return None

    def _refuse(self, what: str, frame: types.FrameType | None) -> None:
        """Record that the innermost student cell on the stack (if any) tried `what`, and raise FromScratchViolation."""
        cell = self._any_student(frame)
        self._record(f"{cell or 'code outside the student cells'} tried {what}")
        raise FromScratchViolation(f"the from-scratch guard refuses {what}")

    def _record(self, text: str) -> None:
        if text not in self.violations:
            self.violations.append(text)
            if self.on_violation is not None:
                self.on_violation(text)

    # --- installation
    def install(self) -> "Guard":
        """Wrap the forbidden objects, start the profile function in this thread and new ones, add the audit hook."""
        if self.installed:
            raise RuntimeError("this guard is already installed")
        self.installed = True
        names = sorted({name for names in self.forbidden.values() for name in names})
        python_codes: dict[types.CodeType, str] = {}
        builtins: dict[object, str] = {}
        methods: dict[str, tuple[type, str]] = {}  # C method name -> (owner class, public name)
        protected: list[object] = []
        guarded_globals: list[dict] = []
        for name in names:
            try:
                obj = resolve(name)
            except Exception:  # noqa: BLE001: a name this torch lacks is reported, not fatal
                self.unresolved.append(name)
                continue
            for code in _python_codes(obj):
                python_codes[code] = name
            for function in _python_functions(obj):
                if not any(function.__globals__ is seen for seen in guarded_globals):
                    guarded_globals.append(function.__globals__)
            for builtin in _c_callables(obj, name):
                builtins[builtin] = name
            if isinstance(obj, (types.MethodDescriptorType, types.WrapperDescriptorType)):
                methods[obj.__name__] = (obj.__objclass__, name)
            protected.extend(self._interpose(obj, name))
        import _thread

        raw_start = _thread.start_new_thread
        profile = self._make_profile(python_codes, builtins, methods, tuple(guarded_globals), raw_start)
        protected.append(self._guard_thread_starts(raw_start, profile))
        hook = self._make_audit_hook(profile, [*protected, profile])
        if self.watch_originals:
            sys.setprofile(profile)
            threading.setprofile(profile)
        sys.addaudithook(hook)
        return self

    def _interpose(self, obj: object, name: str) -> list[object]:
        """Put checking wrappers where `obj` (or, for a class, its __init__ and forward) is published; returns them."""
        wrappers = []
        if isinstance(obj, type):
            for attribute in ("__init__", "forward"):
                original = vars(obj).get(attribute)
                if isinstance(original, types.FunctionType):
                    wrapper = self._wrapper(original, name)
                    setattr(obj, attribute, wrapper)
                    wrappers.append(wrapper)
            return wrappers
        if not callable(obj):
            return wrappers
        wrapper = self._wrapper(obj, name)
        homes = _homes(obj)
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, types.MethodDescriptorType) and issubclass(torch.Tensor, obj.__objclass__):
            homes.append((torch.Tensor, obj.__name__))  # x.softmax(...) then finds the wrapper before TensorBase's method
        if torch is not None and isinstance(obj, types.BuiltinFunctionType) and getattr(torch._VF, obj.__name__, None) is obj:
            homes.append((torch._VF, obj.__name__))  # torch._VF looks its names up in torch._C._VariableFunctions
        for namespace, attribute in homes:
            try:
                setattr(namespace, attribute, wrapper)
            except (AttributeError, TypeError):
                continue
        if homes:
            wrappers.append(wrapper)
        return wrappers

    def _guard_thread_starts(self, raw_start: Callable, profile: Callable) -> Callable:
        """Replace _thread.start_new_thread (and threading's reference) by a function that refuses starts from a student's
        stack and makes sure threading's bootstrap installs `profile` in the new thread; returns it."""
        any_student, refuse, getframe = self._any_student, self._refuse, sys._getframe
        bootstrap, bootstrap_inner, threading_module = threading.Thread._bootstrap, threading.Thread._bootstrap_inner, threading

        def start_new_thread(function, *args):
            frame = getframe(1)
            if any_student(frame) is not None:
                refuse("_thread.start_new_thread", frame)
            thread = getattr(function, "__self__", None)
            if getattr(function, "__func__", None) is bootstrap and isinstance(thread, threading_module.Thread) \
                    and type(thread)._bootstrap_inner is bootstrap_inner:
                threading_module._profile_hook = profile  # its bootstrap installs the profile function
            return raw_start(function, *args)

        start_new_thread.__doc__ = raw_start.__doc__
        for namespace, attribute in _homes(raw_start):
            setattr(namespace, attribute, start_new_thread)
        return start_new_thread

    def _wrapper(self, original: Callable, name: str) -> Callable:
        """A function that checks the stack for a student's frame that forbids `name`, then calls `original`."""
        offender, record, getframe = self._offender, self._record, sys._getframe

        def wrapper(*args, **kwargs):
            cell = offender(getframe(1), name)
            if cell is not None:
                text = f"{cell} calls {name}"
                record(text)
                raise FromScratchViolation(f"{text}: this exercise asks you to write it yourself")
            return original(*args, **kwargs)

        for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
            try:
                setattr(wrapper, attribute, getattr(original, attribute))
            except (AttributeError, TypeError):
                pass
        _WRAPPERS[id(wrapper)] = name
        return wrapper

    def _make_profile(self, python_codes: dict, builtins: dict, methods: dict, guarded_globals: tuple, raw_start: Callable) -> Callable:
        """The profile function: records calls of the originals (Python code objects, C functions) from a student's stack."""
        offender, record, any_student = self._offender, self._record, self._any_student
        builtin_method = types.BuiltinMethodType
        codes = types.MappingProxyType(dict(python_codes))
        c_functions = types.MappingProxyType(dict(builtins))
        c_methods = types.MappingProxyType(dict(methods))

        def profile(frame, event, arg):
            if event == "c_call":
                name = c_functions.get(arg) if type(arg) is builtin_method else None
                if name is None and c_methods and type(arg) is builtin_method:
                    owner = c_methods.get(arg.__name__)
                    if owner is not None and isinstance(arg.__self__, owner[0]):
                        name = owner[1]
                if name is not None:
                    cell = offender(frame, name)
                    if cell is not None:
                        record(f"{cell} calls {name}")
                elif arg is raw_start:
                    cell = any_student(frame)
                    if cell is not None:
                        record(f"{cell} tried _thread.start_new_thread")
            elif event == "call":
                frame_globals = frame.f_globals
                for candidate in guarded_globals:
                    if frame_globals is candidate:
                        name = codes.get(frame.f_code)
                        if name is not None:
                            cell = offender(frame.f_back, name)
                            if cell is not None:
                                record(f"{cell} calls {name}")
                        break

        return profile

    def _make_audit_hook(self, profile: Callable, protected: list[object]) -> Callable:
        """The audit hook that refuses the events in REFUSED always and those in REFUSED_FROM_STUDENT from a student's stack."""
        any_student, refuse, getframe = self._any_student, self._refuse, sys._getframe
        bootstrap_code = threading.Thread._bootstrap_inner.__code__
        protected_ids = frozenset(id(obj) for obj in protected)
        from_student = frozenset(REFUSED_FROM_STUDENT)
        always = frozenset(("sys.settrace", "gc.get_objects", "gc.get_referrers", "gc.get_referents"))
        watched = always | from_student | {"sys.setprofile", "object.__setattr__", "open"}
        proc_mem, realpath = _PROC_MEM, os.path.realpath
        threading_module = threading

        def hook(event, args):
            if event not in watched:
                if event.startswith("ctypes."):
                    refuse(event, getframe(1))
                return
            if event in always:
                refuse(event, getframe(1))
            if event == "sys.setprofile":
                caller = getframe(1)
                if caller.f_code is bootstrap_code and threading_module._profile_hook is profile:
                    return
                refuse(event, caller)
            if event == "object.__setattr__":
                target, attribute = args[0], args[1]
                if type(attribute) is str and (attribute == "__code__" or
                                               (attribute in _PROTECTED_ATTRIBUTES and id(target) in protected_ids)):
                    refuse(f"setting {attribute}", getframe(1))
                return
            if event == "open":
                path = args[0]
                if type(path) in (str, bytes):
                    if proc_mem.match(realpath(os.fsdecode(path))):
                        refuse("opening the process's memory", getframe(1))
                return
            if event in from_student:
                frame = getframe(1)
                if any_student(frame) is not None:
                    refuse(event, frame)

        return hook


def install_guard(forbidden: dict[str, list[str]], cell_of: Callable[[str], str | None] = solution_cell,
                  on_violation: Callable[[str], None] | None = None, watch_originals: bool = True) -> Guard:
    """Install a Guard for this process (for good: it cannot be removed) and return it; its .violations fill as cells run.

    watch_originals=False leaves out the profile function, which only records (and slows every call): the wrappers,
    which raise, and the audit hook stay.
    """
    return Guard(forbidden, cell_of, on_violation, watch_originals).install()


def _python_codes(obj: object) -> list[types.CodeType]:
    """The code objects a forbidden object runs: a Python function's, or every function a class defines itself."""
    if isinstance(obj, types.FunctionType):
        return [obj.__code__]
    if isinstance(obj, type):
        codes = []
        for value in vars(obj).values():
            function = value.__func__ if isinstance(value, (staticmethod, classmethod)) else (value.fget if isinstance(value, property) else value)
            if isinstance(function, types.FunctionType):
                codes.append(function.__code__)
        return codes
    return []


def _python_functions(obj: object) -> list[types.FunctionType]:
    """A forbidden Python function itself, or the functions a forbidden class defines."""
    if isinstance(obj, types.FunctionType):
        return [obj]
    if isinstance(obj, type):
        return [v for v in vars(obj).values() if isinstance(v, types.FunctionType)]
    return []


def _c_callables(obj: object, name: str) -> list[object]:
    """The C functions behind a forbidden builtin: itself, and torch.ops.aten's operator of the same name (all overloads)."""
    if not isinstance(obj, types.BuiltinFunctionType):
        return []
    found = [obj]
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            packet = getattr(torch.ops.aten, obj.__name__)
        except (AttributeError, RuntimeError):
            return found
        for overload in ["default", *packet.overloads()]:
            try:
                op = getattr(getattr(packet, overload), "_op", None)
            except (AttributeError, RuntimeError):
                continue
            if isinstance(op, types.BuiltinFunctionType):
                found.append(op)
        if isinstance(getattr(packet, "_op", None), types.BuiltinFunctionType):
            found.append(packet._op)
    return found


# ---------------------------------------------------------------------------------------------------------
# Top-level aliasing


def _forbidden_identity(obj: object, forbidden: dict[int, str]) -> str | None:
    """The public name of the forbidden object `obj` is (or wraps), else None."""
    return forbidden.get(id(obj)) or _WRAPPERS.get(id(obj))


def _describe(value: object, forbidden: dict[int, str], classes: list[tuple[type, str]], depth: int = 0) -> str | None:
    """How `value` stands for a forbidden object ('is X', 'subclasses X', 'is functools.partial of X'...), else None."""
    if depth > 3:
        return None
    name = _forbidden_identity(value, forbidden)
    if name is not None:
        return f"is {name}"
    if isinstance(value, functools.partial):
        inner = _describe(value.func, forbidden, classes, depth + 1)
        return f"is functools.partial of {inner.removeprefix('is ')}" if inner else None
    if isinstance(value, (staticmethod, classmethod)):
        return _describe(value.__func__, forbidden, classes, depth + 1)
    if isinstance(value, types.MethodType):
        return _describe(value.__func__, forbidden, classes, depth + 1)
    if isinstance(value, type):
        for cls, public in classes:
            if value is not cls and issubclass(value, cls):
                return f"subclasses {public}"
        for attribute, member in vars(value).items():
            inner = _describe(member, forbidden, classes, depth + 1)
            if inner:
                return f"has {attribute} that {inner}"
        return None
    for cls, public in classes:
        if isinstance(value, cls):
            return f"is an instance of {public}"
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in list(value)[:100]:
            inner = _describe(item, forbidden, classes, depth + 1)
            if inner:
                return f"holds one that {inner}"
    if isinstance(value, dict):
        for item in list(value.values())[:100]:
            inner = _describe(item, forbidden, classes, depth + 1)
            if inner:
                return f"holds one that {inner}"
    return None


def aliased_builtins(namespace: dict, student_names: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """Findings such as 'rnn_step is torch.rnn_tanh_cell' for names the student's cells bound to forbidden objects."""
    by_id: dict[int, str] = {}
    classes: list[tuple[type, str]] = []
    for name in forbidden:
        try:
            obj = resolve(name)
        except Exception:  # noqa: BLE001
            continue
        by_id.setdefault(id(obj), name)
        if isinstance(obj, type):
            classes.append((obj, name))
            for attribute in ("__init__", "forward"):
                member = vars(obj).get(attribute)
                if member is not None:
                    by_id.setdefault(id(member), f"{name}.{attribute}")
    findings = []
    for student_name in student_names:
        if student_name not in namespace:
            continue
        how = _describe(namespace[student_name], by_id, classes)
        if how:
            findings.append(f"{student_name} {how}")
    return findings
