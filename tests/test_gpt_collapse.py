"""07's training cannot derail a correct GPT: three valid implementations of the attention and the LayerNorm train
at the notebook's settings without collapsing, and a deliberately unstable setting does collapse.

A *collapse* (shared.experiments.collapsed): a run whose best validation accuracy a reached at least 0.5 ends
below a / 2. With the settings 07 used before (constant lr 5e-3, no warm-up, no clipping) a correct GPT that
rounds differently from the solution (an additive -inf mask and einsum) reached 0.976 at r_train = 0.7 and
ended at chance (loss log(31) / 2: the result r guessed, EOS known). bench/gpt_collapse.py trains these variants
at full size, old settings and new side by side.

Each variant replaces cells of the solution notebook through the one adapter (tools/notebooks.run_cells), and
is first shown to be a valid answer: equal to the solution in float64 and passing the notebook's visible checks.
"""

from __future__ import annotations

import math

import pytest
import torch

import notebooks
from shared.arithmetic import get_arithmetic_dataset
from shared.experiments import History, collapsed, largest_drop, lr_at, train

ASSIGNMENT = "07_gpt"
MODEL_CELLS = ["layer_norm", "multi_headed_attention", "block", "gpt_embedding", "gpt", "loss_and_accuracy"]
EXPERIMENT_CELLS = ["setup", *MODEL_CELLS, "data", "config"]


def edited(grade_id: str, *pairs: tuple[str, str]) -> str:
    """The solution's cell `grade_id` with each (old, new) text replaced; old must occur exactly once."""
    source = notebooks.cell_source(ASSIGNMENT, grade_id)
    for old, new in pairs:
        assert source.count(old) == 1, f"{grade_id} no longer holds {old!r}: update this test's variants"
        source = source.replace(old, new)
    return source


WEIGHTS = """        S = queries.shape[2]
        scores = queries @ keys.transpose(-2, -1) / math.sqrt(self.head_size)
        future = torch.ones(S, S, dtype=torch.bool, device=scores.device).triu(diagonal=1)
        return torch.softmax(scores.masked_fill(future, -torch.inf), dim=-1)"""
APPLY = "return self.merge_heads(weights @ values), weights"
NORM = """        centered = inputs - inputs.mean(dim=-1, keepdim=True)
        variance = (centered * centered).mean(dim=-1, keepdim=True)  # biased: divides by hidden_size
        return centered * torch.rsqrt(variance + self.eps) * self.weight + self.bias"""

# Three correct answers that round differently from the solution (and from one another).
VARIANTS: dict[str, dict[str, str]] = {
    # the arrangement that collapsed: an additive -inf mask, einsum products; var(unbiased=False) and rsqrt
    "additive mask + einsum": {
        "multi_headed_attention": edited("multi_headed_attention", (WEIGHTS, """        S = queries.shape[2]
        scores = torch.einsum("bhqd,bhkd->bhqk", queries, keys) / math.sqrt(self.head_size)
        mask = torch.full((S, S), float("-inf"), dtype=scores.dtype, device=scores.device).triu(diagonal=1)
        return torch.softmax(scores + mask, dim=-1)"""), (APPLY, """weighted = torch.einsum("bhqk,bhkd->bhqd", weights, values)
        return self.merge_heads(weighted), weights""")),
        "layer_norm": edited("layer_norm", (NORM, """        mean = inputs.mean(dim=-1, keepdim=True)
        variance = inputs.var(dim=-1, unbiased=False, keepdim=True)
        return (inputs - mean) * torch.rsqrt(variance + self.eps) * self.weight + self.bias""")),
    },
    # masked_fill with the dtype's most negative number, softmax in float32 at least (as for half-precision
    # scores); LayerNorm from x.std
    "finfo.min + float32 softmax": {
        "multi_headed_attention": edited("multi_headed_attention", (WEIGHTS, """        S = queries.shape[2]
        scores = torch.matmul(queries, keys.transpose(2, 3)) * self.head_size ** -0.5
        allowed = torch.tril(torch.ones(S, S, dtype=torch.bool, device=scores.device))
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(scores.dtype)""")),
        "layer_norm": edited("layer_norm", (NORM, """        mean = inputs.mean(-1, keepdim=True)
        std = inputs.std(-1, unbiased=False, keepdim=True)
        return self.weight * (inputs - mean) / torch.sqrt(std ** 2 + self.eps) + self.bias""")),
    },
    # a hand-written softmax (max subtracted, exp times a 0/1 causal matrix); LayerNorm as E[x^2] - E[x]^2
    "explicit exp softmax": {
        "multi_headed_attention": edited("multi_headed_attention", (WEIGHTS, """        S = queries.shape[2]
        scores = (queries / math.sqrt(self.head_size)) @ keys.transpose(-1, -2)
        causal = torch.tril(torch.ones(S, S, dtype=scores.dtype, device=scores.device))
        exps = torch.exp(scores - scores.amax(dim=-1, keepdim=True).detach()) * causal
        return exps / exps.sum(dim=-1, keepdim=True)""")),
        "layer_norm": edited("layer_norm", (NORM, """        mean = inputs.mean(dim=-1, keepdim=True)
        variance = (inputs * inputs).mean(dim=-1, keepdim=True) - mean * mean
        return self.weight * ((inputs - mean) / torch.sqrt(variance + self.eps)) + self.bias""")),
    },
}

