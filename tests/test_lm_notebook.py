"""The TinyStories LSTM notebook (08): its given helpers, and its check cells on right and wrong answers.

The check cells are run in-process: the setup cell, then every answer and given cell of the
exercises (some replaced by a deliberately wrong version), then one check cell. The wrong answers each
check must catch are entries of autograder/mistakes/08_tinystories_lstm.toml, made by tests/test_mistakes.py.
"""

import contextlib
import io
import warnings
from pathlib import Path

import nbformat
import pytest
import torch

import notebooks
from conftest import ROOT
from shared.checks import CheckFailed

ASSIGNMENT = "08_tinystories_lstm"
NOTEBOOK = nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)


def info(cell):
    return cell.metadata.get("nbgrader", {})


def cell_source(cell_id, hidden=False):
    """A cell of the solution notebook as a kernel runs it (hidden tests cut off unless `hidden`)."""
    return notebooks.cell_source(ASSIGNMENT, cell_id, hidden=hidden)


EXERCISE_CELLS = [c.id for c in NOTEBOOK.cells
                  if c.cell_type == "code" and info(c).get("grade_id") and not info(c).get("grade") and c.id != "setup"]
CHECK_CELLS = [c.id for c in NOTEBOOK.cells if c.cell_type == "code" and info(c).get("grade")]


def exercises(replace=None):
    """A namespace holding the setup and every answer/given cell of the exercises (some replaced)."""
    return notebooks.run_cells(ASSIGNMENT, ["setup", *EXERCISE_CELLS], replace=replace).namespace


def run_check(test_id, replace=None, hidden=False):
    """Run one check cell after the exercises; returns what it printed."""
    return notebooks.run_cells(ASSIGNMENT, [test_id], hidden=hidden, namespace=exercises(replace)).printed


def wrong(cell_id, old, new):
    source = cell_source(cell_id)
    assert old in source, old
    return source.replace(old, new)


def test_the_notebook_has_the_exercises_and_points_of_the_brief():
    points = {info(c)["grade_id"]: info(c)["points"] for c in NOTEBOOK.cells if info(c).get("grade")}
    assert sum(points.values()) == 140
    written = {k: v for k, v in points.items() if k.startswith("answer_")}
    assert written == {"answer_training": 10, "answer_generation": 10, "answer_penalty": 5, "answer_attention": 5}
    extra = points["test_attend"] + points["test_lstm_lm_attention"] + points["test_adjust_logits"]
    assert extra + written["answer_penalty"] + written["answer_attention"] == 40


@pytest.mark.parametrize("test_id", CHECK_CELLS)
def test_every_check_cell_passes_on_the_solution_and_prints_a_tick(test_id):
    assert "✓" in run_check(test_id)


def test_check_cells_hidden_parts_included_pass_without_a_warning():
    """Hidden checks compare with autograder/references here; nothing may warn (stderr zeroes a cell)."""
    namespace = exercises()
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()) as errors:
        warnings.simplefilter("error")
        notebooks.run_cells(ASSIGNMENT, CHECK_CELLS, hidden=True, namespace=namespace)
    assert errors.getvalue() == ""


def test_a_wrong_answer_costs_only_its_own_check():
    """A mistake in LSTMLM.forward fails its two checks and no other: Parts 3-4 use the stand-in model."""
    broken = wrong("lstm_lm", "return self.output(hidden[real_positions(lengths.to(hidden.device), max_len)])",
                   "return 2 * self.output(hidden[real_positions(lengths.to(hidden.device), max_len)])")
    for test_id in CHECK_CELLS:
        if test_id in ("test_lstm_lm_forward", "test_lstm_lm_attention"):
            with pytest.raises(CheckFailed):
                run_check(test_id, {"lstm_lm": broken})
        else:
            assert "✓" in run_check(test_id, {"lstm_lm": broken}), test_id


def test_packed_and_padded_lstm_give_the_same_logits(ns):
    """The notebook's claim behind packed=False: trailing padding never reaches a real position of a one-way LSTM."""
    (embeddings,) = __import__("shared.data", fromlist=["seeded_randn"]).seeded_randn(3, (15, 4))
    for attention, layers in ((False, 1), (True, 2)):
        packed = ns["fill_parameters_"](ns["LSTMLM"](embeddings, 6, layers, attention=attention).double(), seed=4)
        padded = ns["fill_parameters_"](ns["LSTMLM"](embeddings, 6, layers, attention=attention, packed=False).double(), seed=4)
        inputs, lengths = ns["padded_ids"](5, [7, 1, 4, 9], vocab_size=15)
        with torch.no_grad():
            torch.testing.assert_close(padded(inputs, lengths), packed(inputs, lengths), rtol=1e-9, atol=1e-12)


# The given helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ns():
    return exercises()


def test_real_positions_and_random_stories(ns):
    mask = ns["real_positions"](torch.tensor([3, 1, 4]), 4)
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False], [True, True, True, True]]
    stories = ns["random_stories"](5, [2, 6, 3], vocab_size=9)
    assert [len(s) for s in stories] == [2, 6, 3]
    assert all(s[0] == 2 and s[-1] == 3 and (s[1:-1] >= 4).all() and (s < 9).all() for s in stories)


