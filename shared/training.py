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


def fast_mode() -> bool:
    """True under CI ($COURSE_FAST=1) or nbgrader ($NBGRADER_EXECUTION): training shrinks to a smoke test."""
    return os.environ.get(FAST_ENV) == "1" or "NBGRADER_EXECUTION" in os.environ


def set_seed(seed: int) -> None:
    """Seed Python's and PyTorch's random number generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def train_language_model(
    model: nn.Module,
    batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
    *,
    steps: int,
    lr: float,
    device: torch.device,
) -> list[float]:
    """Train a next-token model whose forward returns logits (B, S, V) (or a tuple starting with them).

    `batches(epoch)` yields one epoch of (inputs (B, S), targets (B, S)) token ids; returns each step's loss.
    """
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    stream, epoch = iter(()), 0
    progress = tqdm(range(steps), desc="training", file=sys.stdout)
    for _ in progress:
        try:
            inputs, targets = next(stream)
        except StopIteration:
            stream, epoch = batches(epoch), epoch + 1
            inputs, targets = next(stream)
        output = model(inputs.to(device))
        logits = output[0] if isinstance(output, tuple) else output
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return losses


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
