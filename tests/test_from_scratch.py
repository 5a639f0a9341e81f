"""The from-scratch rule: forbidden lists in the source notebooks, their notes in the release, the static flags,
the runtime guard (in subprocesses: it cannot be uninstalled) and the top-level alias check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
import torch

from conftest import ROOT
from notebooks import assignments, forbidden, forbidden_note, runnable

sys.path.insert(0, str(ROOT / "autograder"))
from from_scratch import REFUSED, REFUSED_BY_WRAPPER, REFUSED_FROM_STUDENT, forbidden_by_cell, resolve, static_flags  # noqa: E402

ASSIGNMENTS = assignments()
LSTM = ["torch.nn.LSTM", "torch.nn.LSTMCell", "torch.lstm", "torch.lstm_cell"]
SDPA = ["torch.nn.functional.scaled_dot_product_attention"]
SOFTMAX = ["torch.softmax", "torch.Tensor.softmax", "torch.nn.functional.softmax"]


def source_notebook(assignment):
    return nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)


def solution_cells(notebook):
    return [c for c in notebook.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")]


def reference_source(cell) -> str:
    """The reference solution of a cell: the whole cell with the solution markers removed."""
    return runnable(cell.source)


# --- the lists and their notes ------------------------------------------------------------------------------


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_forbidden_lists_name_real_public_objects_and_sit_on_solution_cells(assignment):
    notebook = source_notebook(assignment)
    listed = {c.metadata["nbgrader"]["grade_id"]: forbidden(c) for c in notebook.cells if forbidden(c)}
    assert listed, f"{assignment} forbids nothing"
    assert forbidden_by_cell(ROOT / "solutions" / assignment / f"{assignment}.ipynb") == listed
    answers = {c.metadata["nbgrader"]["grade_id"] for c in solution_cells(notebook)}
    assert set(listed) <= answers, "a forbidden list on a cell that is not a solution cell"
    for names in listed.values():
        assert len(names) == len(set(names))
        for name in names:
            assert name.startswith(("torch.", "shared.")) and resolve(name) is not None, name


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_shows_each_exercise_what_it_may_not_use(assignment):
    """The note comes from the metadata (tools/from_scratch_notes.py) and survives nbgrader into the release."""
    source = {c.metadata["nbgrader"]["grade_id"]: c for c in solution_cells(source_notebook(assignment))}
    release = nbformat.read(ROOT / "notebooks" / assignment / f"{assignment}.ipynb", as_version=4)
    released = {c.metadata["nbgrader"]["grade_id"]: c for c in release.cells if c.metadata.get("nbgrader", {}).get("solution")}
    for grade_id, cell in source.items():
        note = forbidden_note(forbidden(cell))
        assert cell.source.startswith(note), f"{grade_id}: run python tools/from_scratch_notes.py"
        assert released[grade_id].source.startswith(note), f"{grade_id}: run make release"
        if note:
            shown = re.findall(r"(?:torch|shared)[\w.]+", note)
            assert shown == forbidden(cell)
        else:
            assert "Not allowed here" not in released[grade_id].source


def test_notes_tool_reports_nothing_out_of_date():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "from_scratch_notes.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_note_wraps_long_lists_and_is_replaced_not_stacked():
    from notebooks import NOTE_WIDTH, with_forbidden_note

    names = [f"torch.nn.functional.some_long_name_{i}" for i in range(8)]
    note = forbidden_note(names)
    assert all(len(line) <= NOTE_WIDTH for line in note.splitlines()) and len(note.splitlines()) > 1
    once = with_forbidden_note("def f():\n    pass\n", names)
    assert with_forbidden_note(once, names) == once
    assert with_forbidden_note(once, ["torch.lstm"]) == forbidden_note(["torch.lstm"]) + "def f():\n    pass\n"
    assert with_forbidden_note(once, []) == "def f():\n    pass\n"


# --- static flags ---------------------------------------------------------------------------------------------


def test_reference_solutions_raise_no_static_flag():
    for assignment in ASSIGNMENTS:
        notebook = source_notebook(assignment)
        every_name = sorted({name for cell in notebook.cells for name in forbidden(cell)})
        context = "\n".join(c.source for c in notebook.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade_id") == "setup")
        for cell in solution_cells(notebook):
            grade_id = cell.metadata["nbgrader"]["grade_id"]
            assert static_flags(reference_source(cell), forbidden(cell), context=context) == [], (assignment, grade_id)
            # nor against every list of its notebook (a cell may call another cell's function)
            assert static_flags(reference_source(cell), every_name, context=context) == [], (assignment, grade_id)


STATIC_CASES = [
    ("import torch.nn as tnn\ndef f(x): return tnn.LSTM(3, 4)(x)", LSTM, "calls torch.nn.LSTM"),
    ("from torch.nn import LSTM as L\ndef f(x): return L(3, 4)(x)", LSTM, "calls torch.nn.LSTM"),
    ("from torch import nn as n\ndef f(): return n.LSTM", LSTM, "uses torch.nn.LSTM"),
    ("def f(): return nn.LSTMCell(3, 4)", LSTM, "calls torch.nn.LSTMCell"),  # nn from the setup cell
    ("G = torch.nn.functional\ndef f(q): return G.scaled_dot_product_attention(q, q, q)", SDPA,
     "calls torch.nn.functional.scaled_dot_product_attention"),
    ("def f(q): return F.scaled_dot_product_attention(q, q, q)", SDPA, "calls torch.nn.functional.scaled_dot_product_attention"),
    ("def f(): return getattr(torch.nn, 'LS' + 'TM')(3, 4)", LSTM, "calls torch.nn.LSTM"),
    ("def f(): return getattr(torch.nn, ''.join(['LS', 'TM']))", LSTM, "uses torch.nn.LSTM"),
    ("def f(): return getattr(torch.nn, '{}{}'.format('LS', 'TM'))", LSTM, "uses torch.nn.LSTM"),
    ("def f(): return getattr(torch.nn, f\"{'LS'}TM\")", LSTM, "uses torch.nn.LSTM"),
    ("def f(): return getattr(torch.nn, 'MTSL'[::-1])", LSTM, "uses torch.nn.LSTM"),
    ("NAME = 'lstm_' + 'cell'\ndef f(): return getattr(torch, NAME)", LSTM, "uses torch.lstm_cell"),
    ("def f(name): return getattr(torch.nn, name)", LSTM, "uses getattr with a computed name"),
    ("def f(): return __import__('torch').nn.LSTM", LSTM, "uses torch.nn.LSTM"),
    ("def f(): return __import__('torch.nn', fromlist=['LSTM']).LSTM", LSTM, "uses __import__"),
    ("import importlib\ndef f(): return importlib.import_module('torch.nn').LSTM", LSTM, "uses torch.nn.LSTM"),
    ("import importlib\ndef f(): return importlib.import_module('torch.nn')", [], "imports importlib"),
    ("def f(x, s, w): return torch._VF.lstm_cell(x, s, w, w)", LSTM, "calls torch.lstm_cell"),
    ("def f(x, s, w): return torch._VF.lstm_cell(x, s, w, w)", LSTM, "uses torch._VF"),
    ("def f(x, s, w): return torch.ops.aten.lstm_cell.default(x, s, w, w)", LSTM, "calls torch.lstm_cell"),
    ("def f(x, s, w): return torch.ops.aten.lstm_cell(x, s, w, w)", LSTM, "uses the operator registry torch.ops"),
    ("x = torch._C._VariableFunctions.lstm_cell", LSTM, "uses torch.lstm_cell"),
    ("import torch.nn.modules.rnn as rnn\ndef f(): return rnn.LSTM(3, 4)", LSTM, "calls torch.nn.LSTM"),
    ("L = nn.LSTM\ndef f(): return L(3, 4)", LSTM, "calls torch.nn.LSTM"),
    ("def f(): return L(3, 4)\nL = nn.LSTM", LSTM, "calls torch.nn.LSTM"),  # bound after its use
    ("A, B = nn.LSTM, 1\ndef f(): return A(3, 4)", LSTM, "calls torch.nn.LSTM"),
    ("def f():\n    if (L := nn.LSTM):\n        return L(3, 4)", LSTM, "calls torch.nn.LSTM"),
    ("import functools\nstep = functools.partial(torch.lstm_cell, w_ih=1)", LSTM, "uses torch.lstm_cell"),
    ("from functools import partial\nstep = partial(nn.LSTMCell, 3)", LSTM, "uses torch.nn.LSTMCell"),
    ("class Cell(nn.LSTMCell):\n    pass", LSTM, "subclasses torch.nn.LSTMCell"),
    ("step = lambda *a: torch.lstm_cell(*a)", LSTM, "calls torch.lstm_cell"),
    ("from torch.nn import *\ndef f(): return LSTM(3, 4)", LSTM, "calls torch.nn.LSTM"),
    ("m = vars(torch.nn)['LSTM']", LSTM, "uses torch.nn.LSTM"),
    ("m = torch.nn.__dict__['LSTM']", LSTM, "uses torch.nn.LSTM"),
    ("def softmax(y): return y.softmax(0)", SOFTMAX, "calls .softmax() (torch.Tensor.softmax)"),
    ("def softmax(y): return torch.Tensor.softmax(y, 0)", SOFTMAX, "calls torch.Tensor.softmax"),
    ("get_ipython().events.register('pre_run_cell', print)", [], "registers an IPython hook (events.register)"),
    ("get_ipython().ast_transformers.append(object())", [], "changes IPython's AST transformers (ast_transformers)"),
    ("ip = get_ipython()\nip.input_transformers_post.append(str)", [], "changes IPython's input transformers (input_transformers_post)"),
    ("ip = get_ipython()\nip.input_transformers_cleanup.append(str)", [], "changes IPython's input transformers (input_transformers_cleanup)"),
    ("import sys\nsys.setprofile(None)", [], "sets sys.setprofile"),
    ("import sys as s\ns.settrace(None)", [], "sets sys.settrace"),
    ("import threading\nthreading.settrace(print)", [], "sets threading.settrace"),
    ("from sys import addaudithook\naddaudithook(print)", [], "adds an audit hook (sys.addaudithook)"),
    ("import gc\ngc.get_objects()", [], "uses gc.get_objects"),
    ("import gc\ngc.get_referrers(torch)", [], "uses gc.get_referrers"),
    ("import inspect\ninspect.currentframe().f_back", [], "inspects frames (inspect.currentframe)"),
    ("import sys\nsys._getframe(1)", [], "inspects frames (sys._getframe)"),
    ("import ctypes", [], "uses ctypes"),
    ("from ctypes import pythonapi", [], "uses ctypes"),
    ("exec('x = 1')", [], "uses exec/eval/compile"),
    ("y = eval('1 + 1')", [], "uses exec/eval/compile"),
    ("code = compile('1', 'f', 'eval')", [], "uses exec/eval/compile"),
    ("import sys\ntorch_again = sys.modules['torch']", [], "touches sys.modules"),
    ("text = open('03_rnn_lstm.ipynb').read()", [], "reads the notebook file (.ipynb)"),
    ("import json\nanswers = json.load(open(NAME + '.ipy' + 'nb'))", [], "reads the notebook file (.ipynb)"),
    ("def f(g): return g.__closure__[0].cell_contents", [], "touches function internals (__closure__)"),
]


@pytest.mark.parametrize("source, names, finding", STATIC_CASES, ids=[f"{i:02d}" for i in range(len(STATIC_CASES))])
def test_static_flags_catch_every_variant(source, names, finding):
    assert finding in static_flags(source, names), static_flags(source, names)


def test_static_flags_stay_quiet_on_allowed_names_and_unparsable_source():
    assert static_flags("def f(x): return torch.softmax(x, -1)", LSTM) == []  # softmax is allowed in an LSTM cell
    assert static_flags("self.lstm = LSTM(3, 4)\nh = self.lstm(x)", LSTM) == []  # the student's own class
    assert static_flags("def f(:\n", LSTM) == []
    assert static_flags("out = nn.GRU(3, 4)(x)", LSTM) == []


# --- the runtime guard ----------------------------------------------------------------------------------------

CHILD = r"""
import functools, json, sys, threading
sys.path.insert(0, {autograder!r}); sys.path.insert(0, {root!r})
import torch
from torch import nn
from torch.nn import functional as F
from from_scratch import FromScratchViolation, aliased_builtins, install_guard