@pytest.mark.parametrize("ids, expected", [
    ([1, 2, 3, 1, 2, 3], True),            # one block of 3, twice
    ([9, 9, 9, 9, 9, 9], True),            # a run of 6 equal ids is a block of 3 written twice
    ([9, 9, 9, 9, 9], False),              # ... but 5 are not, and a doubled word ("had had") never is
    ([5, 1, 2, 1, 2], False),              # period 2 is below min_period
    ([7] + list(range(20)) * 2, True),     # a block of 20
    ([7] + list(range(21)) * 2, False),    # a block of 21 is above max_period
    ([1, 2, 3, 4, 1, 2, 3, 5], False),     # the end must repeat exactly
])
def test_ends_with_repetition(ns, ids, expected):
    assert ns["ends_with_repetition"](ids) is expected


def test_the_stand_in_model_is_causal_and_returns_real_positions_in_batch_major_order(ns):
    model = ns["StandInLM"](10, 3, seed=0)
    inputs = torch.tensor([[2, 5, 6, 7], [2, 8, 0, 0]])
    lengths = torch.tensor([4, 2])
    logits = model(inputs, lengths)
    assert logits.shape == (6, 10) and logits.dtype == torch.float64
    alone = model(inputs[1:, :2], lengths[1:])
    torch.testing.assert_close(logits[4:], alone)
    torch.testing.assert_close(model(inputs[:1, :2], torch.tensor([2])), logits[:2])  # later tokens change nothing
    assert torch.equal(ns["StandInLM"](10, 3, seed=0, scale=0.0)(inputs, lengths), torch.zeros(6, 10, dtype=torch.float64))


def test_the_checks_need_no_data_files(tmp_path, monkeypatch, ns):
    """The check vocabulary comes from the notebook's own sentences and the installed GloVe package."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "nothing-here"))
    vocab = ns["check_vocabulary"]()
    assert len(vocab) == 40 and vocab.tokens[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert {"once", "lily", ",", "."} <= set(vocab.tokens) and vocab.encode(["upon", "zebra"]) == [vocab.unk_id] * 2
    for test_id in ("test_use", "test_prompt"):
        assert "✓" in run_check(test_id, hidden=True)
    assert not (tmp_path / "nothing-here").exists()


def test_fast_mode_writes_the_checkpoint_and_traces_outside_the_notebook_folder(monkeypatch, tmp_path):
    """Otherwise nbgrader would copy lm_model.pt and traces.txt from solutions/ into the release."""
    import tempfile

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()  # fast mode sets one thread
    try:
        for fast, in_notebook_folder in (("1", False), ("0", True)):
            monkeypatch.setenv("COURSE_FAST", fast)
            monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
            namespace = notebooks.run_cells(ASSIGNMENT, ["settings"], namespace=exercises()).namespace
            output = namespace["OUTPUT_DIR"].resolve()
            assert (output == tmp_path.resolve()) is in_notebook_folder
            if not in_notebook_folder:
                assert output.is_relative_to(Path(tempfile.gettempdir()).resolve())
            namespace["trace"]("hello")
            assert (output / "traces.txt").read_text() == "hello\n"
    finally:
        torch.set_num_threads(threads)


def test_train_accepts_a_batches_hook_and_a_schedule(ns):
    """The hooks the full-mode recipe plugs in: another batching and a learning-rate schedule."""
    model = ns["StandInLM"](11, 4, seed=1)
    stories = ns["random_stories"](2, [5, 9, 3, 7, 4, 6], vocab_size=11)
    seen = []

    def longest_first(stories, batch_size, generator):
        order = sorted(range(len(stories)), key=lambda i: -len(stories[i]))
        for first in range(0, len(order), batch_size):
            seen.append(order[first : first + batch_size])
            yield [stories[i] for i in order[first : first + batch_size]]

    rates = []

    def schedule(optimizer):
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
        rates.append(optimizer)
        return scheduler

    logged = []
    history = ns["train"](model, stories, stories[:2], epochs=2, batch_size=4, lr=0.1, batches=longest_first, schedule=schedule,
                          log=logged.append, log_every=1)
    assert seen == [[1, 3, 5, 0], [4, 2]] * 2
    assert len(history["loss"]) == 4 and history["tokens"] == [8 + 6 + 5 + 4, 3 + 2] * 2
    assert rates[0].param_groups[0]["lr"] == pytest.approx(0.1 / 5)
    assert [step for step, _ in history["valid"]] == [2, 4] and any("validation loss" in line for line in logged)
    assert not model.training


def test_the_notebooks_plots():
    import matplotlib
    import pandas as pd

    from shared.plotting import plot_generation_metrics, plot_loss_curves

    matplotlib.use("Agg")
    table = pd.DataFrame([{"temperature": t, "fpenalty": f, "entropy": t + f, "self_bleu": 1 - t / 2}
                          for t in (0.5, 1.0, 1.5) for f in (0.0, 1.0)])
    figure = plot_generation_metrics(table, ["entropy", "self_bleu"])
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["entropy", "self_bleu"]
    assert all(len(ax.lines) == 2 for ax in panels)  # one line per penalty
    assert list(panels[0].lines[1].get_ydata()) == [1.5, 2.0, 2.5]

    history = {"loss": [5.0, 4.0, 3.0, 2.0], "tokens": [10, 20, 30, 40], "valid": [(2, 3.5), (4, 2.5)]}
    figure = plot_loss_curves({"a": history, "b": {**history, "valid": []}}, smoothing=2)
    (ax,) = figure.axes
    training, validation, other = ax.lines
    assert list(training.get_xdata()) == [30, 60, 100] and list(training.get_ydata()) == [4.5, 3.5, 2.5]
    assert list(validation.get_xdata()) == [30, 100] and list(validation.get_ydata()) == [3.5, 2.5]
    assert len(other.get_xdata()) == 3
