"""Modular arithmetic as a language-modelling task: "BOS a + b = r EOS" with r = (a + b) mod p.

Every equation a ∘ b (order 2) or a ∘ b ∘ c (order 3) over {0, ..., p-1} appears exactly once; the
operations are evaluated left to right modulo p. A model reads the equation token by token and is
scored only on what follows "=" (the result r and EOS).

Token ids: the numbers 0..p-1 are ids 0..p-1, then the operator, "=", BOS, EOS and PAD (the last id).
One example is a tuple (input, target, eq_position, mask), all built from one padded sequence:

    sequence   BOS a + b = r EOS [PAD ...]
    input      sequence[:-1]                (S,)
    target     sequence[1:]                 (S,)  the next token at every position
    eq_position  index of "=" in target     ()    3 for a + b = r, 5 for a + b + c = r
    mask       target != PAD                (S,)  bool

The right-hand side of an example is the target positions j > eq_position with mask[j] true.
"""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import TensorDataset

from shared.vocab import Vocab

OPERATORS = ("+", "-", "*", "/")
BOS, EOS, PAD, EQ = "BOS", "EOS", "PAD", "="


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def apply_operator(operator: str, a: int, b: int, p: int) -> int:
    """a ∘ b mod p; division multiplies by the inverse of b modulo p (b must not be 0)."""
    if operator == "+":
        return (a + b) % p
    if operator == "-":
        return (a - b) % p
    if operator == "*":
        return (a * b) % p
    if operator == "/":
        return (a * pow(b, -1, p)) % p
    raise ValueError(f"unknown operator {operator!r}; use one of {OPERATORS}")


class Tokenizer(Vocab):
    """The Vocab of one (p, operator): numbers 0..p-1 first, then the operator, =, BOS, EOS, PAD; `eq_id` is ='s id.

    A Vocab whose `decode` gives the equation as text ('BOS 3 + 4 = 7 EOS') and `tokens_of` its tokens, as
    notebook 07 prints and plots them.
    """

    def __init__(self, p: int, operator: str):
        super().__init__([str(n) for n in range(p)] + [operator, EQ, BOS, EOS, PAD], pad=PAD, bos=BOS, eos=EOS)
        self.eq_id = self.ids[EQ]

    def tokens_of(self, ids) -> list[str]:
        """The tokens of a sequence of ids (PAD included)."""
        return super().decode(ids)

    def decode(self, ids) -> str:
        """The tokens of `ids` joined by spaces, e.g. 'BOS 3 + 4 = 7 EOS'."""
        return " ".join(self.tokens_of(ids))


def equations(p: int, operator: str, order: int) -> list[tuple[list[int], int]]:
    """Every ([x_1, ..., x_order], result) over {0..p-1}, evaluated left to right (no 0 divisors for '/')."""
    if order < 2:
        raise ValueError("an equation has at least two operands")
    right_operands = range(1, p) if operator == "/" else range(p)
    rows = []
    for first in range(p):
        for rest in itertools.product(right_operands, repeat=order - 1):
            result = first
            for x in rest:
                result = apply_operator(operator, result, x, p)
            rows.append(([first, *rest], result))
    return rows


def encode_equations(rows: list[tuple[list[int], int]], tokenizer: Tokenizer, operator: str, length: int) -> torch.Tensor:
    """Padded id sequences "BOS x1 ∘ x2 ... = r EOS PAD..." of `length` tokens: LongTensor (N, length)."""
    sequences = []
    for operands, result in rows:
        tokens = [BOS]
        for k, x in enumerate(operands):
            tokens += ([operator] if k else []) + [str(x)]
        tokens += [EQ, str(result), EOS]
        sequences.append(tokenizer.encode(tokens, length))
    return torch.tensor(sequences, dtype=torch.long)


def sequence_length(order: int) -> int:
    """Tokens in BOS x1 ∘ ... ∘ x_order = r EOS."""
    return 2 * order + 3


def get_arithmetic_dataset(
    p: int = 31,
    operator: str = "+",
    r_train: float = 0.5,
    operation_orders: int | tuple[int, ...] | list[int] = 2,
    seed: int = 0,
) -> tuple[tuple[TensorDataset, TensorDataset], Tokenizer, int, int]:
    """All equations modulo p, split at random into training and validation sets.

    operation_orders: 2 (a ∘ b), 3 (a ∘ b ∘ c) or several, e.g. (2, 3); shorter equations are padded.
    Each order is split separately, so a fraction r_train of every order goes to training.
    Returns ((train, valid), tokenizer, max_length, padding_index): train and valid are TensorDatasets
    of (inputs (N, S), targets (N, S), eq_positions (N,), mask (N, S)) with S = max_length - 1.
    """
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; use one of {OPERATORS}")
    if operator == "/" and not _is_prime(p):
        raise ValueError("division modulo p needs a prime p")
    if not 0 < r_train <= 1:
        raise ValueError("r_train must be in (0, 1]")
    orders = sorted({operation_orders} if isinstance(operation_orders, int) else set(operation_orders))
    tokenizer = Tokenizer(p, operator)
    max_length = sequence_length(orders[-1])
    generator = torch.Generator().manual_seed(seed)
    train_parts, valid_parts = [], []
    for order in orders:
        sequences = encode_equations(equations(p, operator, order), tokenizer, operator, max_length)
        permutation = torch.randperm(len(sequences), generator=generator)
        n_train = round(r_train * len(sequences))
        train_parts.append(sequences[permutation[:n_train]])
        valid_parts.append(sequences[permutation[n_train:]])

    def as_dataset(sequences: torch.Tensor) -> TensorDataset:
        inputs, targets = sequences[:, :-1], sequences[:, 1:]
        eq_positions = (targets == tokenizer.eq_id).long().argmax(dim=1)
        return TensorDataset(inputs, targets, eq_positions, targets != tokenizer.pad_id)

    train = as_dataset(torch.cat(train_parts))
    valid = as_dataset(torch.cat(valid_parts))
    return (train, valid), tokenizer, max_length, tokenizer.pad_id
