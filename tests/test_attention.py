"""The attention notebooks' helpers (shared.attention, shared.seq2seq, plot_attention) and their visible checks.

The visible check cells of 04-06 are run in-process on the solutions; the wrong answers they must catch are
entries of autograder/mistakes/, made by tests/test_mistakes.py.
"""

import contextlib
import io

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import notebooks
from shared.attention import DotProductAttention, masked_softmax
from shared.data import seeded_randn
from shared.plotting import plot_attention
from shared.seq2seq import (EncoderDecoder, Seq2SeqEncoder, exact_match, greedy_decode, letters_vocab, reversal_split,
                            teacher_forcing_input, train_seq2seq)
from submissions import solution_sources


def softmax_of_kept(X, lens):
    """Row by row: softmax over the first lens[b, i] scores, zeros elsewhere (all zeros when the length is 0)."""
    out = torch.zeros_like(X)
    for b in range(X.shape[0]):
        for i in range(X.shape[1]):
            if lens[b, i] > 0:
                out[b, i, : lens[b, i]] = torch.softmax(X[b, i, : lens[b, i]], dim=-1)
    return out


# shared.attention ---------------------------------------------------------------------------------


def test_masked_softmax_without_lengths_is_the_softmax():
    (X,) = seeded_randn(0, (2, 3, 4))
    torch.testing.assert_close(masked_softmax(X, None), torch.softmax(X, dim=-1), rtol=0, atol=0)