cases = json.loads({cases!r})
guard = install_guard({{case["cell"]: case.get("forbidden", []) for case in cases}})
results = {{}}
for case in cases:
    namespace = {{"torch": torch, "nn": nn, "F": F, "functools": functools, "json": json}}
    before = set(namespace)
    student_names = set()
    outcome = "ok"
    try:
        exec(compile(case["source"], f"<solution {{case['cell']}}>", "exec"), namespace)
        student_names = set(namespace) - before
        exec(compile(case.get("test", ""), f"<test test_{{case['cell']}}>", "exec"), namespace)
        outcome = namespace.get("result", "ok")
    except FromScratchViolation as error:
        outcome = f"FromScratchViolation: {{error}}"
    except Exception as error:
        outcome = f"{{type(error).__name__}}: {{error}}"
    results[case["cell"]] = {{
        "outcome": outcome,
        "violations": [v for v in guard.violations if v.split(" ")[0] == case["cell"]],
        "aliased": aliased_builtins(namespace, sorted(student_names), case.get("forbidden", [])),
        "profile_kept": sys.getprofile() is not None,
    }}
results["__all__"] = guard.violations
print("RESULTS" + json.dumps(results))
"""


def run_guarded(cases: list[dict]) -> dict:
    """Run each case {cell, forbidden, source, test} in one fresh guarded process; {cell: what happened}."""
    child = CHILD.format(autograder=str(ROOT / "autograder"), root=str(ROOT), cases=json.dumps(cases))
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULTS"))
    return json.loads(line.removeprefix("RESULTS"))


SETUP = "x = torch.randn(2, 3); h = torch.zeros(2, 4); W = torch.randn(16, 3); U = torch.randn(16, 4)\n"
CAUGHT = {
    "alias_class": (LSTM, "L = nn.LSTMCell\ndef step(x, h):\n    return L(3, 4)(x, (h, h))", "torch.nn.LSTMCell"),
    "alias_module": (LSTM, "import torch.nn as tnn\ndef step(x, h):\n    return tnn.LSTMCell(3, 4)(x, (h, h))", "torch.nn.LSTMCell"),
    "getattr_string": (LSTM, "def step(x, h):\n    return getattr(torch, 'lstm' + '_cell')(x, (h, h), W, U)", "torch.lstm_cell"),
    "computed_getattr": (LSTM, "def step(x, h):\n    name = ''.join(reversed('llec_mtsl'))\n    return getattr(torch, name)(x, (h, h), W, U)",
                         "torch.lstm_cell"),
    "partial_builtin": (LSTM, "def step(x, h):\n    return functools.partial(torch.lstm_cell, w_ih=W, w_hh=U)(x, (h, h))", "torch.lstm_cell"),
    "map_builtin": (LSTM, "def step(x, h):\n    return list(map(torch.lstm_cell, [x], [(h, h)], [W], [U]))[0]", "torch.lstm_cell"),
    "lambda_builtin": (LSTM, "step = lambda x, h: torch.lstm_cell(x, (h, h), W, U)", "torch.lstm_cell"),
    "vf_builtin": (LSTM, "def step(x, h):\n    return torch._VF.lstm_cell(x, (h, h), W, U)", "torch.lstm_cell"),
    "c_functions_table": (LSTM, "def step(x, h):\n    return torch._C._VariableFunctions.lstm_cell(x, (h, h), W, U)", "torch.lstm_cell"),
    "aten_operator": (LSTM, "def step(x, h):\n    return torch.ops.aten.lstm_cell.default(x, [h, h], W, U)", "torch.lstm_cell"),
    "subclass_super": (LSTM, "class Cell(nn.LSTMCell):\n    def forward(self, x, hx):\n        return super().forward(x, hx)\n"
                             "def step(x, h):\n    return Cell(3, 4)(x, (h, h))", "torch.nn.LSTMCell"),
    "module_lstm": (LSTM, "def step(x, h):\n    return nn.LSTM(3, 4)(x[None])[0][0]", "torch.nn.LSTM"),
    "partial_module": (LSTM, "def step(x, h):\n    return functools.partial(nn.LSTM, 3)(4)(x[None])[0][0]", "torch.nn.LSTM"),
    "original_in_closure": (["torch.nn.functional.scaled_dot_product_attention", "torch.nn.functional.layer_norm"],
                            "def step(x, h):\n    inner = [c.cell_contents for c in F.layer_norm.__closure__ if callable(c.cell_contents)"
                            " and getattr(c.cell_contents, '__name__', '') == 'layer_norm'][0]\n    return inner(x, (3,))",
                            "torch.nn.functional.layer_norm"),
    "sdpa_alias": (SDPA, "attend = F.scaled_dot_product_attention\ndef step(x, h):\n    return attend(x[None], x[None], x[None])",
                   "torch.nn.functional.scaled_dot_product_attention"),
    "sdpa_partial": (SDPA, "def step(x, h):\n    return functools.partial(F.scaled_dot_product_attention, dropout_p=0.0)(x[None], x[None], x[None])",
                     "torch.nn.functional.scaled_dot_product_attention"),
    "sdpa_lambda": (SDPA, "def step(x, h):\n    return (lambda q: torch.nn.functional.scaled_dot_product_attention(q, q, q))(x[None])",
                    "torch.nn.functional.scaled_dot_product_attention"),
    "tensor_method": (SOFTMAX, "def step(x, h):\n    return x.softmax(0)", "torch.Tensor.softmax"),
    # the course package's modules generated from an assignment's answers (tools/export_helpers.py), which the grading
    # kernel can import: forbidden in that assignment's answer cells
    "course_answer_function": (["shared.attention.masked_softmax", "shared.attention.DotProductAttention"],
                               "from shared.attention import masked_softmax as given\ndef step(x, h):\n    return given(x[None], None)",
                               "shared.attention.masked_softmax"),
    "course_answer_class": (["shared.lstm_lm.LSTM", "shared.lstm_lm.LSTMLM"],
                            "import shared.lstm_lm\ndef step(x, h):\n    return shared.lstm_lm.LSTMLM(5, 3, 4)(torch.zeros(1, 2, dtype=torch.long))[0]",
                            "shared.lstm_lm.LSTMLM"),
    "helper_in_other_cell": (LSTM, "def helper(x, h):\n    return torch.lstm_cell(x, (h, h), W, U)\n"
                                   "def step(x, h):\n    return helper(x, h)", "torch.lstm_cell"),
}


@pytest.fixture(scope="module")
def caught():
    cases = [{"cell": cell, "forbidden": names, "source": SETUP + source, "test": "result = str(type(step(x, h)))"}
             for cell, (names, source, _) in CAUGHT.items()]
    return run_guarded(cases)


@pytest.mark.parametrize("cell", sorted(CAUGHT))
def test_guard_catches_a_forbidden_call_from_a_student_function(caught, cell):
    name = CAUGHT[cell][2]
    assert caught[cell]["violations"] == [f"{cell} calls {name}"], caught[cell]
    assert caught[cell]["profile_kept"]


def test_guard_raises_where_a_wrapper_sees_the_call(caught):
    """Calls that reach the public objects fail in the student's cell; those that reach the originals are only recorded
    (an exception from a profile function would switch it off), and the grader zeroes the cell from guard.violations."""
    wrapped = ["alias_class", "getattr_string", "partial_builtin", "map_builtin", "lambda_builtin", "vf_builtin", "subclass_super",
               "sdpa_partial", "tensor_method"]
    for cell in wrapped:
        assert caught[cell]["outcome"].startswith("FromScratchViolation: " + f"{cell} calls"), (cell, caught[cell])
    for cell in ["c_functions_table", "aten_operator", "original_in_closure"]:
        assert caught[cell]["outcome"] == "<class 'torch.Tensor'>" or caught[cell]["outcome"].startswith("<class"), caught[cell]


def test_guard_leaves_a_cell_alone_when_its_list_allows_the_call():
    """The same calls from a cell that forbids nothing (08's LSTMLM may use nn.LSTM) record nothing and run."""
    allowed = {cell: case for cell, case in CAUGHT.items() if cell != "original_in_closure"}  # that one needs a wrapper to open
    cases = [{"cell": cell, "forbidden": [], "source": SETUP + source, "test": "result = 'ran ' + str(type(step(x, h)))"}
             for cell, (names, source, _) in allowed.items()]
    results = run_guarded(cases)
    assert results["__all__"] == []
    assert all(results[cell]["outcome"].startswith("ran") for cell in allowed), {c: r["outcome"] for c, r in results.items() if c in allowed}


SOLUTIONS_CHILD = r"""
import json, os, re, sys
sys.path.insert(0, {autograder!r}); sys.path.insert(0, {root!r})
os.chdir(os.path.dirname({path!r}))
import matplotlib
matplotlib.use("Agg")
import torch  # noqa: F401  (as the grader does: the guard is installed once torch is loaded)
from from_scratch import forbidden_by_cell, install_guard

guard = install_guard(forbidden_by_cell({path!r}))
notebook = json.load(open({path!r}, encoding="utf-8"))
marker = re.compile(r"^\s*### (BEGIN|END) (SOLUTION|HIDDEN TESTS)\s*$")
cells = notebook["cells"]
answers = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and c["metadata"].get("nbgrader", {{}}).get("solution")]
namespace, errors = {{"__name__": "__main__"}}, {{}}
for cell in cells[: answers[-1] + 3]:  # down to the checks of the last exercise
    source = "".join(cell["source"])
    if cell["cell_type"] != "code" or re.search(r"^\s*[%!]", source, re.M):
        continue
    meta = cell["metadata"].get("nbgrader", {{}})
    filename = f"<solution {{meta['grade_id']}}>" if meta.get("solution") else f"<cell {{cell.get('id')}}>"
    try:
        exec(compile("\n".join(line for line in source.splitlines() if not marker.match(line)), filename, "exec"), namespace)
    except Exception as error:
        errors[cell.get("id")] = f"{{type(error).__name__}}: {{error}}"
print("RESULTS" + json.dumps({{"violations": guard.violations, "errors": errors}}))
"""


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_reference_solutions_and_their_checks_run_under_the_guard(assignment):
    """Never forbidden what a reference solution calls, directly or through the course's code."""
    path = ROOT / "solutions" / assignment / f"{assignment}.ipynb"
    child = SOLUTIONS_CHILD.format(autograder=str(ROOT / "autograder"), root=str(ROOT), path=str(path))
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "COURSE_FAST": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULTS")).removeprefix("RESULTS"))
    assert report == {"violations": [], "errors": {}}


TOP_LEVEL = {
    "bound_builtin": (LSTM, "step = torch.lstm_cell", "step is torch.lstm_cell"),
    "bound_partial": (LSTM, "step = functools.partial(torch.lstm_cell, w_ih=W, w_hh=U)", "step is functools.partial of torch.lstm_cell"),
    "bare_subclass": (LSTM, "class LSTMCell(nn.LSTMCell):\n    pass", "LSTMCell subclasses torch.nn.LSTMCell"),
    "class_attribute": (LSTM, "class Cell(nn.Module):\n    forward = torch.lstm_cell", "Cell has forward that is torch.lstm_cell"),
    "bound_sdpa": (SDPA, "attention = F.scaled_dot_product_attention", "attention is torch.nn.functional.scaled_dot_product_attention"),
}


def test_top_level_aliases_need_no_student_frame_and_are_reported_by_aliased_builtins():
    cases = [{"cell": cell, "forbidden": names, "source": SETUP + source} for cell, (names, source, _) in TOP_LEVEL.items()]
    results = run_guarded(cases)
    for cell, (_, _, finding) in TOP_LEVEL.items():
        assert finding in results[cell]["aliased"], (cell, results[cell])


HONEST = """
def lstm_step(X, H, C, params):
    gate = lambda g: X @ params[f"W_{g}"] + H @ params[f"U_{g}"] + params[f"b_{g}"]
    f, i, o, c = torch.sigmoid(gate("f")), torch.sigmoid(gate("i")), torch.sigmoid(gate("o")), torch.tanh(gate("c"))
    C = f * C + i * c
    return o * torch.tanh(C), C

import collections
Step = collections.namedtuple("Step", "h c")  # library code that calls sys._getframe for the student

def lstm_forward(inputs, state, params):
    H, C = state
    outputs = []
    for X in inputs:
        H, C = lstm_step(X, H, C, params)
        outputs.append(Step(H, C).h)
    return torch.stack(outputs), (H, C)
"""
WITNESS = """
import threading
from shared.checks import compare
torch.manual_seed(0)
reference = nn.LSTM(3, 4)  # the course's test cell uses PyTorch's LSTM as a witness
weights = dict(zip("ifco", reference.weight_ih_l0.chunk(4)))
recurrent = dict(zip("ifco", reference.weight_hh_l0.chunk(4)))
biases = dict(zip("ifco", (reference.bias_ih_l0 + reference.bias_hh_l0).chunk(4)))
params = {}
for g in "fioc":
    params[f"W_{g}"], params[f"U_{g}"], params[f"b_{g}"] = weights[g].T, recurrent[g].T, biases[g]
inputs = torch.randn(5, 2, 3)
outputs, (H, C) = lstm_forward(inputs, (torch.zeros(2, 4), torch.zeros(2, 4)), params)
expected, (h_n, c_n) = reference(inputs)
torch.testing.assert_close(outputs, expected)
compare("outputs", outputs.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
outputs.square().sum().backward()  # autograd through the student's code
assert reference.weight_ih_l0.grad is not None
torch.lstm_cell(inputs[0], (H.detach(), C.detach()), reference.weight_ih_l0, reference.weight_hh_l0)
seen = []
worker = threading.Thread(target=lambda: seen.append(sys.getprofile() is not None))  # a course thread: allowed, and profiled
worker.start(); worker.join()
result = f"ok {seen}"
"""


def test_honest_code_and_course_witnesses_run_normally_under_the_guard():
    results = run_guarded([{"cell": "lstm_forward", "forbidden": LSTM, "source": HONEST, "test": "import sys\n" + WITNESS}])
    assert results["lstm_forward"]["outcome"] == "ok [True]", results["lstm_forward"]
    assert results["__all__"] == [] and results["lstm_forward"]["aliased"] == []


# Each refused event: the student's cell, and whether course code (no student frame on the stack) may still do it.
REFUSALS = {
    "setprofile_none": ("import sys\nsys.setprofile(None)", "sys.setprofile"),
    "setprofile_other": ("import sys\nsys.setprofile(lambda *a: None)", "sys.setprofile"),
    "cprofile": ("import cProfile\ncProfile.Profile().enable()", "sys.setprofile"),
    "settrace": ("import sys\nsys.settrace(lambda *a: None)", "sys.settrace"),
    "ctypes_call": ("import ctypes\nctypes.pythonapi.PyEval_SetProfile(None, None)", "ctypes."),
    "ctypes_memory": ("import ctypes\nctypes.string_at(ctypes.c_void_p(8), 1)", "ctypes."),
    "gc_objects": ("import gc\ngc.get_objects()", "gc.get_objects"),
    "gc_referrers": ("import gc\ngc.get_referrers(torch.lstm_cell)", "gc.get_referrers"),
    "gc_referents": ("import gc\ngc.get_referents(torch.lstm_cell)", "gc.get_referents"),
    "code_swap": ("def mine(*a, **k):\n    return None\ntorch.nn.LSTM.forward.__code__ = mine.__code__", "setting __code__"),
    "wrapper_defaults": ("torch.lstm_cell.__defaults__ = (1,)", "setting __defaults__"),
    "proc_mem": ("open('/proc/self/mem', 'rb')", "opening the process's memory"),
    "code_replace": ("code = (lambda: 1).__code__.replace(co_name='other')", "code.__new__"),
    "thread": ("import threading\nthreading.Thread(target=print).start()", "_thread.start_new_thread"),
    "raw_thread": ("import _thread\n_thread.start_new_thread(print, ())", "_thread.start_new_thread"),
    "subprocess": ("import subprocess\nsubprocess.run(['true'])", "subprocess.Popen"),
    "os_system": ("import os\nos.system('true')", "os.system"),
    "os_exec": ("import os\nos.execv('/bin/true', ['true'])", "os.exec"),
    "posix_spawn": ("import os\nos.posix_spawn('/bin/true', ['true'], {})", "os.posix_spawn"),
    "spawn": ("import os\nos.spawnv(os.P_WAIT, '/bin/true', ['true'])", "os.fork"),
    "forkpty": ("import os\nos.forkpty()", "os.forkpty"),
}


# How each entry of from_scratch.REFUSED shows in the refusal's message (REFUSED_FROM_STUDENT's keys are the events).
REFUSED_MESSAGES = {
    "sys.setprofile": "sys.setprofile", "sys.settrace": "sys.settrace", "ctypes.*": "ctypes.",
    "gc.get_objects": "gc.get_objects", "gc.get_referrers": "gc.get_referrers", "gc.get_referents": "gc.get_referents",
    "object.__setattr__ __code__": "setting __code__",
    "object.__setattr__ __defaults__/__kwdefaults__ of the guard's functions": "setting __defaults__",
    "open /proc/<pid>/mem": "opening the process's memory",
}


def test_every_refused_event_has_a_test():
    assert set(REFUSED_MESSAGES) == set(REFUSED)
    assert {event for _, event in REFUSALS.values()} == {*REFUSED_MESSAGES.values(), *REFUSED_FROM_STUDENT, *REFUSED_BY_WRAPPER}


@pytest.fixture(scope="module")
def refusals():
    cases = [{"cell": cell, "forbidden": LSTM, "source": source} for cell, (source, _) in REFUSALS.items()]
    # course code (a test cell, no student frame) may still start threads and build code objects
    cases.append({"cell": "course_side", "forbidden": LSTM, "source": "",
                  "test": "import threading\nt = threading.Thread(target=print, args=('',)); t.start(); t.join()\n"
                          "c = (lambda: 1).__code__.replace(co_name='x')\nresult = 'ok'"})
    return run_guarded(cases)


@pytest.mark.parametrize("cell", sorted(REFUSALS))
def test_guard_refuses_what_would_switch_it_off_or_reach_around_it(refusals, cell):
    event = REFUSALS[cell][1]
    outcome = refusals[cell]["outcome"]
    assert outcome.startswith("FromScratchViolation: the from-scratch guard refuses " + event), outcome
    assert refusals[cell]["violations"] and refusals[cell]["violations"][0].startswith(f"{cell} tried {event}")
    assert refusals[cell]["profile_kept"]


def test_course_code_may_still_start_threads_and_build_code_objects(refusals):
    assert refusals["course_side"]["outcome"] == "ok", refusals["course_side"]


def test_guard_is_cheap_on_honest_code():
    """The profile function costs little on a hand-written LSTM (bench/from_scratch_guard.py measures it properly)."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "from_scratch_guard.py"), "--repeats", "10",
                             "--batch", "4", "--inputs", "8", "--hidden", "16"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ratio = float(result.stdout.rsplit("ratio", 1)[1])
    assert ratio < 1.5, result.stdout


def test_importing_the_module_installs_nothing():
    """Only install_guard changes the process: the test process itself keeps PyTorch's own objects."""
    assert type(torch.lstm_cell).__name__ == "builtin_function_or_method"
    assert "from_scratch" not in getattr(sys.getprofile(), "__qualname__", "")
