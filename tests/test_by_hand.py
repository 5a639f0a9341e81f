"""The by-hand helpers (equations with shapes, gradients side by side, the gradient-norm plot) and their references."""

import re

import matplotlib
import pytest
import torch

from shared.by_hand import affine_equation, matrix_shape, product_shape, shape_text, show_affine, side_by_side, stack
from shared.checks import CheckFailed, Checker
from shared.data import seeded_randn
from shared.plotting import plot_gradient_norms

matplotlib.use("Agg")
TIGHT = {"rtol": 1e-6, "atol": 1e-9}


def numbers(line: str) -> torch.Tensor:
    """The numbers printed in one line, as a float64 tensor."""
    return torch.tensor([float(n) for n in re.findall(r"-?\d+\.\d+", line)], dtype=torch.float64)


def test_vectors_are_columns_and_shapes_print_with_a_times_sign():
    assert matrix_shape(torch.zeros(4)) == (4, 1)
    assert matrix_shape(torch.zeros(2, 4)) == (2, 4)
    assert shape_text((2, 4)) == "(2×4)"
    with pytest.raises(ValueError, match="vector or a matrix"):
        matrix_shape(torch.zeros(2, 3, 4))


def test_product_shape_multiplies_or_names_both_shapes():
    assert product_shape((2, 4), (4, 1)) == (2, 1)
    with pytest.raises(ValueError, match=r"cannot multiply \(2×4\) by \(3×1\)"):
        product_shape((2, 4), (3, 1))


def test_stack_names_and_concatenates_the_parts():
    name, value = stack([("h0", torch.tensor([1.0, 2.0])), ("x1", torch.tensor([3.0]))])
    assert name == "[h0; x1]" and torch.equal(value, torch.tensor([1.0, 2.0, 3.0]))
    assert stack([("x", torch.ones(2))])[0] == "x"


def test_affine_equation_writes_the_step_with_every_shape():
    W_f, h0, x1, b_f = torch.zeros(2, 4), torch.zeros(2), torch.zeros(2), torch.zeros(2)
    line = affine_equation("f1", ("W_f", W_f), [("h0", h0), ("x1", x1)], ("b_f", b_f), "sigmoid")
    assert line == "f1 = σ(W_f (2×4) · [h0; x1] (4×1) + b_f (2×1))  →  f1 (2×1)"
    line = affine_equation("y", ("W_out", torch.zeros(5, 2)), [("h3", torch.zeros(2))])
    assert line == "y = W_out (5×2) · h3 (2×1)  →  y (5×1)"


def test_affine_equation_refuses_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match=r"cannot multiply \(2×4\) by \(3×1\)"):
        affine_equation("f1", ("W_f", torch.zeros(2, 4)), [("h0", torch.zeros(2)), ("x1", torch.zeros(1))])
    with pytest.raises(ValueError, match=r"cannot add b \(3×1\) to a product \(2×1\)"):
        affine_equation("f1", ("W", torch.zeros(2, 4)), [("z", torch.zeros(4))], ("b", torch.zeros(3)))


def test_show_affine_prints_the_numbers_of_every_stage(capsys):
    W, h, x, b = seeded_randn(0, (3, 5), (3,), (2,), (3,))
    show_affine("c1", ("W_c", W), [("h0", h), ("x1", x)], ("b_c", b), activation="tanh", decimals=6)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("c1 = tanh(W_c (3×5) · [h0; x1] (5×1) + b_c (3×1))")
    z = torch.cat([h, x])
    for line, expected in zip(lines[1:], [z, W @ z, W @ z + b, torch.tanh(W @ z + b)]):
        torch.testing.assert_close(numbers(line.split("=")[-1]), expected, rtol=0, atol=1e-6)


def test_side_by_side_shows_both_values_and_their_largest_difference(capsys):
    autograd = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
    side_by_side("dJ/dW", autograd + torch.tensor([[0.0, 0.25], [0.0, 0.0]]), autograd)
    out = capsys.readouterr().out
    assert out.startswith("dJ/dW (2×2)")
    row_0 = out.splitlines()[1]
    assert "yours" in row_0 and "autograd" in row_0
    assert torch.equal(numbers(row_0), torch.tensor([1.0, -1.75, 1.0, -2.0]))
    assert "largest difference: 2.50e-01" in out


def test_side_by_side_explains_answers_it_cannot_line_up(capsys):
    side_by_side("dJ/ds", None, torch.zeros(3))
    side_by_side("dJ/ds", torch.zeros(3, 1), torch.zeros(3))
    out = capsys.readouterr().out
    assert "yours is a NoneType, not a tensor" in out
    assert "yours has shape (3, 1), autograd's has shape (3,)" in out


def test_gradient_norm_plot_draws_one_log_scale_curve_per_model():
    figure = plot_gradient_norms([1, 2, 3], {"plain": [1.0, 0.1, 0.01], "residual": [1.0, 1.1, 1.2]})
    axes = figure.axes[0]
    assert axes.get_yscale() == "log"
    assert [line.get_label() for line in axes.get_lines()] == ["plain", "residual"]
    assert list(axes.get_lines()[0].get_ydata()) == [1.0, 0.1, 0.01]
    with pytest.raises(ValueError, match="'plain' has 2 norms for 3 lengths"):
        plot_gradient_norms([1, 2, 3], {"plain": [1.0, 0.1]})


def test_lstm_by_hand_references_accept_the_equations_and_reject_a_swapped_concatenation():
    """The forget gate acts on [h_{t-1}; x_t]; stacking [x_t; h_{t-1}] instead fails with a readable message."""
    h_prev, x_t, W, b = seeded_randn(10, (2,), (2,), (2, 4), (2,))
    checker = Checker("01_lstm_by_hand")
    checker.check("forget_gate_any_input", torch.sigmoid(W @ torch.cat([h_prev, x_t]) + b), **TIGHT)
    with pytest.raises(CheckFailed, match="Check 'forget_gate_any_input'.*differs") as failure:
        checker.check("forget_gate_any_input", torch.sigmoid(W @ torch.cat([x_t, h_prev]) + b), **TIGHT)
    assert "elements are off" in str(failure.value)


def test_backprop_by_hand_references_catch_a_transposed_gradient():
    """dJ/dW_unembed is (W×H); returning h (dJ/ds)^T instead gets a hint about the transpose."""
    checker = Checker("02_backprop_by_hand")
    with pytest.raises(CheckFailed, match=r"expected shape \(6, 3\), got \(3, 6\)") as failure:
        checker.check("grad_W_unembed", torch.zeros(3, 6, dtype=torch.float64), **TIGHT)
    assert "transpose" in str(failure.value)
    checker.check("mlp_weight_shapes", {"W_embed": (3, 6), "W_unembed": (6, 3)}, rtol=0, atol=0)
    with pytest.raises(CheckFailed, match="expected exactly 3, got 6"):
        checker.check("mlp_weight_shapes", {"W_embed": (6, 3), "W_unembed": (3, 6)}, rtol=0, atol=0)
