"""The sparse forward and backward of a masked layer, on PyTorch's own CSR kernels.

With `X` the layer's input matrix (`forms.py`) and `G` the gradient of its output:

- forward: `Y = W X (+ b)`, a CSR-dense product (`torch.addmm` with the CSR of W);
- grad-input: `W^T G`, with the CSR of W^T (built once per mask, values refreshed);
- grad-weight: `G X^T` at the kept positions only (`torch.sparse.sampled_addmm`), scattered
  into a dense zero tensor, so the dense Parameter's gradient is exactly 0 where pruned;
- grad-bias: the row sums of `G`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from acdc_recipe.runtime.kernels.csr import CsrOperands
from acdc_recipe.runtime.kernels.forms import Form


def sparse_product(weight: Tensor, matrix: Tensor, bias: Tensor | None) -> Tensor:
    """`W X (+ b)` for a CSR weight `W`."""
    if bias is None:
        return torch.mm(weight, matrix)
    return torch.addmm(bias.unsqueeze(1), weight, matrix)


def sparse_forward(form: Form, weight: Tensor, x: Tensor, bias: Tensor | None) -> Tensor:
    """The layer's output for a CSR weight (no autograd)."""
    matrix, geometry = form.to_matrix(x)
    return form.from_matrix(sparse_product(weight, matrix, bias), geometry)


def sparse_backward(
    form: Form,
    operands: CsrOperands,
    grad: Tensor,
    matrix: Tensor,
    geometry: Any,
    weight_shape: torch.Size,
    input_grad: bool,
    weight_grad: bool = True,
    bias_grad: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(grad-input, dense grad-weight, grad-bias) from the output gradient; each is None when
    not asked for."""
    grad_matrix = form.grad_to_matrix(grad)
    grad_x = grad_w = None
    if input_grad:
        grad_x = form.grad_from_matrix(torch.mm(operands.transposed, grad_matrix), geometry)
    if weight_grad:
        sampled = torch.sparse.sampled_addmm(operands.weight, grad_matrix, matrix.t(), beta=0.0)
        grad_w = torch.zeros(
            weight_shape.numel(), dtype=grad_matrix.dtype, device=grad_matrix.device
        ).index_copy_(0, operands.flat_index, sampled.values())
        grad_w = grad_w.view(weight_shape)
    return grad_x, grad_w, grad_matrix.sum(1) if bias_grad else None


class SparseLayerFunction(torch.autograd.Function):
    """`y = layer(x)` with the dense `weight` as an input (its gradient goes to the dense
    Parameter) and the CSR `operands` derived from it computing the products."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        form: Form,
        operands: CsrOperands,
    ) -> Tensor:
        matrix, geometry = form.to_matrix(x)
        ctx.save_for_backward(matrix)
        ctx.form, ctx.operands, ctx.geometry = form, operands, geometry
        ctx.weight_shape, ctx.has_bias = weight.shape, bias is not None
        return form.from_matrix(sparse_product(operands.weight, matrix, bias), geometry)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (matrix,) = ctx.saved_tensors
        grad_x, grad_w, grad_b = sparse_backward(
            ctx.form,
            ctx.operands,
            grad,
            matrix,
            ctx.geometry,
            ctx.weight_shape,
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            ctx.has_bias,
        )
        return grad_x, grad_w, grad_b if ctx.has_bias else None, None, None
