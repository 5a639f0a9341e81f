"""Metrics computed from model outputs."""

import torch


def next_token_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of positions where argmax of logits (B, S, V) equals targets (B, S)."""
    return (logits.argmax(dim=-1) == targets).float().mean().item()
