"""`CsrLayer`: a Linear or a Conv2d for inference whose weight is kept as CSR buffers only.

Its buffers (`weight_crow_indices`, `weight_col_indices`, `weight_values`: the nonzeros,
row-major) are the compressed layer; nothing dense is kept. It multiplies with one of two
products (`function.py`): `bag` (`embedding_bag`, fast with many columns) or `mm` (`torch.mm`
with a CSR tensor, better near one column); `inference.py` times both.
"""

from __future__ import annotations

from math import prod

import torch
from torch import Tensor, nn

from acdc_recipe.runtime.kernels.csr import csr_from_mask
from acdc_recipe.runtime.kernels.forms import Form, form_of
from acdc_recipe.runtime.kernels.function import bag_product, csr_product
from acdc_recipe.runtime.kernels.layer import sparse_capable

PRODUCTS = ("bag", "mm")


def no_fast_path(module: nn.Module, args: tuple) -> None:
    """Present only to be present: `TransformerEncoderLayer`'s inference fast path reads its
    linear layers' dense `.weight` directly and is skipped when a submodule has a forward
    hook, so an encoder holding a CSR layer calls that layer's forward instead."""


class CsrLayer(nn.Module):
    """A Linear or Conv2d for inference whose weight is a CSR matrix `[out, in * kernel]` of
    its nonzeros (see the module docstring); `form` says which layer it computes, `product`
    how (one of `PRODUCTS`).

    Like the training kernels, a Linear's output is the transposed view of the product (a
    following CSR Linear reads it without a copy; measured 1.01x -> 1.37x on the transformer
    encoder at batch 16, 90%), unless `contiguous`: for a model that views the output in a
    way only a contiguous tensor allows, `sparse_inference_model` sets it."""

    def __init__(
        self,
        form: Form,
        weight_shape: tuple[int, ...],
        crow_indices: Tensor,
        col_indices: Tensor,
        values: Tensor,
        bias: Tensor | None,
        product: str = "bag",
        contiguous: bool = False,
    ) -> None:
        super().__init__()
        if product not in PRODUCTS:
            raise ValueError(f"unknown product {product!r}; one of {', '.join(PRODUCTS)}")
        self.form = form
        self.product = product
        self.contiguous = contiguous  # a Linear's output copied to F.linear's layout
        self.weight_shape = tuple(weight_shape)
        self.register_buffer("weight_crow_indices", crow_indices.to(torch.int32))
        self.register_buffer("weight_col_indices", col_indices.to(torch.int32))
        self.register_buffer("weight_values", values)
        self.register_buffer("bias", bias)
        self.register_forward_pre_hook(no_fast_path)

    @classmethod
    def of(
        cls, module: nn.Module, nnz: int | None = None, product: str = "bag",
        contiguous: bool = False,
    ) -> CsrLayer:  # fmt: skip
        """The CSR twin of an eligible layer (`forms.form_of`): its weight's nonzeros, or,
        with `nnz`, zero-filled buffers of that many entries to load a state dict into."""
        form = form_of(module)
        if form is None:
            raise ValueError(f"{type(module).__name__} has no CSR form")
        weight = module.weight.detach()
        bias = None if module.bias is None else module.bias.detach().clone()
        rows = weight.shape[0]
        if nnz is not None:
            index = torch.zeros(nnz, dtype=torch.int32)
            crow = torch.zeros(rows + 1, dtype=torch.int32)
            values = torch.zeros(nnz, dtype=weight.dtype)
            return cls(form, tuple(weight.shape), crow, index, values, bias, product, contiguous)
        matrix = weight.cpu().reshape(rows, -1)
        keep = matrix != 0
        csr = csr_from_mask(keep, matrix[keep].clone())
        crow, col = csr.crow_indices(), csr.col_indices()
        return cls(form, tuple(weight.shape), crow, col, csr.values(), bias, product, contiguous)

    def weight_csr(self) -> Tensor:
        rows = self.weight_shape[0]
        return torch.sparse_csr_tensor(
            self.weight_crow_indices,
            self.weight_col_indices,
            self.weight_values,
            (rows, prod(self.weight_shape[1:])),
            check_invariants=False,
        )

    def dense_weight(self) -> Tensor:
        """The dense weight this layer computes with (zeros where nothing is stored)."""
        return self.weight_csr().to_dense().reshape(self.weight_shape)

    def multiply(self, matrix: Tensor) -> Tensor:
        """`W X + b` for the layer's input matrix `X` (`forms.py`), on the layer's product."""
        if self.product == "bag":
            return bag_product(
                self.weight_crow_indices, self.weight_col_indices, self.weight_values, matrix,
                self.bias,
            )  # fmt: skip
        return csr_product(self.weight_csr(), matrix, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if not sparse_capable(x, self.weight_values):
            return self.form.dense_forward(x, self.dense_weight(), self.bias)
        matrix, geometry = self.form.to_matrix(x)
        return self.form.from_matrix(self.multiply(matrix), geometry, self.contiguous)

    def extra_repr(self) -> str:
        return f"{self.form}, nnz={self.weight_values.numel()}, product={self.product}"