# The settings 07 trained its GPT with before: constant lr 5e-3 (LR["GPT"]), no warm-up, no clipping.
OLD_SETTINGS = dict(lr=5e-3, warmup_steps=0, schedule="constant", clip_norm=None)


def experiment(variant: str | None) -> dict:
    """The namespace of 07's cells down to `config`, the model cells replaced by `variant`'s (None: the solution)."""
    return notebooks.run_cells(ASSIGNMENT, EXPERIMENT_CELLS, replace=VARIANTS[variant] if variant else None).namespace


# The variants are valid answers ---------------------------------------------------------------------------


def model_outputs(variant: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and attention weights of a seeded float64 GPT (the notebook's sizes) on seeded ids."""
    namespace = notebooks.run_cells(ASSIGNMENT, ["setup", *MODEL_CELLS], replace=VARIANTS[variant] if variant else None).namespace
    torch.manual_seed(7)
    model = namespace["GPT"](4, 2, 64, 35, 6).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():  # larger than the initialisation, so that the softmax is far from uniform
            parameter.add_(0.3 * torch.randn_like(parameter))
    ids = torch.randint(0, 35, (8, 6), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        logits, (_, attentions) = model(ids)
    return logits, attentions


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_computes_what_the_solution_computes(variant):
    logits, attentions = model_outputs(variant)
    expected_logits, expected_attentions = model_outputs(None)
    assert not torch.equal(logits, expected_logits)  # not the solution's code: it rounds differently ...
    torch.testing.assert_close(logits, expected_logits, rtol=1e-6, atol=1e-6)  # ... but computes the same function
    torch.testing.assert_close(attentions, expected_attentions, rtol=1e-6, atol=1e-6)
    assert torch.all(attentions.triu(diagonal=1) == 0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("check", ["test_layer_norm", "test_attention_weights", "test_apply_attention", "test_gpt"])
def test_each_variant_passes_the_notebooks_visible_checks(variant, check):
    needs = MODEL_CELLS[: MODEL_CELLS.index("gpt") + 1] if check == "test_gpt" else [
        "layer_norm" if check == "test_layer_norm" else "multi_headed_attention"]
    printed = notebooks.run_cells(ASSIGNMENT, ["setup", *needs, check], replace=VARIANTS[variant]).printed
    assert "✓" in printed


# What collapse means, and the schedule's pieces --------------------------------------------------------------


def history_of(valid_accuracy: list[float]) -> History:
    """A History with these validation accuracies at steps 0, 10, ... (other metrics filler)."""
    history = History()
    for i, accuracy in enumerate(valid_accuracy):
        history.log(10 * i, train_loss=1.0, valid_loss=1.0, train_accuracy=accuracy, valid_accuracy=accuracy)
    return history


def test_a_collapse_is_a_fall_below_half_the_best_after_learning():
    assert collapsed(history_of([0.0, 0.5, 0.976, 0.9, 0.03]))  # the reported run: 0.976, then chance
    assert not collapsed(history_of([0.0, 0.5, 0.976, 0.2, 0.95]))  # a spike it recovered from is not a collapse
    assert not collapsed(history_of([0.0, 0.3, 0.4, 0.1]))  # never learned: a bug or too little data, not a collapse
    assert not collapsed(history_of([0.0, 0.8, 0.41]))  # above half the best
    assert largest_drop(history_of([0.0, 0.95, 0.5, 1.0, 0.9])) == pytest.approx(0.45)
    assert largest_drop(history_of([0.0, 0.5, 0.1, 0.85])) == 0.0  # never reached 0.9


def test_lr_at_warms_up_linearly_then_stays_or_follows_a_cosine():
    assert [lr_at(step, 10, 1.0, warmup_steps=4) for step in (1, 2, 4, 5, 10)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    cosine = [lr_at(step, 10, 1.0, warmup_steps=2, schedule="cosine", min_lr=0.1) for step in range(1, 11)]
    assert cosine[:2] == [0.5, 1.0] and cosine[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(cosine[1:], cosine[2:]))
    assert lr_at(6, 10, 1.0, warmup_steps=2, schedule="cosine", min_lr=0.0) == pytest.approx(0.5)  # half way down
    assert lr_at(3, 10, 0.5) == 0.5  # the defaults: a constant rate


def tiny_run(**changes) -> tuple[History, torch.nn.Module]:
    """Shortly train notebook 07's GPT on p = 5 equations (solution cells)."""
    namespace = notebooks.run_cells(ASSIGNMENT, ["setup", *MODEL_CELLS]).namespace
    (train_set, valid_set), tokenizer, max_length, _ = get_arithmetic_dataset(5, "+", r_train=0.6, seed=0)
    torch.manual_seed(0)
    model = namespace["GPT"](2, 1, 16, len(tokenizer), max_length - 1)
    settings = dict(steps=20, batch_size=8, lr=1e-2, weight_decay=0.0, eval_every=10, seed=0, progress=False) | changes
    return train(model, train_set, valid_set, namespace["get_loss_and_accuracy"], **settings), model


def test_train_clips_gradients_and_schedules_the_learning_rate():
    plain, _ = tiny_run()
    assert plain.train_loss[-1] < 0.8 * plain.train_loss[0]
    # Gradients clipped to a norm far below AdamW's eps leave steps of almost nothing: the clipping reaches them.
    clipped, _ = tiny_run(clip_norm=1e-13)
    assert abs(clipped.train_loss[-1] - clipped.train_loss[0]) < 0.01 * abs(plain.train_loss[-1] - plain.train_loss[0])
    unclipped, _ = tiny_run(clip_norm=1e6)  # a norm never reached changes nothing
    assert unclipped.train_loss == plain.train_loss
    # A warm-up as long as the run starts from a rate near 0: less progress by step 10.
    warm, _ = tiny_run(warmup_steps=20)
    assert warm.train_loss[0] == plain.train_loss[0] and warm.train_loss[1] > plain.train_loss[1]
    decayed, _ = tiny_run(schedule="cosine")
    assert decayed.train_loss[1] != plain.train_loss[1]
    with pytest.raises(ValueError, match="schedule"):
        tiny_run(schedule="linear")


# Training at the notebook's settings -------------------------------------------------------------------------------

R_TRAIN = 0.7  # the scaling experiment's largest split, where the collapse was seen


@pytest.mark.parametrize("variant", [None, *VARIANTS])
def test_no_variant_collapses_at_the_notebooks_fast_settings(variant, monkeypatch):
    """Each implementation through 07's own `run`, in fast mode (as the autograder runs it), with STABLE's settings."""
    monkeypatch.setenv("COURSE_FAST", "1")
    namespace = experiment(variant)
    passed = {}

    def recording_train(*args, **settings):
        passed.update(settings)
        return train(*args, **settings)

    namespace["train"] = recording_train
    (train_set, valid_set), *_ = get_arithmetic_dataset(31, "+", r_train=R_TRAIN, operation_orders=2, seed=0)
    _, history = namespace["run"]("GPT", train_set, valid_set, 0, progress=False)
    assert passed["schedule"] == "cosine" and passed["warmup_steps"] > 0 and passed["clip_norm"] == 1.0
    assert passed["lr"] == namespace["LR"]["GPT"] and passed["min_lr"] < passed["lr"]
    losses = history.train_loss + history.valid_loss
    assert all(math.isfinite(loss) for loss in losses)
    assert history.train_loss[-1] < history.train_loss[0]
    assert not collapsed(history)


# Validation accuracy every 100 steps of a real run at the old settings (the additive mask + einsum variant, full
# size, r_train = 0.7, one thread): high by step 600, at chance at step 2,200 (loss 1.76 ~ log(31)/2), then back.
OLD_SETTINGS_RUN = [0.000, 0.017, 0.396, 0.128, 0.823, 0.622, 0.979, 0.969, 0.990, 0.743, 0.899, 0.875, 0.861, 0.729,
                    0.993, 0.969, 0.965, 0.965, 0.816, 0.986, 0.979, 0.972, 0.031, 0.944, 0.920, 0.927, 0.663, 0.979,
                    0.927, 0.833, 0.948]


def test_the_collapse_check_fails_on_an_unstable_run():
    """Stopped at step 2,200 that run is a collapse, and its worst fall would fail any stability bound."""
    run = history_of(OLD_SETTINGS_RUN)
    assert collapsed(history_of(OLD_SETTINGS_RUN[:23]))
    assert not collapsed(run) and largest_drop(run) == pytest.approx(0.993 - 0.031)
