"""07's experiments of the handout's Questions 4-7 (three operands, model size, batch size, weight decay).

The new cells run in fast mode through the one notebook adapter, after the cells they build on; the tests check
that they produce what the written questions ask about, that the notebook's points add up to the handout's for
those questions, and the plots they draw.
"""

from __future__ import annotations

import os
import re

import matplotlib
import matplotlib.pyplot as plt
import nbformat
import pytest
import torch

import notebooks
from conftest import ROOT
from shared.experiments import History, extrema
from shared.plotting import plot_best_against, plot_curves_by_value, plot_runs_by_label

matplotlib.use("Agg")

ASSIGNMENT = "07_gpt"
GIVEN = ["setup", "layer_norm", "multi_headed_attention", "block", "decoder_num_parameters", "gpt_embedding", "gpt", "loss_and_accuracy", "data",
         "config", "sanity_train"]
NEW_CODE = ["more_setup", "orders_train", "orders_results", "sizes_train", "sizes_results", "batches_train",
            "batches_results", "decays_train", "decays_results"]
# The written questions of Questions 4-7 and the handout's points for each (Problem 4 of 002_...txt).
WRITTEN = {"orders_speed": 1, "sizes_scaling": 3, "batches_compute": 2, "decays_effect": 1, "decays_norm": 2}
PART_5_POINTS = 1 + 2 + 5 + sum(WRITTEN.values())  # Questions 3 (c), 3 (d), 8 (b), then 4-7


@pytest.fixture(scope="module")
def ran():
    """The namespace after the given cells and every new code cell, in fast mode."""
    before = os.environ.get("COURSE_FAST")
    os.environ["COURSE_FAST"] = "1"
    try:
        yield notebooks.run_cells(ASSIGNMENT, GIVEN + NEW_CODE).namespace
    finally:
        if before is None:
            os.environ.pop("COURSE_FAST")
        else:
            os.environ["COURSE_FAST"] = before


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def solution_notebook():
    return nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)


# Question 4: p = 11, two and three operands -------------------------------------------------------------


def test_p11_has_every_binary_and_ternary_equation_half_of_each_in_training(ran):
    parts = ran["parts"]
    assert ran["ORDERS"]["seeds"] == (0,) and len(ran["tokenizer_11"]) == 11 + 5
    assert {name: len(t) + len(v) for name, (t, v) in parts.items()} == {"a + b": 11**2, "a + b + c": 11**3}
    assert {name: len(t) for name, (t, v) in parts.items()} == {"a + b": 60, "a + b + c": 666}  # round(r_train * N)
    for name, (t, v) in parts.items():
        eq = ran["EQ_POSITION"][name]
        assert (t.tensors[2] == eq).all() and (v.tensors[2] == eq).all()
        decoded = ran["tokenizer_11"].decode(t.tensors[1][0])
        assert decoded.count("+") == (1 if name == "a + b" else 2)


def test_each_kind_is_measured_at_every_logged_step_and_they_average_to_the_whole(ran):
    parts = ran["parts"]
    for kind in ("LSTM", "GPT"):
        whole = ran["orders_runs"][kind][0]
        by_kind = ran["orders_by_kind"][kind][0]
        assert set(by_kind) == {"a + b", "a + b + c"}
        for split, index in (("train", 0), ("valid", 1)):
            sizes = {name: len(parts[name][index]) for name in parts}
            for metric in ("loss", "accuracy"):
                assert all(h.steps == whole.steps for h in by_kind.values())
                mixed = [sum(sizes[n] * getattr(by_kind[n], f"{split}_{metric}")[k] for n in parts) / sum(sizes.values())
                         for k in range(len(whole.steps))]
                torch.testing.assert_close(torch.tensor(mixed), torch.tensor(getattr(whole, f"{split}_{metric}")),
                                           rtol=1e-5, atol=1e-6)


def test_the_probe_does_not_change_training(ran):
    seen = []
    _, probed = ran["experiment"]("GPT", ran["DATA"], measure=lambda model, step: seen.append(step), steps=5, eval_every=2)
    _, alone = ran["experiment"]("GPT", ran["DATA"], steps=5, eval_every=2)
    assert seen == probed.steps == alone.steps == [0, 2, 4, 5]
    assert probed.train_loss == alone.train_loss and probed.valid_accuracy == alone.valid_accuracy


