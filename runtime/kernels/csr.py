"""CSR operands of one masked weight matrix: W and W^T over a fixed mask.

The structure (row pointers, column indices, the positions of the kept entries and the
permutation from W's order to W^T's) is built once per mask; `refresh_` gathers the values
from the dense weight, two index selects of `nnz` elements, with no allocation. Every kept
position is stored, also a kept weight that happens to be 0, so the structure is the mask's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

# torch warns once per process that CSR support is in beta; the kernels are measured and tested.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def _row_pointers(rows: Tensor, count: int) -> Tensor:
    pointers = torch.zeros(count + 1, dtype=torch.int64, device=rows.device)
    pointers[1:] = torch.cumsum(torch.bincount(rows, minlength=count), 0)
    return pointers


def csr_from_mask(mask: Tensor, values: Tensor) -> Tensor:
    """A CSR matrix with `mask`'s kept positions (row-major order) holding `values`; the
    values buffer is shared, not copied."""
    rows, cols = mask.shape
    flat = mask.reshape(-1).nonzero().squeeze(1)
    return torch.sparse_csr_tensor(
        _row_pointers(flat // cols, rows), flat % cols, values, (rows, cols), check_invariants=False
    )


@dataclass(eq=False)
class CsrOperands:
    """W (`rows x cols`) and W^T in CSR over one mask, with values refreshed in place."""

    weight: Tensor  # CSR [rows, cols]; its values buffer is `values`
    transposed: Tensor  # CSR [cols, rows]; its values buffer is `values_t`
    flat_index: Tensor  # int64 [nnz]: row-major positions of the kept entries
    transpose_order: Tensor  # int64 [nnz]: values_t = values[transpose_order]
    values: Tensor
    values_t: Tensor
    synced: tuple[int, int] = (0, -1)  # (storage address, version counter) of the weight read

    @property
    def nnz(self) -> int:
        return int(self.flat_index.numel())

    @property
    def density(self) -> float:
        rows, cols = self.weight.shape
        return self.nnz / max(rows * cols, 1)

    def __deepcopy__(self, memo: dict) -> CsrOperands:
        """CSR tensors have no storage to copy; the copy is built from copied parts."""
        values, values_t = self.values.clone(), self.values_t.clone()
        return CsrOperands(
            _csr_like(self.weight, values),
            _csr_like(self.transposed, values_t),
            self.flat_index.clone(),
            self.transpose_order.clone(),
            values,
            values_t,
            self.synced,
        )

    @torch.no_grad()
    def refresh_(self, weight: Tensor) -> None:
        """Gather the kept entries of `weight` (any shape with `rows * cols` elements) into
        both operands, unless it is the same tensor, unchanged, as at the last refresh.

        "Unchanged" is the version counter. A fused CPU optimizer step (AdamW `fused=True`)
        does not bump it; the runtime's weight masking after every sparse-phase step does."""
        state = (weight.data_ptr(), weight._version)
        if state == self.synced:
            return
        torch.index_select(weight.detach().reshape(-1), 0, self.flat_index, out=self.values)
        torch.index_select(self.values, 0, self.transpose_order, out=self.values_t)
        self.synced = state


def _csr_like(matrix: Tensor, values: Tensor) -> Tensor:
    return torch.sparse_csr_tensor(
        matrix.crow_indices().clone(),
        matrix.col_indices().clone(),
        values,
        matrix.shape,
        check_invariants=False,
    )


def build_operands(mask: Tensor, dtype: torch.dtype) -> CsrOperands:
    """The CSR operands for a 2-D `mask` (nonzero = kept); values are filled by `refresh_`."""
    keep = mask != 0
    rows, cols = keep.shape
    flat = keep.reshape(-1).nonzero().squeeze(1)
    row, col = flat // cols, flat % cols
    order = torch.argsort(col * rows + row)  # W^T row-major: by column of W, then by row
    values = torch.zeros(flat.numel(), dtype=dtype, device=mask.device)
    values_t = torch.zeros_like(values)
    weight = csr_from_mask(keep, values)
    transposed = torch.sparse_csr_tensor(
        _row_pointers(col, cols), row[order], values_t, (cols, rows), check_invariants=False
    )
    return CsrOperands(weight, transposed, flat, order, values, values_t)
