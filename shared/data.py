"""Small datasets that need no download."""

from collections.abc import Iterator

import torch


def modular_progressions(num_sequences: int, length: int, vocab_size: int, seed: int) -> torch.Tensor:
    """Sequences x_t = (a + t·k) mod vocab_size with random start a and step k: LongTensor (N, length)."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab_size, (num_sequences, 1), generator=generator)
    step = torch.randint(1, vocab_size, (num_sequences, 1), generator=generator)
    return (start + step * torch.arange(length)) % vocab_size


def next_token_batches(sequences: torch.Tensor, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of (inputs (B, S-1), targets (B, S-1)) pairs, targets shifted by one token."""
    order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(seed))
    for first in range(0, len(sequences), batch_size):
        batch = sequences[order[first : first + batch_size]]
        yield batch[:, :-1], batch[:, 1:]


def seeded_randn(seed: int, *shapes: tuple[int, ...], dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Standard-normal CPU tensors of the given shapes, drawn in order from one generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]


@torch.no_grad()
def fill_parameters_(module: torch.nn.Module, seed: int, scale: float = 0.5) -> torch.nn.Module:
    """Overwrite every parameter (in name order) with seeded normal values times `scale`; returns `module`."""
    generator = torch.Generator().manual_seed(seed)
    for _, parameter in sorted(module.named_parameters()):
        values = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
        parameter.copy_(scale * values)
    return module


def length_bucketed_batches(stories: list, batch_size: int, generator: torch.Generator, pool: int = 50) -> Iterator[list]:
    """One epoch of minibatches (lists of stories) of similar length, in a random order.

    The stories are shuffled, cut into pools of `pool` minibatches, sorted by length inside each pool
    and cut into minibatches; the minibatches are then shuffled. Little padding, still random.
    """
    order = torch.randperm(len(stories), generator=generator).tolist()
    batches = []
    for first in range(0, len(order), batch_size * pool):
        chunk = sorted(order[first : first + batch_size * pool], key=lambda i: len(stories[i]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    for b in torch.randperm(len(batches), generator=generator).tolist():
        yield [stories[i] for i in batches[b]]
