"""The helper package beyond checks: device choice, fast mode, data, training."""

import torch
from torch import nn

from shared import fast_mode, pick_device
from shared.data import fill_parameters_, length_bucketed_batches, modular_progressions, next_token_batches, seeded_randn
from shared.metrics import next_token_accuracy
from shared.training import timed_warmup_cosine, train_language_model


def test_fast_mode_follows_ci_and_nbgrader(monkeypatch):
    monkeypatch.delenv("COURSE_FAST", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert not fast_mode()
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert fast_mode()
    monkeypatch.delenv("NBGRADER_EXECUTION")
    monkeypatch.setenv("COURSE_FAST", "1")
    assert fast_mode()


def test_pick_device_honours_a_preference_and_falls_back_to_what_exists(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.delenv("COURSE_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device().type == expected


def test_modular_progressions_follow_their_rule():
    sequences = modular_progressions(50, length=9, vocab_size=13, seed=3)
    assert sequences.shape == (50, 9) and sequences.dtype == torch.long
    steps = (sequences[:, 1:] - sequences[:, :-1]) % 13
    assert (steps == steps[:, :1]).all() and (steps != 0).all()
    assert torch.equal(sequences, modular_progressions(50, length=9, vocab_size=13, seed=3))


def test_next_token_batches_cover_every_sequence_once_with_shifted_targets():
    sequences = modular_progressions(10, length=5, vocab_size=7, seed=0)
    batches = list(next_token_batches(sequences, batch_size=4, seed=1))
    assert [len(inputs) for inputs, _ in batches] == [4, 4, 2]
    inputs = torch.cat([i for i, _ in batches])
    targets = torch.cat([t for _, t in batches])
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert sorted(map(tuple, torch.cat([inputs, targets[:, -1:]], 1).tolist())) == sorted(map(tuple, sequences.tolist()))


def test_seeded_helpers_are_reproducible_and_cover_every_parameter():
    a, b = seeded_randn(5, (2, 3), (4,))
    assert a.dtype == torch.float64 and b.shape == (4,)
    assert torch.equal(a, seeded_randn(5, (2, 3))[0])
    first = fill_parameters_(nn.LSTM(3, 4).double(), seed=1)
    second = fill_parameters_(nn.LSTM(3, 4).double(), seed=1)
    for (name, p), (_, q) in zip(first.named_parameters(), second.named_parameters()):
        assert torch.equal(p, q), name


def test_training_loop_learns_a_predictable_sequence():
    torch.manual_seed(0)
    sequences = modular_progressions(512, length=8, vocab_size=7, seed=0)

    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding, self.lstm, self.head = nn.Embedding(7, 16), nn.LSTM(16, 32, batch_first=True), nn.Linear(32, 7)

        def forward(self, x):
            output, state = self.lstm(self.embedding(x))
            return self.head(output), state

    model = TinyLM()
    losses = train_language_model(
        model, lambda epoch: next_token_batches(sequences, 64, seed=epoch), steps=120, lr=1e-2, device=torch.device("cpu")
    )
    assert len(losses) == 120 and sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    with torch.no_grad():
        logits, _ = model(sequences[:, :-1])
    assert next_token_accuracy(logits[:, 1:], sequences[:, 2:]) > 0.9


def test_length_bucketed_batches_cover_every_story_once_with_little_padding():
    lengths = torch.randint(2, 300, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    stories = [torch.zeros(n) for n in lengths]
    batches = list(length_bucketed_batches(stories, 8, torch.Generator().manual_seed(1)))
    assert sorted(id(s) for batch in batches for s in batch) == sorted(id(s) for s in stories)
    assert all(1 <= len(batch) <= 8 for batch in batches)
    padded = sum(len(batch) * max(len(s) for s in batch) for batch in batches)
    assert padded < 1.05 * sum(lengths)  # random batches of 8 would pad about 60% more
    again = list(length_bucketed_batches(stories, 8, torch.Generator().manual_seed(1)))
    other = list(length_bucketed_batches(stories, 8, torch.Generator().manual_seed(2)))
    assert [[id(s) for s in b] for b in again] == [[id(s) for s in b] for b in batches]
    assert [[id(s) for s in b] for b in other] != [[id(s) for s in b] for b in batches]


def test_timed_warmup_cosine_rises_then_decays_to_the_final_fraction(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("shared.training.time.monotonic", lambda: clock[0])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = timed_warmup_cosine(optimizer, minutes=10, warmup=0.1, final=0.05)

    def lr_at(seconds):
        clock[0] = 1000.0 + seconds
        optimizer.step()
        scheduler.step()
        return optimizer.param_groups[0]["lr"]

    assert abs(lr_at(30) - 0.05) < 1e-9  # half way through the one-minute warm-up
    assert abs(lr_at(60) - 0.1) < 1e-9  # the peak
    assert abs(lr_at(330) - 0.1 * (0.05 + 0.95 * 0.5)) < 1e-9  # half way down the cosine
    assert abs(lr_at(600) - 0.005) < 1e-9 and abs(lr_at(900) - 0.005) < 1e-9  # the floor, also past the budget
