"""Masked softmax and scaled dot-product attention, for the notebooks that build on them.

Shapes follow the attention notebook: scores X are (batch, queries, keys); `valid_lens` is None,
(batch,) with one length per example, or (batch, queries) with one length per query row.
Keys at positions >= the valid length get exactly zero weight; a row whose valid length is 0
gets all-zero weights (so its attention output is the zero vector), never NaN.
"""

import math

import torch
from torch import nn


def masked_softmax(X: torch.Tensor, valid_lens: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last axis of X (B, n, m), keeping only the first valid_lens keys of each row."""
    if valid_lens is None:
        return torch.softmax(X, dim=-1)
    if valid_lens.dim() == 1:
        valid_lens = valid_lens[:, None]  # the same length for every query of an example
    keep = torch.arange(X.shape[-1], device=X.device) < valid_lens[..., None]  # (B, n or 1, m)
    # A large finite negative number (not -inf) keeps rows with nothing to keep free of NaN;
    # the final masked_fill makes every masked weight exactly 0, including in those rows.
    scores = X.masked_fill(~keep, torch.finfo(X.dtype).min)
    return torch.softmax(scores, dim=-1).masked_fill(~keep, 0.0)


class DotProductAttention(nn.Module):
    """softmax(Q K^T / sqrt(d)) V with masking by valid lengths and dropout on the weights."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.attention_weights: torch.Tensor | None = None

    def forward(self, queries, keys, values, valid_lens=None):
        """queries (B, n, d), keys (B, m, d), values (B, m, v) -> (B, n, v); keeps weights (B, n, m)."""
        scores = queries @ keys.transpose(1, 2) / math.sqrt(queries.shape[-1])
        self.attention_weights = masked_softmax(scores, valid_lens)
        return self.dropout(self.attention_weights) @ values
