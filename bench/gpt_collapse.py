"""07's GPT at full size with the solution's cells and three other valid implementations, old settings vs new.

The variants of the attention and the LayerNorm are those of tests/test_gpt_collapse.py (each equal to the
solution in float64 and passing the notebook's visible checks). Each run is notebook 07's own `run("GPT", ...)`
(its config cell, full mode: 3,000 steps, d = 64) on the scaling experiment's r_train = 0.7 split, once with the
notebook's settings ("new") and once with the settings 07 used before ("old": constant lr 5e-3, no warm-up, no
clipping). Printed per run: best validation accuracy and its first step, the first step at 0.99, the final
validation accuracy and loss, the largest fall of validation accuracy after it first reached 0.9, and whether
the run collapsed (shared.experiments.collapsed: best a >= 0.5, final < a / 2).

Measured on the shared 2-core machine (seed 0; 3-4 runs at a time under other load, 10-17 min each):

  implementation                settings  best A_val  at step  0.99 at  final A_val  final L_val  worst fall  collapsed
  solution                      new            1.000      700      675        1.000        0.000       0.128         no
  additive mask + einsum        new            1.000      650      650        1.000        0.000       0.153         no
  finfo.min + float32 softmax   new            1.000      675      650        1.000        0.000       0.323         no
  explicit exp softmax          new            1.000      675      650        1.000        0.000       0.358         no
  solution                      old            1.000      725      600        0.726        0.608       1.000         no
  additive mask + einsum        old            1.000     1725      (a)        0.948        0.174       0.962         no
  finfo.min + float32 softmax   old            0.983      475    never        0.896        0.240       0.962         no
  explicit exp softmax          old            0.993      575      575        0.021        1.749       0.993        yes

  (a) run before this bench existed, same cells and settings: validation accuracy 0.98 by step 600, 0.03 at step
  2,200 (loss 1.76), then back. With the old settings every implementation fell by more than 0.96 at some point.

CPU heavy (8 runs of 3,000 steps): run it under `nice`. Each run is a process with one thread; --workers runs
that many at once.

Usage: nice python bench/gpt_collapse.py [--r-train 0.7] [--settings old,new] [--variants all] [--seed 0]
                                         [--steps N] [--workers 2]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tools", ROOT / "tests"):
    sys.path.insert(0, str(folder))

SOLUTION = "solution"


def one_run(variant: str, setting: str, r_train: float, seed: int, steps: int | None) -> dict:
    """Train notebook 07's GPT (full mode) with `variant`'s cells and `setting`'s optimiser; its numbers."""
    os.environ.pop("COURSE_FAST", None)
    import torch

    from shared.arithmetic import get_arithmetic_dataset
    from shared.experiments import collapsed, first_step_reaching, largest_drop
    from test_gpt_collapse import OLD_SETTINGS, experiment

    namespace = experiment(None if variant == SOLUTION else variant)
    torch.set_num_threads(1)  # the runs share the cores; one thread each keeps them apart
    (train_set, valid_set), *_ = get_arithmetic_dataset(31, "+", r_train=r_train, operation_orders=2, seed=0)
    changes = (OLD_SETTINGS if setting == "old" else {}) | ({"steps": steps} if steps else {})
    started = time.monotonic()
    _, history = namespace["run"]("GPT", train_set, valid_set, seed, progress=False, **changes)
    best = max(history.valid_accuracy)
    return dict(variant=variant, setting=setting, best=best, t_best=history.steps[history.valid_accuracy.index(best)],
                t_99=first_step_reaching(history, "valid_accuracy", 0.99), final=history.valid_accuracy[-1],
                final_loss=history.valid_loss[-1], drop=largest_drop(history), collapsed=collapsed(history),
                seconds=time.monotonic() - started)


HEADER = (f"{'implementation':<30}{'settings':<10}{'best A_val':>11}{'at step':>9}{'0.99 at':>9}{'final A_val':>12}"
          f"{'final L_val':>12}{'worst fall':>11}{'collapsed':>11}{'seconds':>9}")


def row(r: dict) -> str:
    """One run's line of the table."""
    t_99 = "never" if r["t_99"] is None else str(r["t_99"])
    loss = f"{r['final_loss']:.3f}" if math.isfinite(r["final_loss"]) else "nan"
    return (f"{r['variant']:<30}{r['setting']:<10}{r['best']:>11.3f}{r['t_best']:>9}{t_99:>9}{r['final']:>12.3f}"
            f"{loss:>12}{r['drop']:>11.3f}{'yes' if r['collapsed'] else 'no':>11}{r['seconds']:>9.0f}")


def main() -> None:
    from test_gpt_collapse import VARIANTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r-train", type=float, default=0.7)
    parser.add_argument("--settings", default="old,new")
    parser.add_argument("--variants", default="all", help=f"'all' or a comma-separated list of: {SOLUTION}, " + ", ".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default: the notebook's full-mode steps (3,000)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    variants = [SOLUTION, *VARIANTS] if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in variants if v != SOLUTION and v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}")
    jobs = [(variant, setting) for setting in args.settings.split(",") for variant in variants]
    print(f"p = 31, r_train = {args.r_train}, seed {args.seed}; {len(jobs)} runs, {args.workers} at a time", flush=True)
    print(HEADER + "\n" + "-" * len(HEADER), flush=True)
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(one_run, v, s, args.r_train, args.seed, args.steps) for v, s in jobs]
        results = []
        for future in as_completed(futures):
            results.append(future.result())
            print(row(results[-1]), flush=True)
    print("\nin order:\n" + HEADER + "\n" + "-" * len(HEADER))
    order = {job: i for i, job in enumerate(jobs)}
    for r in sorted(results, key=lambda r: order[r["variant"], r["setting"]]):
        print(row(r))
    print(f"\nchance: accuracy 1/31 = {1 / 31:.3f}, loss log(31)/2 = {math.log(31) / 2:.3f} (r guessed, EOS known)")


if __name__ == "__main__":
    main()
