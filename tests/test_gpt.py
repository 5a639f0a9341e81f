"""The GPT notebook's helpers (shared.arithmetic, shared.experiments, shared.lstm_lm, its plots) and its visible checks.

The visible check cells of 07_gpt are run in-process on the solution; the wrong answers they must catch are
entries of autograder/mistakes/07_gpt.toml, made by tests/test_mistakes.py.
"""

import matplotlib
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import notebooks
from conftest import ROOT
from shared.arithmetic import Tokenizer, apply_operator, get_arithmetic_dataset
from shared.experiments import History, evaluate, extrema, first_step_reaching, mean_std, metrics_table, summarize, train
from shared.lstm_lm import LSTMLM
from shared.plotting import plot_attention_grid, plot_metrics_against, plot_runs_by_value, plot_training_curves

matplotlib.use("Agg")

ASSIGNMENT = "07_gpt"


def rhs_loss_and_accuracy(logits, targets, eq_positions, mask, reduction="mean"):
    """A plain-loop version of the notebook's loss, for the helpers' tests."""
    losses, accuracies = [], []
    for i in range(len(targets)):
        keep = [j for j in range(targets.shape[1]) if j > eq_positions[i] and mask[i, j]]
        losses.append(F.cross_entropy(logits[i, keep], targets[i, keep]))
        accuracies.append((logits[i, keep].argmax(-1) == targets[i, keep]).all().to(logits.dtype))
    loss, accuracy = torch.stack(losses), torch.stack(accuracies)
    if reduction == "none":
        return loss, accuracy
    return (loss.mean(), accuracy.mean()) if reduction == "mean" else (loss.sum(), accuracy.sum())


def solve(text, p, operator):
    """The value of 'BOS a + b [+ c] = r EOS ...' computed left to right, and the r written in it."""
    tokens = text.split()
    operands = [int(t) for t in tokens[1 : tokens.index("=")] if t.isdigit()]
    value = operands[0]
    for x in operands[1:]:
        value = apply_operator(operator, value, x, p)
    return value, int(tokens[tokens.index("=") + 1])


# shared.arithmetic ----------------------------------------------------------------------------------


def test_tokenizer_numbers_first_pad_last_and_round_trip():
    tokenizer = Tokenizer(5, "*")
    assert tokenizer.tokens == ["0", "1", "2", "3", "4", "*", "=", "BOS", "EOS", "PAD"] and len(tokenizer) == 10
    assert (tokenizer.eq_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id) == (6, 7, 8, 9, None)
    ids = tokenizer.encode("BOS 3 * 4 = 2 EOS")
    assert ids == [7, 3, 5, 4, 6, 2, 8]
    assert tokenizer.decode(ids) == "BOS 3 * 4 = 2 EOS" == tokenizer.decode(torch.tensor(ids))
    assert tokenizer.tokens_of(ids) == "BOS 3 * 4 = 2 EOS".split()
    assert tokenizer.encode(["3", "*"]) == ids[1:3] and tokenizer.encode(["3"], 3) == [3, 9, 9]
    with pytest.raises(KeyError, match="5"):
        tokenizer.encode("BOS 5 * 1")


@pytest.mark.parametrize("operator", ["+", "-", "*", "/"])
def test_every_equation_appears_once_with_its_true_result(operator):
    p = 7
    (train_set, valid_set), tokenizer, max_length, padding_index = get_arithmetic_dataset(p, operator, r_train=0.5, seed=1)
    expected = p * (p - 1) if operator == "/" else p * p
    assert len(train_set) + len(valid_set) == expected and len(train_set) == round(0.5 * expected)
    assert max_length == 7 and padding_index == tokenizer.pad_id
    texts = []
    for inputs, targets, eq_position, mask in [*train_set, *valid_set]:
        text = tokenizer.decode(torch.cat([inputs[:1], targets]))
        value, written = solve(text, p, operator)
        assert value == written, text
        assert int(eq_position) == 3 and mask.all() and torch.equal(inputs[1:], targets[:-1])
        texts.append(text)
    assert len(set(texts)) == expected
    if operator == "/":
        assert not any(t.split()[3] == "0" for t in texts)