def test_the_reused_sanity_runs_are_what_experiment_would_train(ran):
    """Sizes (2, 64) and batch 512 reuse the sanity check's seed-0 runs: experiment() at the defaults trains exactly those."""
    for kind in ("LSTM", "GPT"):
        _, again = ran["experiment"](kind, ran["DATA"])
        assert again.steps == ran["runs"][kind][0].steps and again.valid_loss == ran["runs"][kind][0].valid_loss


def test_a_results_cell_before_its_runs_says_what_to_do(ran):
    namespace = dict(ran, orders_runs={"LSTM": [], "GPT": []})
    with pytest.raises(NotImplementedError, match="finish Parts 1-4"):
        notebooks.run_cells(ASSIGNMENT, ["orders_results"], namespace=namespace)


# Question 5: depth and width ------------------------------------------------------------------------------


def test_every_size_of_the_grid_is_trained_and_counted(ran):
    grid = ran["SIZES"]
    assert (grid["num_layers"], grid["embedding_size"], grid["skip"]) == ((1, 2), (32, 64), ((1, 64),))
    assert ran["GRID"] == [(1, 32), (2, 32), (2, 64)]  # width compared at L = 2, depth at d = 32
    for kind in ("LSTM", "GPT"):
        assert sorted(ran["by_size"][kind]) == ran["GRID"]
        assert ran["by_size"][kind][2, 64] is ran["runs"][kind][0]  # the sanity check's run, not trained again
        P = ran["core_size"][kind]
        assert P[1, 32] < P[2, 32] < P[2, 64]
    D, L = 32, 2  # the GPT's P: L blocks (decoder_num_parameters, LayerNorms included), the last LayerNorm, the classifier
    V = len(ran["tokenizer"])
    assert ran["core_size"]["GPT"][L, D] == ran["decoder_num_parameters"](D, 4, 4, L, True) + 2 * D + D * V + V
    lstm = 4 * (D * D + D * D + 2 * D)  # W_ih, W_hh and two biases per layer, input size D = hidden size
    assert ran["core_size"]["LSTM"][L, D] == L * lstm + D * V + V


def test_the_gpu_settings_are_the_handouts(ran):
    assert ran["ORDERS_GPU"] == {"steps": {"LSTM": 10_001, "GPT": 10_001}, "seeds": (0, 42)}
    assert ran["SIZES_GPU"]["num_layers"] == (1, 2, 3) and ran["SIZES_GPU"]["embedding_size"] == (2**6, 2**7, 2**8)
    assert ran["BATCHES_GPU"] == {"batch_sizes": tuple(2**k for k in range(5, 10)), "steps": {"LSTM": 20_001, "GPT": 20_001}}
    assert ran["DECAYS_GPU"] == {"weight_decays": (0.25, 0.5, 0.75, 1.0), "steps": 40_001}
    assert ran["ALPHAS"] == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


# Question 6: batch size and compute -----------------------------------------------------------------------


def test_each_batch_size_is_its_own_run_and_budgets_cut_it_short(ran):
    for kind in ("LSTM", "GPT"):
        runs = ran["by_batch"][kind]
        assert sorted(runs) == [32, 512] and runs[512] is ran["runs"][kind][0]
        assert runs[32].train_loss != runs[512].train_loss  # another batch size trains otherwise
        T = ran["BATCHES"]["steps"][kind]
        short = extrema(runs[32], T_max=0.5 * T)
        assert short["t_valid_accuracy"] <= 0.5 * T and short["train_loss"] >= extrema(runs[32])["train_loss"]


# Question 7: weight decay and the norm of the parameters -------------------------------------------------------


def test_the_norm_is_logged_with_the_history_and_shrinks_more_with_more_weight_decay(ran):
    norms = ran["norms"]
    assert sorted(norms) == [0.25, 1.0]
    for wd, (steps, values) in norms.items():
        assert steps == ran["by_decay"][wd].steps
        ran["set_seed"](0)
        model = ran["build"]("LSTM", len(ran["tokenizer"]), ran["max_length"] - 1, 2, 64)
        assert values[0] == pytest.approx(ran["parameter_norm"](model), rel=1e-12)  # step 0: the initial weights
    strong, weak = norms[1.0][1], norms[0.25][1]
    assert all(b < a for a, b in zip(strong, strong[1:]))  # with decay 1 the norm falls at every logged step
    assert strong[-1] < weak[-1]


