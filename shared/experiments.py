"""Training runs for the GPT notebook: AdamW, periodic evaluation, and the numbers a run is judged by.

`train` optimises any next-token model whose forward returns logits (B, S, V) first (an LSTM LM or
a GPT) on an arithmetic dataset (see shared.arithmetic), with a loss function of the form
`loss_fn(logits, targets, eq_positions, mask, reduction)` -> (loss, accuracy): the notebook passes
the one students write. Every `eval_every` steps it measures loss and accuracy on the whole
training and validation sets and appends them to a `History`. Its learning rate can warm up and
decay (`lr_at`) and its gradients be clipped, which keeps a high learning rate from derailing a run.

From a History: `extrema` gives the best loss / accuracy and the first step at which each is
reached, and the delays Δt between training and validation; `metrics_table` shows them as
mean ± std over seeds for several models side by side; `collapsed` tells whether a run that had
learned fell back for good, `largest_drop` how far its accuracy fell on the way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import TensorDataset

from shared.training import progress_bar, set_seed

LossFunction = Callable[..., tuple[torch.Tensor, torch.Tensor]]
METRICS = ("train_loss", "valid_loss", "train_accuracy", "valid_accuracy")


@dataclass
class History:
    """Loss and accuracy on the whole training and validation sets at the logged steps."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    valid_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def log(self, step: int, **values: float) -> None:
        self.steps.append(step)
        for name in METRICS:
            getattr(self, name).append(float(values[name]))


