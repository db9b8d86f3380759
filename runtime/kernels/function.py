"""The sparse forward and backward of a masked layer, on PyTorch's own kernels.

With `X` the layer's input matrix (`forms.py`) and `G` the gradient of its output, both
`K x N` / `M x N` and made contiguous (a following or preceding sparse Linear hands them over
already so):

- forward: `Y = W X (+ b)`, each row of `Y` the sum of the rows of `X` that row of `W` keeps,
  weighted by its values (`embedding_bag` over the CSR structure, `bag_product`);
- grad-input: `W^T G`, the same product with the CSR of W^T (built once per mask);
- grad-weight: `G X^T` at the kept positions only (`torch.sparse.sampled_addmm`), scattered
  into a dense zero tensor, so the dense Parameter's gradient is exactly 0 where pruned;
- grad-bias: the row sums of `G`.

`embedding_bag` is the kernel recommendation models run their embedding tables on; as a CSR
times dense product it measured 2.5-3x faster than `torch.mm` with a CSR operand at 64-256
columns (one thread), and slower at one column, where `csr_product` (`torch.mm`) is kept for
inference (`csr_layer.py`; export times both).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from acdc_recipe.runtime.kernels.csr import CsrOperands
from acdc_recipe.runtime.kernels.forms import Form


def bag_product(
    crow_indices: Tensor, col_indices: Tensor, values: Tensor, matrix: Tensor, bias: Tensor | None
) -> Tensor:
    """`W X (+ b)` for `W` given by its CSR parts: row i sums `values[k] * X[col_indices[k]]`
    over the row's entries (an empty row is 0). The result is contiguous."""
    product = F.embedding_bag(
        col_indices,
        matrix.contiguous(),
        crow_indices,
        mode="sum",
        per_sample_weights=values,
        include_last_offset=True,
    )
    return product if bias is None else product.add_(bias.unsqueeze(1))


def csr_product(weight: Tensor, matrix: Tensor, bias: Tensor | None) -> Tensor:
    """`W X (+ b)` for a CSR tensor `W`, on `torch.mm`; on `torch.mv` for one column (1024 x
    1024 at 90%, one thread: 109 us against 239 us on mm and 174 us dense)."""
    if matrix.shape[1] == 1:
        column = matrix[:, 0]
        product = torch.mv(weight, column) if bias is None else torch.addmv(bias, weight, column)
        return product.unsqueeze(1)
    if bias is None:
        return torch.mm(weight, matrix)
    return torch.addmm(bias.unsqueeze(1), weight, matrix)


def operand_product(operand: Tensor, matrix: Tensor, bias: Tensor | None = None) -> Tensor:
    """`bag_product` with a CSR tensor's own parts."""
    return bag_product(
        operand.crow_indices(), operand.col_indices(), operand.values(), matrix, bias
    )


def sparse_forward(
    form: Form, operands: CsrOperands, x: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Any]:
    """(the layer's output, the contiguous input matrix, its geometry), no autograd."""
    matrix, geometry = form.to_matrix(x)
    matrix = matrix.contiguous()
    return (
        form.from_matrix(operand_product(operands.weight, matrix, bias), geometry),
        matrix,
        geometry,
    )


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
    """(grad-input, dense grad-weight, grad-bias) from the output gradient and the contiguous
    input matrix; each is None when not asked for."""
    grad_matrix = form.grad_to_matrix(grad).contiguous()
    grad_x = grad_w = None
    if input_grad:
        grad_x = form.grad_from_matrix(operand_product(operands.transposed, grad_matrix), geometry)
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
        y, matrix, geometry = sparse_forward(form, operands, x, bias)
        ctx.save_for_backward(matrix)
        ctx.form, ctx.operands, ctx.geometry = form, operands, geometry
        ctx.weight_shape, ctx.has_bias = weight.shape, bias is not None
        return y

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
