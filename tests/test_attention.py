"""The attention notebooks' helpers (shared.attention, shared.seq2seq, plot_attention) and their visible checks.

The visible check cells of 04-06 are run in-process on deliberately wrong answers: each must fail
with a message that names the problem.
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
from shared.checks import CheckFailed
from shared.data import seeded_randn
from shared.plotting import plot_attention
from shared.seq2seq import (EncoderDecoder, Seq2SeqEncoder, exact_match, greedy_decode, letters_vocab, reversal_split,
                            teacher_forcing_input, train_seq2seq)
from submissions import named, solution_sources


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


# The notebooks' visible checks on wrong answers -------------------------------------------------------


def run_check(assignment, test_id, needed, replace=None):
    """Run the setup cell, the answer cells it needs (some replaced) and the visible part of a check; returns the CheckFailed message."""
    with pytest.raises(CheckFailed) as raised:
        notebooks.run_cells(assignment, ["setup", *needed, test_id], replace=replace)
    return str(raised.value)


def replaced(assignment, grade_id, old, new):
    source = solution_sources(assignment)[grade_id]
    assert old in source, old
    return source.replace(old, new)


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


def wrong_masked_softmax(result):
    return f"""
def masked_softmax(X, valid_lens):
    if valid_lens is None:
        return torch.softmax(X, dim=-1)
    if valid_lens.dim() == 1:
        valid_lens = valid_lens[:, None]
    keep = torch.arange(X.shape[-1]) < valid_lens[..., None]
    return {result}
"""


@pytest.mark.parametrize("result, message", [
    # -inf at masked positions: 0 / 0 in a row with nothing to keep
    ("torch.softmax(X.masked_fill(~keep, -torch.inf), dim=-1)",
     named("04_attention", "masked_with_minus_inf")),
    # a large negative number: a uniform row where nothing is kept
    ("torch.softmax(X.masked_fill(~keep, -1e6), dim=-1)", named("04_attention", "masked_with_large_negative")),
    # zeroing after the softmax without renormalising
    ("torch.softmax(X, dim=-1) * keep", named("04_attention", "mask_after_softmax")),
])
def test_masked_softmax_check_names_the_mistake(result, message):
    wrong = {"masked_softmax": wrong_masked_softmax(result)}
    assert message in run_check("04_attention", "test_masked_softmax", ["masked_softmax"], wrong)


def test_dot_product_attention_check_catches_a_missing_scale():
    wrong = replaced("04_attention", "dot_product_attention", "/ math.sqrt(d)", "")
    message = run_check("04_attention", "test_dot_product_attention", ["masked_softmax", "dot_product_attention"],
                        {"dot_product_attention": wrong})
    assert "Check 'dot_product_attention': output['output'] differs from the expected values" in message


def test_transpose_checks_catch_head_major_order():
    wrong = replaced("06_multihead_attention", "transpose_qkv", "X.permute(0, 2, 1, 3)", "X.permute(2, 0, 1, 3)")
    message = run_check("06_multihead_attention", "test_transpose_qkv", ["transpose_qkv"], {"transpose_qkv": wrong})
    assert named("06_multihead_attention", "split_head_major") in message
    wrong = replaced("06_multihead_attention", "transpose_output", "X.reshape(BH // num_heads, num_heads, n, p)",
                     "X.reshape(num_heads, BH // num_heads, n, p).transpose(0, 1)")
    message = run_check("06_multihead_attention", "test_transpose_output", ["transpose_output"], {"transpose_output": wrong})
    assert named("06_multihead_attention", "join_head_major") in message


def test_multihead_check_catches_lengths_repeated_in_the_wrong_order():
    wrong = replaced("06_multihead_attention", "multihead_attention", "torch.repeat_interleave(valid_lens, self.num_heads, dim=0)",
                     "valid_lens.repeat(self.num_heads)")
    message = run_check("06_multihead_attention", "test_multihead_attention", ["transpose_qkv", "transpose_output", "multihead_attention"],
                        {"multihead_attention": wrong})
    assert "Check 'multihead_attention': output['output'] differs from the expected values" in message


@pytest.mark.parametrize("old, new, message", [
    # embedding first, context second
    ("torch.cat([context.squeeze(1), embedded], dim=-1)", "torch.cat([embedded, context.squeeze(1)], dim=-1)",
     "Check 'seq2seq_attention_decoder': output['logits'] differs"),
    # the first layer's state as the query
    ("hidden_state[-1].unsqueeze(1)", "hidden_state[0].unsqueeze(1)", "Check 'seq2seq_attention_decoder': output['logits'] differs"),
    # the weights of earlier calls are never cleared
    ("outputs, self._attention_weights = [], []", "outputs = []",
     named("05_seq2seq_attention", "attention_weights_not_reset")),
    # the state is not passed on: every call restarts from the encoder's state
    ("return logits, (enc_outputs, hidden_state, enc_valid_lens)", "return logits, state",
     "Check 'seq2seq_attention_decoder': output['hidden_state'] differs"),
])
def test_decoder_check_names_the_mistake(old, new, message):
    wrong = replaced("05_seq2seq_attention", "seq2seq_attention_decoder", old, new)
    assert message in run_check("05_seq2seq_attention", "test_seq2seq_attention_decoder", ["seq2seq_attention_decoder"],
                              {"seq2seq_attention_decoder": wrong})
