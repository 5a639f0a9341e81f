"""A small sequence-to-sequence task and the machinery around a decoder that students write.

The task: read a random string of letters ("b e c k") and write it backwards ("k c e b"). It needs
no download, needs attention (the k-th output letter is the k-th source letter from the end), and a
GRU encoder-decoder with attention learns it on a laptop CPU in about a minute.

Conventions (those of the attention notebooks):
* token ids are batch first, (B, S); every sequence ends in <eos> and is padded with <pad>;
* `Seq2SeqEncoder` returns (outputs (S, B, H), state (L, B, H)), time major like `nn.GRU`;
* a decoder has `init_state(enc_outputs, enc_valid_lens)` and `forward(X (B, T), state)`
  returning (logits (B, T, V), new state), and keeps `attention_weights` of its last call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from shared.device import threads_for
from shared.training import fit
from shared.vocab import Vocab

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


def letters_vocab(letters: list[str]) -> Vocab:
    """<pad> = 0, <bos> = 1, <eos> = 2, then `letters`: the vocabulary of source and target."""
    return Vocab([PAD, BOS, EOS, *letters], pad=PAD, bos=BOS, eos=EOS)


@dataclass
class Seq2SeqData:
    """Padded source and target ids (N, S) and (N, T) with their valid lengths (N,), <eos> included."""

    source: torch.Tensor
    source_valid_lens: torch.Tensor
    target: torch.Tensor
    target_valid_lens: torch.Tensor
    source_vocab: Vocab
    target_vocab: Vocab

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index) -> Seq2SeqData:
        """A subset (slice, index tensor or list) with the same vocabularies."""
        return Seq2SeqData(self.source[index], self.source_valid_lens[index], self.target[index],
                           self.target_valid_lens[index], self.source_vocab, self.target_vocab)


def reversal_split(num_train: int = 20000, num_test: int = 1000, *, min_length: int = 3, max_length: int = 9,
                   num_letters: int = 12, seed: int = 0) -> tuple[Seq2SeqData, Seq2SeqData]:
    """Distinct random strings of letters (source) and the same strings reversed (target), as (train, test).

    Lengths are drawn uniformly from min_length..max_length and letters uniformly from the first
    `num_letters` of the alphabet; a string drawn twice is dropped (so the shortest lengths, with few
    distinct strings, may end up rarer), hence test strings never occur in training. Sequences are
    padded to max_length + 1 (room for <eos>); source and target share one vocabulary.
    """
    if num_train + num_test > sum(num_letters**n for n in range(min_length, max_length + 1)):
        raise ValueError("fewer distinct strings exist than were asked for")
    rng = random.Random(seed)
    letters = [chr(ord("a") + i) for i in range(num_letters)]
    strings: dict[tuple[str, ...], None] = {}  # insertion-ordered set
    while len(strings) < num_train + num_test:
        strings[tuple(rng.choices(letters, k=rng.randint(min_length, max_length)))] = None
    vocab, ordered = letters_vocab(letters), list(strings)

    def pairs(chosen):
        source = torch.tensor([vocab.encode([*x, EOS], max_length + 1) for x in chosen])
        target = torch.tensor([vocab.encode([*reversed(x), EOS], max_length + 1) for x in chosen])
        return Seq2SeqData(source, (source != vocab.pad_id).sum(1), target, (target != vocab.pad_id).sum(1), vocab, vocab)

    return pairs(ordered[num_test:]), pairs(ordered[:num_test])


class Seq2SeqEncoder(nn.Module):
    """Embedding + multi-layer GRU over the whole padded source (attention masks the padding later)."""

    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.rnn = nn.GRU(embedding_size, hidden_size, num_layers, dropout=dropout)

    def forward(self, X: torch.Tensor, valid_lens: torch.Tensor | None = None):
        """X (B, S) ids -> outputs (S, B, H) of the last layer at every step, state (L, B, H) after the last step."""
        return self.rnn(self.embedding(X.t()))


class EncoderDecoder(nn.Module):
    """Encoder + decoder; forward is teacher forcing: logits (B, T, V) for the decoder inputs."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, source, source_valid_lens, decoder_input):
        state = self.decoder.init_state(self.encoder(source, source_valid_lens), source_valid_lens)
        return self.decoder(decoder_input, state)[0]


def teacher_forcing_input(target: torch.Tensor, bos: int) -> torch.Tensor:
    """Decoder inputs for training: <bos> followed by the target without its last position."""
    return torch.cat([torch.full_like(target[:, :1], bos), target[:, :-1]], dim=1)


def train_seq2seq(model: EncoderDecoder, data: Seq2SeqData, *, steps: int, batch_size: int, lr: float,
                  device: torch.device, seed: int = 0, clip: float = 1.0) -> list[float]:
    """Adam with gradient clipping on shuffled minibatches; cross-entropy ignores <pad>. Returns each step's loss."""
    generator = torch.Generator().manual_seed(seed)
    order, position = torch.randperm(len(data), generator=generator), 0

    def next_batch() -> tuple[Seq2SeqData]:
        nonlocal order, position
        if position + batch_size > len(data):
            order, position = torch.randperm(len(data), generator=generator), 0
        position += batch_size
        return (data[order[position - batch_size : position]],)

    def teacher_forced_loss(model: EncoderDecoder, batch: tuple[Seq2SeqData]) -> torch.Tensor:
        (batch,) = batch
        target = batch.target.to(device)
        logits = model(batch.source.to(device), batch.source_valid_lens.to(device),
                       teacher_forcing_input(target, data.target_vocab.bos_id))
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           ignore_index=data.target_vocab.pad_id)

    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    with threads_for(device):  # the course's policy: one thread for these small models (shared.device)
        return fit(model, next_batch, teacher_forced_loss, steps=steps, optimizer=optimizer, clip=clip)


@torch.no_grad()
def greedy_decode(model: EncoderDecoder, source: torch.Tensor, source_valid_lens: torch.Tensor, *,
                  bos: int, eos: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed back the most likely token, one step at a time, up to max_len steps.

    Returns (ids (B, max_len), attention (B, max_len, S)); after a row's first <eos> its ids are <eos>.
    """
    model.eval()
    with threads_for(source.device):
        state = model.decoder.init_state(model.encoder(source, source_valid_lens), source_valid_lens)
        token = torch.full((len(source), 1), bos, dtype=torch.long, device=source.device)
        ids, attention = [], []
        finished = torch.zeros(len(source), dtype=torch.bool, device=source.device)
        for _ in range(max_len):
            logits, state = model.decoder(token, state)
            token = logits.argmax(dim=-1).masked_fill(finished[:, None], eos)  # (B, 1)
            finished |= token[:, 0] == eos
            ids.append(token)
            attention.append(model.decoder.attention_weights[-1])  # (B, 1, S)
    return torch.cat(ids, dim=1), torch.cat(attention, dim=1)


def exact_match(predicted: torch.Tensor, target: torch.Tensor, vocab: Vocab) -> float:
    """Fraction of rows whose decoded tokens (up to <eos>) are exactly the target's."""
    same = [vocab.decode(p, strip=True) == vocab.decode(t, strip=True) for p, t in zip(predicted, target)]
    return sum(same) / len(same)
