"""`KernelLayer`: one masked Linear or Conv2d and the path its forward takes.

The layer's module keeps its dense Parameter; `KernelLayer.forward(module, x)` computes the
same layer either densely (the module's own computation, bit for bit) or on the CSR operands
(`function.py`). The operands follow the mask (`use_mask`, `drop`); their values are gathered
again whenever the dense weight's version counter moved (an optimizer step, a load), checked
once per forward. The kernel is chosen per mask on the first training forward that CSR can
compute: by timing both paths (`auto`; under DDP every rank must find sparse faster), or
sparse (`on`).
"""

from __future__ import annotations

import copy
import itertools
import weakref
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from acdc_recipe.runtime.kernels.csr import CsrOperands, build_operands
from acdc_recipe.runtime.kernels.forms import Form, weight_matrix_shape
from acdc_recipe.runtime.kernels.function import (
    SparseLayerFunction,
    sparse_backward,
    sparse_forward,
)
from acdc_recipe.runtime.kernels.timing import KernelTiming, time_paths

SPARSE_DTYPES = (torch.float32, torch.float64)
_slots = itertools.count()
# slot -> layer, for the compiled op (a torch.compile graph holds the slot, an int)
LAYERS: weakref.WeakValueDictionary[int, KernelLayer] = weakref.WeakValueDictionary()


def sparse_capable(x: Tensor, weight: Tensor) -> bool:
    """Whether CSR kernels can compute this call: CPU, float32/64, no autocast, 2-D or more."""
    return (
        weight.device.type == "cpu"
        and x.device == weight.device
        and x.dtype == weight.dtype
        and weight.dtype in SPARSE_DTYPES
        and x.dim() >= 2
        and not torch.is_autocast_enabled("cpu")
    )


class KernelLayer:
    """The kernel state of one prunable weight (see the module docstring)."""

    def __init__(self, name: str, form: Form, mode: str) -> None:
        self.name = name
        self.form = form
        self.mode = mode  # "auto" | "on"
        self.operands: CsrOperands | None = None
        self.kernel: str | None = None  # "sparse" | "dense"; None until chosen for this mask
        self.timing: KernelTiming | None = None
        self.slot = next(_slots)
        LAYERS[self.slot] = self

    def __deepcopy__(self, memo: dict[int, Any]) -> KernelLayer:
        """A copied model gets layers of its own (a slot of its own for compiled graphs)."""
        twin = KernelLayer(self.name, self.form, self.mode)
        twin.kernel, twin.timing = self.kernel, self.timing
        twin.operands = copy.deepcopy(self.operands, memo)
        return twin

    # -- the mask ---------------------------------------------------------------------------
    def use_mask(self, mask: Tensor, weight: Tensor) -> None:
        """Build the CSR structure of a new mask; the kernel is chosen again."""
        matrix = mask.detach().reshape(weight_matrix_shape(tuple(weight.shape)))
        self.operands = build_operands(matrix, weight.dtype)
        self.kernel, self.timing = None, None  # chosen on the first training forward

    def drop(self) -> None:
        """A dense phase: back to the module's own computation, memory returned."""
        self.operands, self.kernel, self.timing = None, None, None

    def restore_choice(self, kernel: str | None, timing: KernelTiming | None) -> None:
        self.kernel, self.timing = kernel, timing

    # -- the forward pass -------------------------------------------------------------------
    def capable(self, x: Tensor, weight: Tensor) -> bool:
        return sparse_capable(x, weight) and (self.form.kind != "Conv2d" or x.dim() == 4)

    def path(self, x: Tensor, weight: Tensor, bias: Tensor | None, training: bool) -> str:
        """The path of this call, "sparse" or "dense". The first training call under a new
        mask chooses (`auto` times both paths); until then, and without a mask, it is dense."""
        operands = self.operands
        if operands is None or not self.capable(x, weight):
            return "dense"
        if self.kernel is None:
            if not training:
                return "dense"
            operands.refresh_(weight)
            self.choose(x, weight, bias)
        if self.kernel != "sparse":
            return "dense"
        operands.refresh_(weight)
        return "sparse"

    def forward(self, module: nn.Module, x: Tensor) -> Tensor:
        """The layer's output: on the CSR operands when this mask's kernel is sparse, else the
        module's own dense computation."""
        weight, bias = module.weight, module.bias
        if self.path(x, weight, bias, module.training and torch.is_grad_enabled()) == "sparse":
            return SparseLayerFunction.apply(x, weight, bias, self.form, self.operands)
        return self.form.dense_forward(x, weight, bias)

    @torch.no_grad()
    def choose(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
        """`on`: sparse. `auto`: time forward and backward of both paths on this input; keep
        the faster."""
        if self.mode == "on":
            self.kernel = "sparse"
            return
        form, operands = self.form, self.operands
        assert operands is not None
        input_grad = x.requires_grad
        x, weight = x.detach(), weight.detach()
        bias = None if bias is None else bias.detach()

        def dense() -> None:
            form.dense_backward(form.dense_forward(x, weight, bias), x, weight, input_grad)

        def sparse() -> None:
            y, matrix, geometry = sparse_forward(form, operands, x, bias)
            sparse_backward(
                form, operands, y, matrix, geometry, weight.shape, input_grad,
                bias_grad=bias is not None,
            )  # fmt: skip

        self.timing = time_paths(dense, sparse, x.device)
        self.kernel = "sparse" if agreed(self.timing.sparse_wins) else "dense"


def agreed(sparse_wins: bool) -> bool:
    """Whether every process of a gloo process group (DDP on the CPU) found the sparse path
    faster: ranks time on their own, and replicas must compute alike to stay bit-identical.
    Every rank chooses in the same forward, so the all-reduce meets its peers."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sparse_wins
    if "gloo" not in str(dist.get_backend()):
        return sparse_wins  # CSR kernels run on the CPU only; no CPU collective to agree on
    vote = torch.tensor([int(sparse_wins)], dtype=torch.int32)
    dist.all_reduce(vote, op=dist.ReduceOp.MIN)
    return bool(vote.item())