@torch.no_grad()
def evaluate(model: nn.Module, dataset: TensorDataset, loss_fn: LossFunction, *, batch_size: int = 2048,
             device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean loss and accuracy of `model` over every example of `dataset` (eval mode; the mode is restored)."""
    was_training = model.training
    model.eval()
    total_loss = total_accuracy = 0.0
    count = len(dataset)
    for first in range(0, count, batch_size):
        inputs, targets, eq_positions, mask = (t[first : first + batch_size].to(device) for t in dataset.tensors)
        logits = model(inputs)[0]
        loss, accuracy = loss_fn(logits, targets, eq_positions, mask, reduction="sum")
        total_loss += float(loss)
        total_accuracy += float(accuracy)
    model.train(was_training)
    return total_loss / max(count, 1), total_accuracy / max(count, 1)


SCHEDULES = ("constant", "cosine")


def lr_at(step: int, steps: int, lr: float, warmup_steps: int = 0, schedule: str = "constant", min_lr: float = 0.0) -> float:
    """The learning rate of step 1..steps: linear warm-up to `lr` over `warmup_steps`, then constant or cosine to `min_lr`."""
    if step <= warmup_steps:
        return lr * step / warmup_steps
    if schedule == "constant":
        return lr
    progress = (step - warmup_steps) / max(steps - warmup_steps, 1)  # 0 just after the warm-up, 1 at the last step
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(
    model: nn.Module,
    train_set: TensorDataset,
    valid_set: TensorDataset,
    loss_fn: LossFunction,
    *,
    steps: int,
    batch_size: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    warmup_steps: int = 0,
    schedule: str = "constant",
    min_lr: float = 0.0,
    clip_norm: float | None = None,
    eval_every: int = 10,
    seed: int = 0,
    device: torch.device | str = "cpu",
    desc: str = "training",
    progress: bool = True,
) -> History:
    """Train `model` for `steps` AdamW steps on minibatches of `train_set`; evaluate at step 0, every
    `eval_every` steps and at the last step. `seed` fixes the order of the minibatches (and dropout).

    The learning rate follows `lr_at`: a linear warm-up over `warmup_steps`, then constant `lr` or a cosine
    decay from `lr` to `min_lr` at the last step (`schedule="cosine"`). `clip_norm` clips the gradients' global
    norm before each step (None: no clipping). `eps` is AdamW's. The defaults are plain AdamW at a constant `lr`.

    Seed the model's initialisation yourself (shared.training.set_seed) before you build it.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr_at(1, steps, lr, warmup_steps, schedule, min_lr),
                                  weight_decay=weight_decay, betas=betas, eps=eps)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tensors = train_set.tensors
    n_train = len(train_set)
    history = History()
    started = time.monotonic()

    def log(step: int) -> None:
        train_loss, train_accuracy = evaluate(model, train_set, loss_fn, device=device)
        valid_loss, valid_accuracy = evaluate(model, valid_set, loss_fn, device=device)
        history.log(step, train_loss=train_loss, valid_loss=valid_loss, train_accuracy=train_accuracy,
                    valid_accuracy=valid_accuracy)

    log(0)
    order, position = torch.randperm(n_train, generator=generator), 0
    bar = progress_bar(range(1, steps + 1), desc=desc, disable=not progress, mininterval=0.5)
    for step in bar:
        if position >= n_train:
            order, position = torch.randperm(n_train, generator=generator), 0
        index = order[position : position + batch_size]
        position += batch_size
        inputs, targets, eq_positions, mask = (t[index].to(device) for t in tensors)
        logits = model(inputs)[0]
        loss, _ = loss_fn(logits, targets, eq_positions, mask, reduction="mean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup_steps, schedule, min_lr)
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            log(step)
            bar.set_postfix(train_acc=f"{history.train_accuracy[-1]:.2f}", val_acc=f"{history.valid_accuracy[-1]:.2f}",
                            refresh=False)
    bar.close()
    history.seconds = time.monotonic() - started
    model.eval()
    return history


def first_step(steps: Sequence[int], values: Sequence[float], best: float) -> int:
    """The first logged step whose value equals `best`."""
    return steps[list(values).index(best)]


def extrema(history: History, T_max: int | None = None) -> dict[str, float]:
    """Best values of a run and the first step they are reached, counting only steps <= T_max.

    Keys: train_loss, valid_loss (minima), train_accuracy, valid_accuracy (maxima), t_<metric> (the
    first step at which that best value is reached), delta_t_loss = t_valid_loss - t_train_loss and
    delta_t_accuracy = t_valid_accuracy - t_train_accuracy (how long generalisation lags behind).
    """
    keep = [i for i, step in enumerate(history.steps) if T_max is None or step <= T_max]
    if not keep:
        raise ValueError("no logged step is <= T_max")
    steps = [history.steps[i] for i in keep]
    result: dict[str, float] = {}
    for name in METRICS:
        values = [getattr(history, name)[i] for i in keep]
        best = min(values) if name.endswith("loss") else max(values)
        result[name] = best
        result[f"t_{name}"] = first_step(steps, values, best)
    result["delta_t_loss"] = result["t_valid_loss"] - result["t_train_loss"]
    result["delta_t_accuracy"] = result["t_valid_accuracy"] - result["t_train_accuracy"]
    return result


def first_step_reaching(history: History, metric: str, threshold: float) -> int | None:
    """The first logged step at which an accuracy reaches >= threshold (a loss <= threshold), else None."""
    values = getattr(history, metric)
    for step, value in zip(history.steps, values):
        if (value <= threshold) if metric.endswith("loss") else (value >= threshold):
            return step
    return None


def largest_drop(history: History, metric: str = "valid_accuracy", after: float = 0.9) -> float:
    """How far an accuracy fell at worst below its running maximum, once it had reached `after` (0.0 if it never did)."""
    drop, peak = 0.0, None
    for value in getattr(history, metric):
        if peak is None and value >= after:
            peak = value
        if peak is not None:
            peak = max(peak, value)
            drop = max(drop, peak - value)
    return drop


def collapsed(history: History, learned: float = 0.5) -> bool:
    """Whether a run that learned (best validation accuracy a >= `learned`) ended below a / 2: it fell back for good."""
    best = max(history.valid_accuracy)
    return best >= learned and history.valid_accuracy[-1] < best / 2


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation, as in "mean ± std" over seeds."""
    values = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return float(values.mean()), float(values.std(unbiased=False)) if len(values) > 1 else 0.0


TABLE_ROWS = [
    ("train_loss", "L_train (min)"), ("valid_loss", "L_val (min)"),
    ("train_accuracy", "A_train (max)"), ("valid_accuracy", "A_val (max)"),
    ("t_train_loss", "t_f(L_train)"), ("t_valid_loss", "t_f(L_val)"),
    ("t_train_accuracy", "t_f(A_train)"), ("t_valid_accuracy", "t_f(A_val)"),
    ("delta_t_loss", "Δt(L)"), ("delta_t_accuracy", "Δt(A)"),
]


def summarize(runs: dict[str, list[History]], T_max: int | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    """{model: {key of `extrema`: (mean, std) over its runs}}."""
    summary = {}
    for model, histories in runs.items():
        per_run = [extrema(h, T_max) for h in histories]
        summary[model] = {key: mean_std([e[key] for e in per_run]) for key in per_run[0]}
    return summary


def metrics_table(runs: dict[str, list[History]], T_max: int | None = None) -> str:
    """A text table, one column per model, of every `extrema` value as mean ± std over the runs."""
    summary = summarize(runs, T_max)
    width = 22

    def cell(key: str, mean: float, std: float) -> str:
        if key.startswith(("t_", "delta")):
            return f"{mean:.0f} ± {std:.0f}"
        return f"{mean:.4f} ± {std:.4f}" if math.isfinite(mean) else "nan"

    lines = [f"{'metric':<16}" + "".join(f"{name:>{width}}" for name in summary)]
    for key, label in TABLE_ROWS:
        lines.append(f"{label:<16}" + "".join(f"{cell(key, *summary[m][key]):>{width}}" for m in summary))
    return "\n".join(lines)


__all__ = ["History", "collapsed", "evaluate", "extrema", "first_step_reaching", "largest_drop", "lr_at", "mean_std",
           "metrics_table", "set_seed", "summarize", "train"]