def test_parameter_norm_is_the_norm_of_all_parameters_as_one_vector(ran):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(2.0)
    assert ran["parameter_norm"](model) == pytest.approx((6 * 1 + 2 * 4) ** 0.5)


# The written questions and their points -----------------------------------------------------------------------


def test_the_new_cells_sit_between_the_attention_maps_and_before_you_submit():
    ids = [cell.id for cell in solution_notebook().cells]
    start, end = ids.index("attention_maps"), ids.index("md-50")
    assert all(start < ids.index(cell_id) < end for cell_id in NEW_CODE + list(WRITTEN))


def test_written_questions_are_graded_by_hand_at_the_handouts_points():
    cells = solution_notebook().cells
    graded = {c.id: c for c in cells if c.metadata.get("nbgrader", {}).get("grade")}
    for cell_id, points in WRITTEN.items():
        cell = graded[cell_id]
        nbgrader = cell.metadata["nbgrader"]
        assert cell.cell_type == "markdown" and nbgrader["solution"] and nbgrader["points"] == points
        assert nbgrader["grade_id"] == cell_id
        assert cell.source.startswith("### BEGIN SOLUTION\n*Model answer") and cell.source.endswith("### END SOLUTION")
        assert "TBD" not in cell.source
        question = cells[[c.id for c in cells].index(cell_id) - 1].source
        assert re.match(rf"\*\*Question \({points} points?\)\.\*\*", question), question
    part_5 = [c for c in graded.values() if c.cell_type == "markdown"]
    assert sum(c.metadata["nbgrader"]["points"] for c in part_5) == PART_5_POINTS == 17
    assert sum(c.metadata["nbgrader"]["points"] for c in graded.values()) == 41 + PART_5_POINTS  # Parts 1-4: 41


# The plots these cells draw -----------------------------------------------------------------------------------


def history(offset: float = 0.0) -> History:
    h = History()
    for step, (loss, accuracy) in enumerate([(2.0, 0.1), (1.0, 0.6), (0.5, 0.9)]):
        h.log(step * 10, train_loss=loss, valid_loss=loss + offset + 0.1, train_accuracy=accuracy,
              valid_accuracy=max(accuracy - offset, 0))
    return h


def test_plot_runs_by_label_draws_one_line_per_run_with_a_legend():
    figure = plot_runs_by_label({"a + b": history(), "a + b + c": history(0.2)}, title="t")
    assert len(figure.axes) == 4 and figure.axes[0].get_yscale() == "log" and figure.axes[2].get_yscale() == "linear"
    assert [len(ax.get_lines()) for ax in figure.axes] == [2, 2, 2, 2]
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["a + b", "a + b + c"]


def test_plot_curves_by_value_colours_each_run_and_refuses_ragged_curves():
    figure = plot_curves_by_value({0.25: ([0, 10], [5.0, 4.0]), 1.0: ([0, 10], [5.0, 3.0])}, "weight decay", ylabel="norm")
    curves, colour_bar = figure.axes
    assert len(curves.get_lines()) == 2 and colour_bar.get_ylabel() == "weight decay"
    assert curves.get_lines()[0].get_color() != curves.get_lines()[1].get_color()
    with pytest.raises(ValueError, match="2 steps for 1 values"):
        plot_curves_by_value({1.0: ([0, 10], [5.0])}, "weight decay", ylabel="norm")


def test_plot_best_against_gives_each_series_its_own_xs():
    e = [extrema(history()), extrema(history(0.2))]
    figure = plot_best_against({"GPT": ([1000, 5000], e), "LSTM": ([700, 3000], e)}, "P", logx=True)
    assert len(figure.axes) == 8 and figure.axes[0].get_xscale() == "log" and figure.axes[0].get_yscale() == "log"
    assert [list(line.get_xdata()) for line in figure.axes[0].get_lines()] == [[1000, 5000], [700, 3000]]
    coloured = plot_best_against({"alpha = 0.5": ([32, 512], e), "alpha = 1.0": ([32, 512], e)}, "B",
                                 colour_by={"alpha = 0.5": 0.5, "alpha = 1.0": 1.0}, colour_label="alpha")
    assert len(coloured.axes) == 9 and coloured.axes[-1].get_ylabel() == "alpha"  # the colour bar
    with pytest.raises(ValueError, match="1 results for 2 values"):
        plot_best_against({"GPT": ([1, 2], e[:1])}, "P")
