"""Training-step speed with PyTorch's default thread count and with the course's choice (shared.device.use_threads).

Four workloads, each one training step (forward, loss, backward, optimizer step) of a model the notebooks train:

  GPT 07      notebook 07's GPT (its solution cells), d = 64, 2 layers, 4 heads, 512 equations a step
  LSTM 07     notebook 07's LSTM LM (shared.lstm_lm.LSTMLM), d = 64, 2 layers, 512 equations a step
  LM 08 fast  notebook 08's LSTMLM at its fast-mode size (N = 16, VSize = 100), 4 stories a step
  LM 08 full  notebook 08's LSTMLM at its full size (N = 256, VSize = 5000), 4 stories a step

07's sizes are the same in fast and full mode (fast mode runs fewer steps), so its rows show both modes. Each
workload is timed idle (no load from the bench; the cores printed as busy with other programs say what else ran)
and under a load the bench makes itself (one busy process per core), its thread counts in alternation (several
rounds, median seconds per step) so that a change in the machine's other load hits them alike. The policy's count
is what `shared.device.thread_choice` picks as 07's and 08's setup cells ask (`large_model=True`) for the row's
mode, on this machine at that moment, without COURSE_THREADS or OMP_NUM_THREADS.

Usage: python bench/threads.py [--rounds 3] [--seconds 2] [--threads 1,4] [--only GPT,full]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from notebooks import run_cells  # noqa: E402
from shared.arithmetic import get_arithmetic_dataset  # noqa: E402
from shared.device import busy_cores, thread_choice  # noqa: E402
from shared.lstm_lm import LSTMLM  # noqa: E402

GPT_CELLS = ["layer_norm", "multi_headed_attention", "block", "gpt_embedding", "gpt", "loss_and_accuracy"]
LM_CELLS = ["setup", "collate_stories", "real_positions", "lstm_lm"]


class Workload:
    """One training step of a model, repeatable; `tokens`: the target tokens of a step; `modes`: fast and/or full."""

    def __init__(self, name: str, step: Callable[[], None], tokens: int, modes: tuple[str, ...]):
        self.name, self.step, self.tokens, self.modes = name, step, tokens, modes


def arithmetic_workloads() -> list[Workload]:
    """07's GPT and LSTM on a minibatch of 512 equations (p = 31, two operation orders), AdamW as in the notebook."""
    given = {"math": math, "torch": torch, "nn": nn, "F": nn.functional}  # what the setup cell would import
    ns = run_cells("07_gpt", GPT_CELLS, hidden=True, namespace=given).namespace
    (train_set, _), tokenizer, max_length, _ = get_arithmetic_dataset(31, "+", r_train=0.5, operation_orders=2, seed=0)
    index = torch.randint(0, len(train_set), (512,), generator=torch.Generator().manual_seed(0))
    inputs, targets, eq_positions, mask = (t[index] for t in train_set.tensors)
    loss_fn = ns["get_loss_and_accuracy"]
    torch.manual_seed(0)
    models = {"GPT 07": ns["GPT"](4, 2, 64, len(tokenizer), max_length - 1), "LSTM 07": LSTMLM(len(tokenizer), 64, 64, 2)}
    workloads = []
    for name, model in models.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))

        def step(model=model, optimizer=optimizer):
            loss, _ = loss_fn(model(inputs)[0], targets, eq_positions, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        workloads.append(Workload(name, step, int(mask.sum()), ("fast", "full")))  # 07's sizes in both modes
    return workloads


def story_workloads() -> list[Workload]:
    """08's LSTMLM (padded, no attention) at its fast and full sizes on 4 stories of TinyStories-like lengths."""
    ns = run_cells("08_tinystories_lstm", LM_CELLS, hidden=True).namespace
    generator = torch.Generator().manual_seed(0)
    workloads = []
    for name, fast, vocabulary_size, hidden_size in (("LM 08 fast", True, 100, 16), ("LM 08 full", False, 5000, 256)):
        lengths = torch.randint(120, 320, (4,), generator=generator)  # TinyStories' stories: ~120-320 tokens
        stories = [torch.randint(4, vocabulary_size, (int(n),), generator=generator) for n in lengths]
        inputs, targets, story_lengths = ns["collate_stories"](stories)
        torch.manual_seed(0)
        model = ns["LSTMLM"](torch.randn(vocabulary_size, 50), hidden_size, 1, attention=False, packed=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        criterion = nn.CrossEntropyLoss(ignore_index=-100)

        def step(model=model, optimizer=optimizer, inputs=inputs, targets=targets, story_lengths=story_lengths):
            optimizer.zero_grad()
            loss = criterion(model(inputs, story_lengths), targets[targets != -100])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

        workloads.append(Workload(name, step, int(story_lengths.sum()), ("fast",) if fast else ("full",)))
    return workloads


def seconds_per_step(workload: Workload, threads: int, seconds: float) -> float:
    """Mean seconds per step over at least 3 steps and about `seconds` of stepping, on `threads` threads."""
    torch.set_num_threads(threads)
    workload.step()  # the first step after a change of threads pays for starting them
    steps, started = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - started < seconds:
        workload.step()
        steps += 1
    return (time.perf_counter() - started) / steps


class BusyLoad:
    """One busy Python process per core, for as long as the `with` block runs."""

    def __init__(self, processes: int):
        self.processes, self.running = processes, []

    def __enter__(self) -> BusyLoad:
        self.running = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.processes)]
        time.sleep(0.5)  # until the scheduler shares the cores among them
        return self

    def __exit__(self, *exc_info) -> None:
        for process in self.running:
            process.kill()
        for process in self.running:
            process.wait()