def test_orders_two_and_three_are_split_separately_and_padded():
    p = 3
    (train_set, valid_set), tokenizer, max_length, _ = get_arithmetic_dataset(p, "+", r_train=0.5, operation_orders=(2, 3), seed=0)
    assert max_length == 9
    for dataset, fraction in ((train_set, lambda n: round(0.5 * n)), (valid_set, lambda n: n - round(0.5 * n))):
        inputs, targets, eq_positions, mask = dataset.tensors
        assert inputs.shape[1] == targets.shape[1] == 8
        assert (eq_positions == 3).sum() == fraction(p**2) and (eq_positions == 5).sum() == fraction(p**3)
        assert torch.equal(mask, targets != tokenizer.pad_id)
        for row in range(len(targets)):
            tokens = tokenizer.tokens_of(targets[row])
            assert tokens[int(eq_positions[row])] == "="
            rhs = [t for j, t in enumerate(tokens) if j > eq_positions[row] and mask[row, j]]
            assert len(rhs) == 2 and rhs[1] == "EOS"
            if eq_positions[row] == 3:
                assert tokens[-2:] == ["PAD", "PAD"]
            value, written = solve("BOS " + " ".join(tokens), p, "+")
            assert value == written


def test_the_split_is_reproducible_and_depends_on_the_seed():
    first = get_arithmetic_dataset(11, "+", 0.3, seed=4)[0][0].tensors[0]
    again = get_arithmetic_dataset(11, "+", 0.3, seed=4)[0][0].tensors[0]
    other = get_arithmetic_dataset(11, "+", 0.3, seed=5)[0][0].tensors[0]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="prime"):
        get_arithmetic_dataset(8, "/")
    with pytest.raises(ValueError, match="operator"):
        get_arithmetic_dataset(7, "^")
    with pytest.raises(ValueError, match="r_train"):
        get_arithmetic_dataset(7, "+", r_train=0.0)


# shared.experiments -----------------------------------------------------------------------------


def handmade_history():
    history = History()
    rows = [  # step, train_loss, valid_loss, train_accuracy, valid_accuracy
        (0, 3.0, 3.0, 0.0, 0.0), (10, 1.0, 2.5, 0.5, 0.1), (20, 0.1, 2.0, 1.0, 0.2),
        (30, 0.1, 0.5, 1.0, 0.9), (40, 0.05, 0.6, 1.0, 1.0), (50, 0.05, 0.4, 1.0, 1.0),
    ]
    for step, tl, vl, ta, va in rows:
        history.log(step, train_loss=tl, valid_loss=vl, train_accuracy=ta, valid_accuracy=va)
    return history


def test_extrema_give_best_values_their_first_step_and_the_delays():
    e = extrema(handmade_history())
    assert (e["train_loss"], e["t_train_loss"]) == (0.05, 40)
    assert (e["valid_loss"], e["t_valid_loss"]) == (0.4, 50)
    assert (e["train_accuracy"], e["t_train_accuracy"]) == (1.0, 20)
    assert (e["valid_accuracy"], e["t_valid_accuracy"]) == (1.0, 40)
    assert e["delta_t_loss"] == 10 and e["delta_t_accuracy"] == 20
    early = extrema(handmade_history(), T_max=30)
    assert (early["valid_loss"], early["t_valid_loss"], early["valid_accuracy"], early["t_train_loss"]) == (0.5, 30, 0.9, 20)
    with pytest.raises(ValueError):
        extrema(History(), T_max=5)


def test_first_step_reaching_and_mean_std():
    history = handmade_history()
    assert first_step_reaching(history, "valid_accuracy", 0.9) == 30
    assert first_step_reaching(history, "valid_loss", 1.0) == 30
    assert first_step_reaching(history, "valid_accuracy", 1.1) is None
    assert mean_std([7500, 8200]) == (7850.0, 350.0)
    assert mean_std([3.0]) == (3.0, 0.0)


