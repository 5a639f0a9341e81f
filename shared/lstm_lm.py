"""The LSTM language model the GPT notebook compares with: embedding -> nn.LSTM -> linear classifier.

It is built on PyTorch's own `nn.LSTM` (the fused implementation) so that it trains as fast as
PyTorch allows on a CPU; the 03 notebook builds the same architecture from scratch.
"""

import torch
from torch import nn


class LSTMLM(nn.Module):
    """Next-token model: ids (B, S) -> logits (B, S, V), with the LSTM's final state."""

    def __init__(self, vocabulary_size: int, embedding_size: int, hidden_size: int, num_layers: int = 2,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, embedding_size)
        self.lstm = nn.LSTM(embedding_size, hidden_size, num_layers, bias=bias, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.classifier = nn.Linear(hidden_size, vocabulary_size, bias=bias)

    def forward(self, x: torch.Tensor, hx=None):
        """x: (B, S) token ids; hx: optional (h_0, c_0), each (num_layers, B, hidden_size).

        Returns (logits (B, S, V), (h_n, c_n)).
        """
        output, state = self.lstm(self.embedding(x), hx)
        return self.classifier(output), state