def measure(workload: Workload, counts: list[int], rounds: int, seconds: float) -> dict[int, float]:
    """{thread count: median seconds per step}, the counts timed in alternation in each of `rounds` rounds."""
    times: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(rounds):
        for count in counts:
            times[count].append(seconds_per_step(workload, count, seconds))
    return {count: statistics.median(values) for count, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per workload and condition (median of them)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of steps per thread count in each round")
    parser.add_argument("--threads", default="", help="more thread counts to time, e.g. 1,4")
    parser.add_argument("--only", default="", help="workloads whose name contains one of these words, e.g. GPT,full")
    args = parser.parse_args()

    default = torch.get_num_threads()
    cores = os.cpu_count() or 1
    workloads = arithmetic_workloads() + story_workloads()
    if args.only:
        workloads = [w for w in workloads if any(word in w.name for word in args.only.split(","))]
    extra = sorted({int(n) for n in args.threads.split(",") if n})
    print(f"torch {torch.__version__}, {cores} cores, PyTorch's default {default} threads | "
          f"median of {args.rounds} rounds x ~{args.seconds:g} s per thread count", flush=True)

    rows, ratios = [], {}
    for condition in ("idle", "loaded"):
        with BusyLoad(cores if condition == "loaded" else 0):
            busy = busy_cores(1.0)
            print(f"{condition}: {cores if condition == 'loaded' else 0} busy processes of the bench's; cores busy with "
                  f"other programs: {'unknown' if busy is None else f'{busy:.2f}'}", flush=True)
            for workload in workloads:
                # The policy alone (no COURSE_THREADS or OMP_NUM_THREADS), as 07's and 08's setup cells call it.
                choices = {mode: thread_choice(large_model=True, fast=mode == "fast", environ={}) for mode in workload.modes}
                policy = {mode: count or default for mode, (count, _) in choices.items()}
                times = measure(workload, sorted({default, *policy.values(), *extra}), args.rounds, args.seconds)
                for mode, (_, reason) in choices.items():
                    ratio = times[default] / times[policy[mode]]
                    ratios.setdefault(condition, []).append(ratio)
                    rows.append((workload, mode, condition, policy[mode], times, ratio, reason))

    header = f"{'workload':<12}{'mode':<6}{'load':<8}{'policy':>7}{'default ms':>12}{'policy ms':>11}"
    print(f"\n{header}" + "".join(f"{f'{n} thr ms':>10}" for n in extra) + f"{'default/policy':>16}{'policy tok/s':>14}  policy's reason")
    for workload, mode, condition, count, times, ratio, reason in rows:
        print(f"{workload.name:<12}{mode:<6}{condition:<8}{count:>7}{1000 * times[default]:>12.1f}{1000 * times[count]:>11.1f}"
              + "".join(f"{1000 * times[n]:>10.1f}" for n in extra)
              + f"{ratio:>15.2f}x{workload.tokens / times[count]:>14,.0f}  {reason}")
    print()
    for condition, values in ratios.items():
        print(f"{condition}: the policy's steps are {statistics.geometric_mean(values):.2f}x as fast as the default's "
              f"(geometric mean; {min(values):.2f}x to {max(values):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