def test_metrics_table_shows_mean_and_std_over_runs_for_each_model():
    other = handmade_history()
    other.valid_accuracy[3] = 1.0  # reaches 1.0 at step 30 instead of 40
    summary = summarize({"A": [handmade_history(), other]})
    assert summary["A"]["t_valid_accuracy"] == (35.0, 5.0)
    table = metrics_table({"A": [handmade_history(), other], "B": [handmade_history()]})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "A", "B"]
    assert any(line.startswith("t_f(A_val)") and "35 ± 5" in line and "40 ± 0" in line for line in lines)
    assert any(line.startswith("Δt(A)") and "15 ± 5" in line for line in lines)


def tiny_problem():
    (train_set, valid_set), tokenizer, max_length, _ = get_arithmetic_dataset(5, "+", r_train=0.6, seed=0)
    return train_set, valid_set, tokenizer


def test_evaluate_averages_over_every_example_in_eval_mode():
    train_set, _, tokenizer = tiny_problem()
    torch.manual_seed(0)
    model = LSTMLM(len(tokenizer), 8, 8, num_layers=2, dropout=0.5).train()
    loss, accuracy = evaluate(model, train_set, rhs_loss_and_accuracy, batch_size=4)
    assert model.training
    model.eval()
    with torch.no_grad():
        inputs, targets, eq_positions, mask = train_set.tensors
        expected = rhs_loss_and_accuracy(model(inputs)[0], targets, eq_positions, mask)
    assert loss == pytest.approx(float(expected[0]), rel=1e-5) and accuracy == pytest.approx(float(expected[1]))


def test_train_logs_at_the_expected_steps_learns_and_is_reproducible(capsys):
    train_set, valid_set, tokenizer = tiny_problem()

    def one_run(**changes):
        torch.manual_seed(3)
        model = LSTMLM(len(tokenizer), 16, 16, num_layers=1)
        settings = dict(steps=45, batch_size=8, lr=1e-2, weight_decay=0.0, eval_every=20, seed=3) | changes
        return train(model, train_set, valid_set, rhs_loss_and_accuracy, **settings)

    history = one_run()
    printed = capsys.readouterr()
    assert "training" in printed.out and printed.err == ""
    assert history.steps == [0, 20, 40, 45]
    assert all(len(getattr(history, name)) == 4 for name in ("train_loss", "valid_loss", "train_accuracy", "valid_accuracy"))
    assert history.train_loss[-1] < 0.7 * history.train_loss[0] and history.seconds > 0
    again = one_run()
    assert again.train_loss == history.train_loss and again.valid_accuracy == history.valid_accuracy
    other_betas = one_run(betas=(0.9, 0.98))  # the notebook's AdamW setting reaches the optimiser
    assert other_betas.train_loss[0] == history.train_loss[0] and other_betas.train_loss[-1] != history.train_loss[-1]


# shared.lstm_lm and plots ---------------------------------------------------------------------------


def test_lstm_lm_is_embedding_lstm_classifier():
    torch.manual_seed(0)
    model = LSTMLM(11, 6, 5, num_layers=2).eval()
    x = torch.randint(0, 11, (3, 4))
    logits, (h, c) = model(x)
    assert logits.shape == (3, 4, 11) and h.shape == c.shape == (2, 3, 5)
    output, _ = model.lstm(model.embedding(x))
    torch.testing.assert_close(logits, model.classifier(output), rtol=0, atol=0)
    assert sum(p.numel() for p in LSTMLM(11, 6, 5, 2, bias=False).parameters()) == 11 * 6 + 4 * 5 * (6 + 5) + 4 * 5 * 10 + 5 * 11


