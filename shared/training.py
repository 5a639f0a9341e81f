"""Small training loops with a progress bar, and the fast mode used by CI and the autograder."""

import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

FAST_ENV = "COURSE_FAST"
WIDGET_BAR = any(base.__module__ == "tqdm.notebook" for base in tqdm.__mro__)  # tqdm.auto chose the Jupyter widget: this runs in a notebook kernel


def fast_mode() -> bool:
    """True under CI ($COURSE_FAST=1) or nbgrader ($NBGRADER_EXECUTION): training shrinks to a smoke test."""
    return os.environ.get(FAST_ENV) == "1" or "NBGRADER_EXECUTION" in os.environ


def set_seed(seed: int) -> None:
    """Seed Python's and PyTorch's random number generators."""
    random.seed(seed)
    torch.manual_seed(seed)


class ProgressBar(tqdm):
    """tqdm.auto's bar (a live widget in Jupyter, text in a terminal) that ends as one line of plain text.

    A notebook saved after a headless run (nbconvert, `make run`) keeps only the widget's text form as it was
    when first shown, a frozen "0%", and that is what its PDF prints. So when the bar closes, its output is
    replaced by `final_line()`, in the notebook and in every saved copy alike.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("file", sys.stdout)  # a check cell that writes to stderr scores 0
        if WIDGET_BAR:
            kwargs["display"] = False  # shown below with a display id, so that close() can replace it
        else:
            kwargs.setdefault("leave", False)  # the final line takes the bar's place
        super().__init__(*args, **kwargs)
        self.shown = None
        if WIDGET_BAR and not self.disable:
            from IPython.display import display

            self.shown = display(self.container, display_id=True)
            self.displayed = True

    def final_line(self) -> str:
        """e.g. 'training: 200/200 steps, loss 1.234, 4.1 s'."""
        count = f"{self.n:,}/{self.total:,}" if self.total else f"{self.n:,}"
        parts = [f"{count} {self.unit}"]
        if self.postfix:
            parts.append(self.postfix.replace("=", " "))
        parts.append(f"{self.format_dict['elapsed']:.1f} s")
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def close(self) -> None:
        """Close the bar and leave its final line in its place."""
        if self.disable:
            return super().close()
        line = self.final_line()
        super().close()
        if self.shown is not None:
            self.shown.update({"text/plain": line}, raw=True)
            for widget in (*self.container.children, self.container):
                widget.close()  # the kernel side of a finished bar need not outlive it
        else:
            self.fp.write(line + "\n")
            self.fp.flush()


def progress_bar(iterable=None, *, desc: str, total: int | None = None, unit: str = "steps", **options) -> ProgressBar:
    """A progress bar over `iterable` (or updated by hand up to `total`) that ends as a text line; options go to tqdm."""
    return ProgressBar(iterable, desc=desc, total=total, unit=unit, **options)


def fit(
    model: nn.Module,
    next_batch: Callable[[], tuple],
    loss_of: Callable[[nn.Module, tuple], torch.Tensor],
    *,
    steps: int,
    optimizer: torch.optim.Optimizer,
    clip: float | None = None,
    desc: str = "training",
) -> list[float]:
    """The course's training loop: `steps` optimizer steps on `loss_of(model, next_batch())`, with a progress bar.

    Gradients are clipped to norm `clip` when given; the model is left in eval mode. Returns each step's loss.
    """
    model.train()
    losses: list[float] = []
    progress = progress_bar(range(steps), desc=desc)
    for _ in progress:
        loss = loss_of(model, next_batch())
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return losses


def epochs_of(batches: Callable[[int], Iterator[tuple]]) -> Callable[[], tuple]:
    """A `next_batch` for fit from `batches(epoch)`, which yields one epoch of batches: epoch after epoch, without end."""
    stream, epoch = iter(()), 0

    def next_batch() -> tuple:
        nonlocal stream, epoch
        try:
            return next(stream)
        except StopIteration:
            stream, epoch = batches(epoch), epoch + 1
            return next(stream)

    return next_batch


def train_language_model(
    model: nn.Module,
    batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
    *,
    steps: int,
    lr: float,
    device: torch.device,
) -> list[float]:
    """Train a next-token model whose forward returns logits (B, S, V) (or a tuple starting with them), with Adam.

    `batches(epoch)` yields one epoch of (inputs (B, S), targets (B, S)) token ids; returns each step's loss.
    """

    def next_token_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        output = model(inputs.to(device))
        logits = output[0] if isinstance(output, tuple) else output
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1))

    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return fit(model, epochs_of(batches), next_token_loss, steps=steps, optimizer=optimizer)


def timed_warmup_cosine(optimizer: torch.optim.Optimizer, minutes: float, warmup: float = 0.02,
                        final: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate by wall-clock time for a run of `minutes`: linear warm-up over the first `warmup`
    fraction, then a cosine down to `final` times the peak at the end (step it after every update)."""
    start = time.monotonic()

    def factor(_step: int) -> float:
        progress = min(1.0, (time.monotonic() - start) / (60 * minutes))
        if progress < warmup:
            return max(progress / warmup, 1e-3)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
