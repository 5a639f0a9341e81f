"""Print the steps of a small computation done by hand as equations annotated with shapes.

Vectors are 1-D tensors and are written as columns: a vector of n entries has shape (n×1).
A named tensor is a pair such as ("W_f", W_f).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Named = tuple[str, torch.Tensor]
ACTIVATIONS = {"sigmoid": ("σ", torch.sigmoid), "tanh": ("tanh", torch.tanh)}


def matrix_shape(value: torch.Tensor) -> tuple[int, int]:
    """(rows, columns) of a 2-D tensor; a 1-D tensor of n entries is the column (n, 1)."""
    if value.dim() == 1:
        return (value.shape[0], 1)
    if value.dim() == 2:
        return (value.shape[0], value.shape[1])
    raise ValueError(f"expected a vector or a matrix, got a tensor of shape {tuple(value.shape)}")


def shape_text(shape: Sequence[int]) -> str:
    """'(2×4)' for the shape (2, 4)."""
    return "(" + "×".join(str(size) for size in shape) + ")"


def product_shape(left: Sequence[int], right: Sequence[int]) -> tuple[int, int]:
    """Shape (r, c) of left (r×k) · right (k×c); ValueError naming both shapes when the k's differ."""
    if left[1] != right[0]:
        raise ValueError(
            f"cannot multiply {shape_text(left)} by {shape_text(right)}: {left[1]} columns but {right[0]} rows"
        )
    return (left[0], right[1])


def stack(parts: Sequence[Named]) -> Named:
    """Stack column vectors: [("h0", (2,)), ("x1", (2,))] gives ("[h0; x1]", (4,))."""
    if len(parts) == 1:
        return parts[0]
    name = "[" + "; ".join(part_name for part_name, _ in parts) + "]"
    return name, torch.cat([value.reshape(-1) for _, value in parts])


def affine_equation(
    result: str, weight: Named, inputs: Sequence[Named], bias: Named | None = None, activation: str | None = None
) -> str:
    """'f1 = σ(W_f (2×4) · [h0; x1] (4×1) + b_f (2×1))  →  f1 (2×1)'; ValueError if the shapes do not fit."""
    (weight_name, weight_value), (input_name, input_value) = weight, stack(inputs)
    weight_shape, input_shape = matrix_shape(weight_value), matrix_shape(input_value)
    shape = product_shape(weight_shape, input_shape)
    text = f"{weight_name} {shape_text(weight_shape)} · {input_name} {shape_text(input_shape)}"
    if bias is not None:
        bias_name, bias_value = bias
        if matrix_shape(bias_value) != shape:
            bias_shape = shape_text(matrix_shape(bias_value))
            raise ValueError(f"cannot add {bias_name} {bias_shape} to a product {shape_text(shape)}")
        text += f" + {bias_name} {shape_text(shape)}"
    if activation is not None:
        text = f"{ACTIVATIONS[activation][0]}({text})"
    return f"{result} = {text}  →  {result} {shape_text(shape)}"


def vector_text(value: torch.Tensor, decimals: int = 4) -> str:
    """The entries of a vector as '[ 0.5000, -1.2500]'."""
    width = decimals + 3
    return "[" + ", ".join(f"{entry + 0.0:{width}.{decimals}f}" for entry in value.reshape(-1).tolist()) + "]"


def show_affine(
    result: str,
    weight: Named,
    inputs: Sequence[Named],
    bias: Named | None = None,
    activation: str | None = None,
    decimals: int = 4,
) -> None:
    """Print one step's equation with its shapes, then its numbers: input, product, plus bias, after the activation."""
    print(affine_equation(result, weight, inputs, bias, activation))
    (weight_name, weight_value), (input_name, input_value) = weight, stack(inputs)
    value = weight_value @ input_value.reshape(-1)
    rows = [(input_name, input_value), (f"{weight_name} · {input_name}", value)]
    if bias is not None:
        value = value + bias[1]
        rows.append((f"  + {bias[0]}", value))
    if activation is not None:
        symbol, function = ACTIVATIONS[activation]
        value = function(value)
        rows.append((f"{symbol}(...) = {result}", value))
    width = max(len(label) for label, _ in rows)
    for label, row in rows:
        print(f"    {label:<{width}} = {vector_text(row, decimals)}")


def side_by_side(name: str, yours: object, autograd: torch.Tensor, decimals: int = 5) -> None:
    """Print your value of a vector or matrix next to autograd's, row by row, and their largest difference."""
    if not isinstance(yours, torch.Tensor):
        print(f"{name}: yours is a {type(yours).__name__}, not a tensor")
        return
    yours, autograd = yours.detach(), autograd.detach()
    if yours.shape != autograd.shape or yours.dim() not in (1, 2):
        print(f"{name}: yours has shape {tuple(yours.shape)}, autograd's has shape {tuple(autograd.shape)}")
        return
    print(f"{name} {shape_text(matrix_shape(yours))}")
    if yours.dim() == 1:
        print(f"    yours    {vector_text(yours, decimals)}\n    autograd {vector_text(autograd, decimals)}")
    else:
        for row, (mine, theirs) in enumerate(zip(yours, autograd)):
            print(f"    row {row}: yours {vector_text(mine, decimals)}   autograd {vector_text(theirs, decimals)}")
    print(f"    largest difference: {(yours - autograd).abs().max().item():.2e}")
