"""`CsrLayer`: a Linear or a Conv2d for inference whose weight is kept as CSR tensors, and
`Dispatch`: which kernel computes each call, by the size of the batch it brings.

The layer's tensors (`weight_crow_indices`, `weight_col_indices`, `weight_values`: the
nonzeros, row-major; `bias`) are the compressed layer. A call computes on one of three kernels,
the one its `Dispatch` measured fastest for a batch of that size: `bag` (`embedding_bag`, fast
with many columns), `mm` (`torch.mm` with a CSR tensor, better near one column), or `dense`
(`F.linear` / `F.conv2d` on a dense copy of the weight, built on the first call that needs it,
so only layers whose dispatch names `dense` hold one). A call with one column (one sample of a
Linear) multiplies on `torch.mv` with the CSR tensor, 1.6x faster than dense at 90% where
`torch.mm` is slower. A transformer block holding a CSR layer computes on its own layers
(`without_fused_paths`), as the fused inference path reads dense weights.

In training mode with gradients enabled the layer fine-tunes: it computes on `bag`, which is
differentiable in the kept values and the input, so an optimizer over `model.parameters()`
trains `weight_values` and `bias` (the pruned positions stay pruned); the dense copy follows the
values when they change.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod, sqrt

import torch
from torch import Tensor, nn

from acdc_recipe.runtime.kernels.csr import csr_from_mask
from acdc_recipe.runtime.kernels.forms import Form, form_of
from acdc_recipe.runtime.kernels.function import bag_product, csr_product
from acdc_recipe.runtime.kernels.layer import sparse_capable

PRODUCTS = ("bag", "mm")
KERNELS = ("dense", *PRODUCTS)


@dataclass(frozen=True)
class Dispatch:
    """The kernel of a call, by its number of columns (`forms`: samples times tokens for a
    Linear, output positions of every sample for a Conv2d): the one chosen at the measured
    column count nearest to it on a log scale (below the smallest, the smallest's; above the
    largest, the largest's). Blocks dispatch the same way on their input's size
    (`dense_routes`)."""

    columns: tuple[int, ...]  # increasing
    kernels: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.columns) != len(self.kernels) or not self.columns:
            raise ValueError("a dispatch needs one kernel per measured column count")
        if list(self.columns) != sorted(set(self.columns)) or self.columns[0] < 1:
            raise ValueError(f"column counts must increase from 1 up: {self.columns}")
        bounds = [sqrt(a * b) for a, b in zip(self.columns, self.columns[1:])]
        object.__setattr__(self, "_bounds", bounds)

    @classmethod
    def always(cls, kernel: str) -> Dispatch:
        return cls((1,), (kernel,))

    @classmethod
    def of(cls, pairs: Sequence[tuple[int, str]]) -> Dispatch:
        """From (columns, kernel) pairs in any order."""
        ordered = sorted(pairs)
        return cls(tuple(c for c, _ in ordered), tuple(k for _, k in ordered))

    def kernel(self, columns: int) -> str:
        return self.kernels[bisect.bisect_right(self._bounds, columns)]

    @property
    def needs_dense(self) -> bool:
        return "dense" in self.kernels

    @property
    def sparse(self) -> bool:
        """Whether some batch computes on a sparse kernel."""
        return any(kernel != "dense" for kernel in self.kernels)


class _Derived:
    """What a `CsrLayer` derives from its tensors (the CSR tensor, the dense copy): made again
    on use, never copied (a copied layer derives its own)."""

    def __init__(self) -> None:
        self.csr: tuple[tuple[Tensor, ...], Tensor] | None = None
        self.dense: tuple[Tensor, int, Tensor] | None = None  # (values, their version, weight)

    def __deepcopy__(self, memo: dict) -> _Derived:
        return _Derived()


def no_fast_path(module: nn.Module, args: tuple) -> None:
    """Present only to be present: `TransformerEncoderLayer`'s inference fast path reads its
    layers' dense weights directly and is skipped when a module of the block has a forward
    hook (`without_fused_paths` puts this one on the block)."""


def fine_tuning(module: nn.Module) -> bool:
    """Whether a call computes gradients for the module's own tensors (training mode)."""
    return module.training and torch.is_grad_enabled()


class CsrLayer(nn.Module):
    """A Linear or Conv2d for inference (and fine-tuning) whose weight is a CSR matrix
    `[out, in * kernel]` of its nonzeros (see the module docstring); `form` says which layer it
    computes, `dispatch` on which kernel.

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
        dispatch: Dispatch | None = None,
        contiguous: bool = False,
    ) -> None:
        super().__init__()
        dispatch = dispatch or Dispatch.always("bag")
        unknown = set(dispatch.kernels) - set(KERNELS)
        if unknown:
            raise ValueError(f"unknown kernel {sorted(unknown)[0]!r}; one of {', '.join(KERNELS)}")
        self.form = form
        self.dispatch = dispatch
        self.contiguous = contiguous  # a Linear's output copied to F.linear's layout
        self.weight_shape = tuple(weight_shape)
        self.register_buffer("weight_crow_indices", crow_indices.to(torch.int32))
        self.register_buffer("weight_col_indices", col_indices.to(torch.int32))
        self.weight_values = nn.Parameter(values)
        self.bias = None if bias is None else nn.Parameter(bias)
        self._cache = _Derived()

    @classmethod
    def of(
        cls, module: nn.Module, nnz: int | None = None, dispatch: Dispatch | None = None,
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
            return cls(form, tuple(weight.shape), crow, index, values, bias, dispatch, contiguous)
        matrix = weight.cpu().reshape(rows, -1)
        keep = matrix != 0
        csr = csr_from_mask(keep, matrix[keep].clone())
        crow, col = csr.crow_indices(), csr.col_indices()
        return cls(form, tuple(weight.shape), crow, col, csr.values(), bias, dispatch, contiguous)

    def weight_csr(self) -> Tensor:
        """The weight as a CSR tensor over the layer's own tensors (cached while they are the
        same tensors)."""
        parts = (self.weight_crow_indices, self.weight_col_indices, self.weight_values)
        cached = self._cache.csr
        if cached is None or any(a is not b for a, b in zip(cached[0], parts)):
            rows = self.weight_shape[0]
            matrix = torch.sparse_csr_tensor(
                *parts[:2], parts[2].detach(), (rows, prod(self.weight_shape[1:])),
                check_invariants=False,
            )  # fmt: skip
            self._cache.csr = cached = (parts, matrix)
        return cached[1]

    def dense_weight(self) -> Tensor:
        """The dense weight this layer computes with (zeros where nothing is stored), made
        again when the values changed (a load, an optimizer step)."""
        values = self.weight_values
        cached = self._cache.dense
        if cached is None or cached[0] is not values or cached[1] != values._version:
            self._cache.csr = None
            dense = self.weight_csr().to_dense().reshape(self.weight_shape)
            self._cache.dense = cached = (values, values._version, dense)
        return cached[2]

    def dense_copy_bytes(self) -> int:
        """What the dense copy costs, when its dispatch keeps one."""
        if not self.dispatch.needs_dense:
            return 0
        return prod(self.weight_shape) * self.weight_values.element_size()

    def multiply(self, matrix: Tensor, product: str) -> Tensor:
        """`W X + b` for the layer's input matrix `X` (`forms.py`), on `product` (on `bag`
        when fine-tuning: the product autograd differentiates in the values)."""
        if product == "bag" or fine_tuning(self):
            return bag_product(
                self.weight_crow_indices, self.weight_col_indices, self.weight_values, matrix,
                self.bias,
            )  # fmt: skip
        return csr_product(self.weight_csr(), matrix, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        values = self.weight_values
        if not sparse_capable(x, values):
            if fine_tuning(self):
                raise RuntimeError(
                    f"a CSR layer fine-tunes on CPU tensors of its dtype ({values.dtype}) with "
                    f"two or more dimensions and no autocast; this call brings a {x.dim()}-D "
                    f"{x.dtype} tensor on {x.device}"
                )
            return self.form.dense_forward(x, self.dense_weight(), self.bias)
        columns = self.form.columns(x)
        kernel = "bag" if fine_tuning(self) else self.dispatch.kernel(columns)
        if kernel == "dense":
            return self.form.dense_forward(x, self.dense_weight(), self.bias)
        if kernel == "mm" and columns == 1 and self.form.kind == "Linear":  # one sample
            return self._one_sample(x)
        matrix, geometry = self.form.to_matrix(x)
        return self.form.from_matrix(self.multiply(matrix, kernel), geometry, self.contiguous)

    def _one_sample(self, x: Tensor) -> Tensor:
        """A Linear's one sample on `torch.mv`, without the matrix views around it (at batch
        1 the call's overhead is a good part of its time)."""
        vector = x.reshape(-1)
        if self.bias is None:
            product = torch.mv(self.weight_csr(), vector)
        else:
            product = torch.addmv(self.bias, self.weight_csr(), vector)
        return product.reshape(*x.shape[:-1], -1)

    def extra_repr(self) -> str:
        table = ", ".join(f"{c}:{k}" for c, k in zip(self.dispatch.columns, self.dispatch.kernels))
        return f"{self.form}, nnz={self.weight_values.numel()}, dispatch=[{table}]"