def test_plot_attention_grid_has_one_labelled_panel_per_layer_and_head():
    figure = plot_attention_grid(torch.rand(2, 3, 4, 4).softmax(-1), ["BOS", "1", "+", "2"], title="t")
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"layer {l}, head {h}" for l in range(2) for h in range(3)]
    assert [t.get_text() for t in panels[4].get_xticklabels()] == ["BOS", "1", "+", "2"]
    with pytest.raises(ValueError):
        plot_attention_grid(torch.rand(1, 1, 3, 3), ["a", "b"])


def test_curve_and_scaling_plots_draw_every_run():
    histories = [handmade_history(), handmade_history()]
    figure = plot_training_curves({"LSTM": histories, "GPT": histories[:1]})
    assert len(figure.axes) == 4 and figure.axes[0].get_yscale() == "log"
    assert len(figure.axes[1].get_lines()) == 2  # training and validation accuracy
    figure = plot_runs_by_value({0.3: histories[0], 0.7: histories[1]}, "r_train")
    assert len(figure.axes[0].get_lines()) == 2
    e = extrema(histories[0])
    figure = plot_metrics_against([0.3, 0.7], {"LSTM": [e, e], "GPT": [e, e]}, "r_train")
    assert len(figure.axes) == 8 and len(figure.axes[0].get_lines()) == 2
    with pytest.raises(ValueError):
        plot_metrics_against([0.3, 0.7], {"LSTM": [e]}, "r_train")


# The notebook's visible checks ------------------------------------------------------------------------


NEEDS = {  # check cell -> the cells it needs, in notebook order
    "test_layer_norm": ["layer_norm"],
    "test_split_merge_heads": ["multi_headed_attention"],
    "test_attention_weights": ["multi_headed_attention"],
    "test_apply_attention": ["multi_headed_attention"],
    "test_attention_forward": ["multi_headed_attention"],
    "test_attention_num_parameters": ["multi_headed_attention", "attention_num_parameters"],
    "test_decoder_num_parameters": ["layer_norm", "multi_headed_attention", "block", "decoder_num_parameters"],
    "test_sinusoidal_embeddings": ["gpt_embedding"],
    "test_gpt_embedding": ["gpt_embedding"],
    "test_gpt": ["layer_norm", "multi_headed_attention", "block", "gpt_embedding", "gpt"],
    "test_loss": ["loss_and_accuracy", "loss_inputs"],
    "test_accuracy": ["loss_and_accuracy", "loss_inputs"],
    "test_reductions": ["loss_and_accuracy", "loss_inputs"],
}


def run_visible(test_id, replace=None):
    """Run setup, the needed cells (some replaced by wrong versions) and the visible part of a check cell."""
    return notebooks.run_cells(ASSIGNMENT, ["setup", *NEEDS[test_id], test_id], replace=replace).printed


@pytest.mark.parametrize("test_id", NEEDS)
def test_the_visible_checks_pass_on_the_solution(test_id):
    assert "✓" in run_visible(test_id)


def test_token_level_nll_loss_gives_another_number_than_the_notebooks_loss():
    """The handout's warning, on the visible check's own inputs: the checks can tell the two apart."""
    namespace = notebooks.run_cells(ASSIGNMENT, ["setup", "loss_inputs"]).namespace
    logits, targets, eq_positions, mask = namespace["loss_inputs"](10, B=4, S=7, V=9, eq_positions=[2, 3, 5, 1], lengths=[7, 6, 7, 5])
    rhs = (torch.arange(7)[None] > eq_positions[:, None]) & mask
    token_level = F.nll_loss(F.log_softmax(logits, -1).transpose(1, 2), targets.masked_fill(~rhs, -100), ignore_index=-100)
    per_sequence, _ = rhs_loss_and_accuracy(logits, targets, eq_positions, mask)
    assert abs(float(token_level) - float(per_sequence)) > 1e-3
    reference = torch.load(ROOT / "shared/references" / f"{ASSIGNMENT}.pt", weights_only=True)
    torch.testing.assert_close(reference["loss: mean over each row's RHS, then over the rows"], per_sequence, rtol=1e-9, atol=1e-12)