def test_masked_softmax_per_example_and_per_query_lengths():
    (X,) = seeded_randn(1, (3, 4, 6))
    lens = torch.tensor([6, 1, 3])
    per_example = masked_softmax(X, lens)
    torch.testing.assert_close(per_example, softmax_of_kept(X, lens[:, None].expand(3, 4)), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(masked_softmax(X, lens[:, None].expand(3, 4)), per_example, rtol=0, atol=0)
    lens_2d = torch.tensor([[1, 2, 3, 4], [6, 5, 4, 3], [2, 2, 6, 1]])
    torch.testing.assert_close(masked_softmax(X, lens_2d), softmax_of_kept(X, lens_2d), rtol=1e-12, atol=1e-15)


def test_masked_positions_are_exactly_zero_whatever_their_scores():
    (X,) = seeded_randn(2, (2, 2, 5))
    lens = torch.tensor([[2, 5], [3, 1]])
    masked = torch.arange(5) >= lens[..., None]
    huge = X.masked_fill(masked, 1e300)
    weights = masked_softmax(huge, lens)
    assert (weights[masked] == 0).all()
    torch.testing.assert_close(weights, masked_softmax(X, lens), rtol=0, atol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, dtype=X.dtype), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_row_of_valid_length_zero_is_all_zeros_with_finite_gradients(dtype):
    (X,) = seeded_randn(3, (2, 3, 4), dtype=dtype)
    X.requires_grad_(True)
    lens = torch.tensor([[0, 2, 4], [0, 0, 1]])
    weights = masked_softmax(X, lens)
    assert weights.dtype == dtype and not weights.isnan().any()
    assert (weights[lens == 0] == 0).all()
    (weights * torch.arange(4, dtype=dtype)).sum().backward()
    assert torch.isfinite(X.grad).all() and (X.grad[lens == 0] == 0).all()


def test_dot_product_attention_agrees_with_torch_including_rows_of_valid_length_zero():
    queries, keys, values = seeded_randn(4, (3, 4, 5), (3, 6, 5), (3, 6, 2))
    attention = DotProductAttention(dropout=0.5).eval()
    for lens in (torch.tensor([6, 3, 1]), torch.tensor([[1, 2, 3, 4], [0, 6, 6, 2], [5, 0, 1, 1]])):
        allowed = torch.arange(6) < (lens[:, None, None] if lens.dim() == 1 else lens[..., None])
        output = attention(queries, keys, values, lens)
        torch.testing.assert_close(output, F.scaled_dot_product_attention(queries, keys, values, attn_mask=allowed),
                                   rtol=1e-10, atol=1e-12)
        assert attention.attention_weights.shape == (3, 4, 6)
    torch.testing.assert_close(attention(queries, keys, values), F.scaled_dot_product_attention(queries, keys, values),
                               rtol=1e-10, atol=1e-12)


def test_dot_product_attention_drops_weights_only_in_training_and_keeps_them_undropped():
    queries, keys, values = seeded_randn(5, (2, 3, 4), (2, 5, 4), (2, 5, 3))
    attention = DotProductAttention(dropout=1.0)
    assert (attention.train()(queries, keys, values) == 0).all()
    torch.testing.assert_close(attention.attention_weights.sum(-1), torch.ones(2, 3, dtype=queries.dtype), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(attention.eval()(queries, keys, values), F.scaled_dot_product_attention(queries, keys, values),
                               rtol=1e-10, atol=1e-12)


# shared.seq2seq -----------------------------------------------------------------------------------


def test_reversal_split_reverses_pads_and_keeps_test_strings_out_of_training():
    train, test = reversal_split(num_train=300, num_test=50, min_length=2, max_length=5, num_letters=4, seed=7)
    assert len(train) == 300 and len(test) == 50 and train.source.shape == (300, 6)
    vocab = train.source_vocab
    assert vocab is train.target_vocab and vocab.tokens == ["<pad>", "<bos>", "<eos>", "a", "b", "c", "d"]
    for data in (train, test):
        for source, target, n_source, n_target in zip(data.source, data.target, data.source_valid_lens, data.target_valid_lens):
            letters = vocab.decode(source, strip=True)
            assert 2 <= len(letters) <= 5 and vocab.decode(target, strip=True) == letters[::-1]
            assert n_source == n_target == len(letters) + 1 and source[n_source - 1] == vocab.eos_id
            assert (source[n_source:] == vocab.pad_id).all() and (target[n_target:] == vocab.pad_id).all()
    train_strings = {tuple(row.tolist()) for row in train.source}
    assert len(train_strings) == 300 and not train_strings & {tuple(row.tolist()) for row in test.source}
    again, _ = reversal_split(num_train=300, num_test=50, min_length=2, max_length=5, num_letters=4, seed=7)
    assert torch.equal(again.source, train.source)
    with pytest.raises(ValueError):
        reversal_split(num_train=30, num_test=0, min_length=1, max_length=1, num_letters=4)


def test_letters_vocab_and_teacher_forcing_input():
    vocab = letters_vocab(["x", "y"])
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, None)
    assert vocab.encode(["y", "x", "<eos>"], 5) == [4, 3, 2, 0, 0] and vocab.decode([1, 4, 3, 2, 4, 0], strip=True) == ["y", "x"]
    with pytest.raises(ValueError):
        vocab.encode(["x", "y", "<eos>"], 2)
    target = torch.tensor([[4, 3, 2], [3, 2, 0]])
    assert teacher_forcing_input(target, bos=1).tolist() == [[1, 4, 3], [1, 3, 2]]


def test_encoder_is_time_major():
    encoder = Seq2SeqEncoder(vocab_size=7, embedding_size=3, hidden_size=5, num_layers=2)
    outputs, state = encoder(torch.randint(0, 7, (4, 6)))
    assert outputs.shape == (6, 4, 5) and state.shape == (2, 4, 5)
    torch.testing.assert_close(outputs[-1], state[-1])


class ScriptedDecoder(nn.Module):
    """A decoder that writes a fixed script of tokens, whatever it is fed; attention weights are uniform."""

    def __init__(self, script, vocab_size):
        super().__init__()
        self.script, self.vocab_size, self.attention_weights = script, vocab_size, []

    def init_state(self, enc_outputs, enc_valid_lens):
        return enc_outputs[0].permute(1, 0, 2), 0

    def forward(self, X, state):
        keys, step = state
        logits = torch.zeros(len(X), X.shape[1], self.vocab_size)
        self.attention_weights = []
        for t in range(X.shape[1]):
            logits[torch.arange(len(X)), t, self.script[:, step + t]] = 1.0
            self.attention_weights.append(torch.full((len(X), 1, keys.shape[1]), 1 / keys.shape[1]))
        return logits, (keys, step + X.shape[1])


def test_greedy_decode_feeds_back_and_fills_after_eos():
    script = torch.tensor([[3, 2, 4, 4], [4, 4, 3, 3]])  # row 0 ends after one token; row 1 never writes <eos>
    model = EncoderDecoder(Seq2SeqEncoder(5, 2, 3, 1), ScriptedDecoder(script, vocab_size=5))
    ids, attention = greedy_decode(model, torch.tensor([[3, 2, 0], [4, 4, 2]]), torch.tensor([2, 3]), bos=1, eos=2, max_len=4)
    assert ids.tolist() == [[3, 2, 2, 2], [4, 4, 3, 3]] and attention.shape == (2, 4, 3)
    vocab = letters_vocab(["x", "y"])
    assert exact_match(ids, torch.tensor([[3, 2, 0, 0], [4, 4, 3, 4]]), vocab) == 0.5


def load_decoder_class():
    namespace = {"torch": torch, "nn": nn, "DotProductAttention": DotProductAttention}
    exec(solution_sources("05_seq2seq_attention")["seq2seq_attention_decoder"], namespace)
    return namespace["Seq2SeqAttentionDecoder"]


def test_the_reversal_task_is_learned_quickly_with_the_attention_decoder():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    train, test = reversal_split(num_train=3000, num_test=200, min_length=2, max_length=5, num_letters=6, seed=1)
    vocab = train.source_vocab
    model = EncoderDecoder(Seq2SeqEncoder(len(vocab), 16, 32, 1), load_decoder_class()(len(vocab), 16, 32, 1))
    with contextlib.redirect_stdout(io.StringIO()):
        losses = train_seq2seq(model, train, steps=150, batch_size=64, lr=1e-2, device=torch.device("cpu"))
    assert len(losses) == 150 and not model.training
    assert torch.get_num_threads() == threads  # training runs on one thread and restores the setting
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10
    predicted, attention = greedy_decode(model, test.source, test.source_valid_lens, bos=vocab.bos_id, eos=vocab.eos_id, max_len=6)
    assert exact_match(predicted, test.target, vocab) > 0.5  # chance is below 6 ** -2
    assert (attention[test.source_valid_lens == 3][..., 3:] == 0).all()  # no weight on padding


# plot_attention -----------------------------------------------------------------------------------


def test_plot_attention_draws_one_labelled_panel_per_matrix():
    figure = plot_attention([torch.rand(2, 3), torch.rand(4, 2)], xlabels=[["a", "b", "c"], ["d", "e"]], titles=["one", "two"])
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["one", "two"] and len(figure.axes) == 3  # + the colour bar
    assert [t.get_text() for t in panels[1].get_xticklabels()] == ["d", "e"]
    single = plot_attention(torch.rand(3, 3), xlabels=["a", "b", "c"], ylabels=["a", "b", "c"])
    assert [t.get_text() for t in single.axes[0].get_yticklabels()] == ["a", "b", "c"]
    plt.close(figure)
    plt.close(single)


# The notebooks' visible checks ------------------------------------------------------------------------


VISIBLE_CHECKS = [  # (assignment, check cell, the answer cells it needs)
    ("04_attention", "test_masked_softmax", ["masked_softmax"]),
    ("04_attention", "test_dot_product_attention", ["masked_softmax", "dot_product_attention"]),
    ("05_seq2seq_attention", "test_seq2seq_attention_decoder", ["seq2seq_attention_decoder"]),
    ("06_multihead_attention", "test_transpose_qkv", ["transpose_qkv"]),
    ("06_multihead_attention", "test_transpose_output", ["transpose_output"]),
    ("06_multihead_attention", "test_multihead_attention", ["transpose_qkv", "transpose_output", "multihead_attention"]),
]


@pytest.mark.parametrize("assignment, test_id, needed", VISIBLE_CHECKS)
def test_the_visible_checks_pass_on_the_solutions(assignment, test_id, needed):
    assert "✓" in notebooks.run_cells(assignment, ["setup", *needed, test_id]).printed
