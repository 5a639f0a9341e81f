"""Cost of the from-scratch guard (autograder/from_scratch.py) on honest code.

The 03 notebook's reference lstm_step and lstm_forward (compiled as the grader compiles a student's cells,
"<solution lstm_step>", ...) run a forward and backward pass over 50 steps (batch 32, 64 inputs, 128 hidden),
once in a process without the guard and once in a process with it, installed with the 03 notebook's forbidden
lists. The guard cannot be removed, hence one process per measurement. Prints the median seconds per pass of each
and their ratio.

Usage: python bench/from_scratch_guard.py [--repeats 30] [--threads 1] [--batch 32 --inputs 64 --hidden 128]
(tiny sizes, e.g. --batch 1 --inputs 4 --hidden 8, show the worst case: Python overhead only)
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENT = "03_rnn_lstm"
CELLS = ["lstm_step", "lstm_forward"]

CHILD = r"""
import json, re, sys, time
sys.path.insert(0, {autograder!r})
import torch
from from_scratch import forbidden_by_cell, install_guard

torch.set_num_threads({threads})
notebook = json.loads(open({notebook!r}, encoding="utf-8").read())
marker = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")
if {guard}:
    install_guard(forbidden_by_cell({notebook!r}))
namespace = {{"torch": torch}}
for cell in notebook["cells"]:
    grade_id = cell["metadata"].get("nbgrader", {{}}).get("grade_id")
    if grade_id in {cells!r}:
        source = "".join(line for line in cell["source"] if not marker.match(line))
        exec(compile(source, f"<solution {{grade_id}}>", "exec"), namespace)
generator = torch.Generator().manual_seed(0)
T, B, d, h = 50, {batch}, {inputs}, {hidden}
params = {{f"{{kind}}_{{gate}}": (torch.randn(*shape, generator=generator) * 0.1).requires_grad_()
          for gate in "fioc" for kind, shape in (("W", (d, h)), ("U", (h, h)), ("b", (h,)))}}
inputs = torch.randn(T, B, d, generator=generator)
state = (torch.zeros(B, h), torch.zeros(B, h))
test = compile("outputs, _ = lstm_forward(inputs, state, params)\noutputs.square().mean().backward()", "<test bench>", "exec")
namespace.update(inputs=inputs, state=state, params=params)
times = []
for repeat in range({repeats} + 3):
    started = time.perf_counter()
    exec(test, namespace)
    times.append(time.perf_counter() - started)
print(json.dumps(times[3:]))
"""


def measure(guard: bool, repeats: int, threads: int, sizes: dict) -> float:
    """Median seconds per forward+backward pass in a fresh process, with or without the guard."""
    source = CHILD.format(autograder=str(ROOT / "autograder"), notebook=str(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"),
                          guard=guard, cells=CELLS, repeats=repeats, threads=threads, **sizes)
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, check=True)
    return statistics.median(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()
    sizes = {"batch": args.batch, "inputs": args.inputs, "hidden": args.hidden}
    without = measure(False, args.repeats, args.threads, sizes)
    with_guard = measure(True, args.repeats, args.threads, sizes)
    print(f"without guard: {without * 1000:.2f} ms per pass | with guard: {with_guard * 1000:.2f} ms per pass | "
          f"ratio {with_guard / without:.3f}")


if __name__ == "__main__":
    main()
