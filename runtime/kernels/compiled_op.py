"""The kernel layers inside a `torch.compile`d graph: one opaque custom op per call.

Under torch.compile the layer's forward is the op `acdc_recipe::kernel_layer(x, weight,
bias, slot, training)`, with a backward op beside it. The graph holds only the layer's slot
(an int); which path runs (dense, or CSR over the current mask) is read inside the op, so a
phase switch or a new mask changes nothing the compiler guards on and never recompiles.
The forward's output is contiguous and each gradient is laid out like its tensor, as the
shape functions declare. A 2:4 layer on CUDA computes dense here (its semi-structured
tensors do not pass through a custom op).
"""

import torch
from torch import Tensor

from acdc_recipe.runtime.kernels.csr import CsrOperands
from acdc_recipe.runtime.kernels.function import sparse_backward, sparse_forward
from acdc_recipe.runtime.kernels.layer import LAYERS


@torch.library.custom_op("acdc_recipe::kernel_layer", mutates_args=())
def kernel_layer(
    x: Tensor, weight: Tensor, bias: Tensor | None, slot: int, training: bool
) -> Tensor:
    layer = LAYERS[slot]
    csr = isinstance(layer.operands, CsrOperands)
    if csr and layer.path(x, weight, bias, training) == "sparse":
        return sparse_forward(layer.form, layer.operands, x, bias)[0].contiguous()
    return layer.form.dense_forward(x, weight, bias).contiguous()


@kernel_layer.register_fake
def _kernel_layer_shape(
    x: Tensor, weight: Tensor, bias: Tensor | None, slot: int, training: bool
) -> Tensor:
    return x.new_empty(LAYERS[slot].form.output_shape(tuple(x.shape)))


@torch.library.custom_op("acdc_recipe::kernel_layer_backward", mutates_args=())
def kernel_layer_backward(
    grad: Tensor, x: Tensor, weight: Tensor, slot: int, input_grad: bool, has_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    layer = LAYERS[slot]
    form, operands = layer.form, layer.operands
    if layer.kernel == "sparse" and isinstance(operands, CsrOperands) and layer.capable(x, weight):
        matrix, geometry = form.to_matrix(x)
        grad_x, grad_w, grad_b = sparse_backward(
            form,
            operands,
            grad,
            matrix.contiguous(),
            geometry,
            weight.shape,
            input_grad,
            bias_grad=has_bias,
        )
    else:
        grad_x, grad_w, grad_b = form.dense_backward(grad, x, weight, input_grad)
    empty = x.new_empty(0)
    return (
        _laid_out_like(grad_x, x) if grad_x is not None else empty,
        _laid_out_like(grad_w, weight),
        grad_b.contiguous() if has_bias else empty,
    )


def _laid_out_like(gradient: Tensor, tensor: Tensor) -> Tensor:
    """`gradient` with the strides `torch.empty_like(tensor)` has (what the shape function
    declares): a transposed or channels-last input gets its gradient laid out the same."""
    if gradient.stride() == tensor.stride():
        return gradient
    return torch.empty_like(tensor).copy_(gradient)


@kernel_layer_backward.register_fake
def _kernel_layer_backward_shape(
    grad: Tensor, x: Tensor, weight: Tensor, slot: int, input_grad: bool, has_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    empty = x.new_empty(0)
    channels = weight.shape[0]
    return (
        torch.empty_like(x) if input_grad else empty,  # laid out like the input
        torch.empty_like(weight),
        x.new_empty(channels) if has_bias else empty,
    )


def _save(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library's signature
    x, weight, bias, slot, _ = inputs
    ctx.save_for_backward(x, weight)
    ctx.slot, ctx.has_bias = slot, bias is not None


def _backward(ctx, grad: Tensor):  # noqa: ANN001, ANN202
    x, weight = ctx.saved_tensors
    input_grad = ctx.needs_input_grad[0]
    grad_x, grad_w, grad_b = kernel_layer_backward(
        grad, x, weight, ctx.slot, input_grad, ctx.has_bias
    )
    return (
        grad_x if input_grad else None,
        grad_w,
        grad_b if ctx.has_bias else None,
        None,
        None,
    )


kernel_layer.register_autograd(_backward, setup_context=_save)
