"""Layers as one matrix product `Y = W X`: how a Linear or a Conv2d input becomes the matrix
`X` (`K x N`, K the weight's columns), and how the products come back to the layer's shapes.

A Linear's `X` is a transposed view of its input (no copy), and its output the transposed
view of `W X` (a following sparse Linear then reads it without a copy; unlike `F.linear`'s
output it is not contiguous). A Conv2d's `X` is its
im2col matrix (`F.unfold`, or a reshape for a 1x1 convolution with stride 1 and no padding),
one column per output position of every sample. The sparse kernels in `function.py` multiply these matrices
by CSR operands; the dense forward and backward here are what they are timed against.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class LinearForm:
    """`y = x W^T + b` over the last dimension of `x`."""

    in_features: int
    out_features: int
    kind: str = "Linear"

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*shape[:-1], self.out_features)

    def columns(self, x: Tensor) -> int:
        """The columns of `x`'s matrix: one per row of features (samples times tokens)."""
        return x.numel() // max(self.in_features, 1)

    def to_matrix(self, x: Tensor) -> tuple[Tensor, Any]:
        return x.reshape(-1, self.in_features).t(), x.shape

    def from_matrix(self, y: Tensor, shape: Any, contiguous: bool = False) -> Tensor:
        # A transposed view: copying it to F.linear's contiguous layout measured 0.68x -> 0.81x
        # of a dense step (MLP, 90%) and 0.91x -> 1.20x (transformer encoder), so it is not
        # copied. `.view` that merges the last dimension with another raises; `.reshape` copies.
        # `contiguous` copies as a 2-D transpose, 3x faster than copying the N-D view.
        rows = y.t().contiguous() if contiguous else y.t()
        return rows.reshape(*shape[:-1], self.out_features)

    def grad_to_matrix(self, grad: Tensor) -> Tensor:
        return grad.reshape(-1, self.out_features).t()

    def grad_from_matrix(self, grad_x: Tensor, shape: Any) -> Tensor:
        return grad_x.t().reshape(shape)

    def dense_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def dense_backward(
        self, grad: Tensor, x: Tensor, weight: Tensor, input_grad: bool
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        g = grad.reshape(-1, self.out_features)
        x2 = x.reshape(-1, self.in_features)
        grad_x = (g @ weight).reshape(x.shape) if input_grad else None
        return grad_x, g.t() @ x2, g.sum(0)


@dataclass(frozen=True)
class Conv2dForm:
    """A 2-D convolution with one group and zero padding, as im2col times the weight matrix."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    kind: str = "Conv2d"

    @property
    def pointwise(self) -> bool:
        """A 1x1 convolution with stride 1 and no padding: im2col is a reshape."""
        return self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def _output_size(self, height: int, width: int) -> tuple[int, int]:
        sizes = []
        for size, k, s, p, d in zip(
            (height, width), self.kernel_size, self.stride, self.padding, self.dilation
        ):
            sizes.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        return sizes[0], sizes[1]

    def columns(self, x: Tensor) -> int:
        """The columns of `x`'s im2col matrix: one per output position of every sample."""
        out_h, out_w = self._output_size(x.shape[-2], x.shape[-1])
        return (x.shape[0] if x.dim() == 4 else 1) * out_h * out_w

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Batched `(N, C, H, W)` or unbatched `(C, H, W)`, as `nn.Conv2d` takes."""
        return (*shape[:-3], self.out_channels, *self._output_size(shape[-2], shape[-1]))

    def to_matrix(self, x: Tensor) -> tuple[Tensor, Any]:
        batch, channels, height, width = x.shape
        out_h, out_w = self._output_size(height, width)
        if self.pointwise:
            cols = x.reshape(batch, channels, height * width)
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        matrix = cols.transpose(0, 1).reshape(cols.shape[1], batch * out_h * out_w)
        return matrix, (batch, height, width, out_h, out_w)

    def from_matrix(self, y: Tensor, geometry: Any, contiguous: bool = True) -> Tensor:
        """NCHW, contiguous (whatever `contiguous` says): the dense layers after a convolution
        expect it, and the copy (none at batch 1) is then part of what the choice times."""
        batch, _, _, out_h, out_w = geometry
        return y.reshape(self.out_channels, batch, out_h, out_w).transpose(0, 1).contiguous()

    def grad_to_matrix(self, grad: Tensor) -> Tensor:
        return grad.transpose(0, 1).reshape(self.out_channels, -1)

    def grad_from_matrix(self, grad_x: Tensor, geometry: Any) -> Tensor:
        batch, height, width, out_h, out_w = geometry
        cols = grad_x.reshape(grad_x.shape[0], batch, out_h * out_w).transpose(0, 1)
        if self.pointwise:
            return cols.reshape(batch, self.in_channels, height, width)
        return F.fold(
            cols, (height, width), self.kernel_size, self.dilation, self.padding, self.stride
        )

    def dense_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def dense_backward(
        self, grad: Tensor, x: Tensor, weight: Tensor, input_grad: bool
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x, weight, [self.out_channels], list(self.stride), list(self.padding),
            list(self.dilation), False, [0, 0], 1, [input_grad, True, True],
        )  # fmt: skip
        return grad_x, grad_w, grad_b


Form = LinearForm | Conv2dForm


def form_of(module: nn.Module) -> Form | None:
    """The matrix form of a layer whose forward is exactly the plain Linear or Conv2d one
    (one group, zero padding, 4-D weights); None for anything else."""
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return LinearForm(module.in_features, module.out_features)
    if (
        isinstance(module, nn.Conv2d)
        and type(module).forward is nn.Conv2d.forward
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    ):
        return Conv2dForm(
            module.in_channels,
            module.out_channels,
            tuple(module.kernel_size),
            tuple(module.stride),
            tuple(module.padding),
            tuple(module.dilation),
        )
    return None


def inside_attention(root: nn.Module) -> set[int]:
    """Ids of the modules inside a `MultiheadAttention`, which reads its projection weights
    itself (its `out_proj` Linear's forward never runs)."""
    return {
        id(sub)
        for module in root.modules()
        if isinstance(module, nn.MultiheadAttention)
        for sub in module.modules()
    }


def weight_matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """A weight `[out, in, *kernel]` as the matrix the kernels multiply: `[out, in * kernel]`."""
    return shape[0], prod(shape[1:])
