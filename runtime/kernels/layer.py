"""`KernelLayer`: one masked Linear or Conv2d and the path its forward takes.

The layer's module keeps its dense Parameter; `KernelLayer.forward(module, x)` computes the
same layer either densely (the module's own computation, bit for bit) or sparse: on the CPU
on the CSR operands (`function.py`), on CUDA for a 2:4 Linear in float16/bfloat16 on
semi-structured kernels in the forward (`semi_structured.py`). The operands follow the mask
(`use_mask`, `drop`); their values are gathered again whenever the dense weight's version
counter moved (an optimizer step, a load), checked once per forward. The kernel is chosen per
mask on the first training forward that a sparse path can compute: by timing both paths
(`auto`; under DDP every rank must find sparse faster), or sparse (`on`). A 2:4 path whose
outputs do not agree with dense, or that fails to run, leaves the layer dense.
"""

from __future__ import annotations

import copy
import itertools
import weakref
from collections.abc import Callable
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
from acdc_recipe.runtime.kernels.semi_structured import (
    HALF_DTYPES,
    SemiStructuredLinearFunction,
    SemiStructuredOperands,
    agrees,
    capability_of,
    compress,
    semi_backward,
    semi_forward,
    semi_structured_problem,
)
from acdc_recipe.runtime.kernels.timing import KernelTiming, time_paths

SPARSE_DTYPES = (torch.float32, torch.float64)
CPU = torch.device("cpu")
_slots = itertools.count()
# slot -> layer, for the compiled op (a torch.compile graph holds the slot, an int)
LAYERS: weakref.WeakValueDictionary[int, KernelLayer] = weakref.WeakValueDictionary()


def sparse_capable(x: Tensor, weight: Tensor) -> bool:
    """Whether CSR kernels can compute this call: CPU, float32/64, no autocast, 2-D or more."""
    return (
        weight.is_cpu
        and x.is_cpu
        and x.dtype == weight.dtype
        and weight.dtype in SPARSE_DTYPES
        and x.dim() >= 2
        and not torch.is_autocast_enabled("cpu")
    )


def compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype | None:
    """The dtype a CUDA layer computes this call in: autocast's, else its tensors' (None when
    they differ)."""
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return weight.dtype if x.dtype == weight.dtype else None


def semi_capable(x: Tensor, weight: Tensor) -> bool:
    """Whether a 2:4 Linear's semi-structured forward can compute this call: CUDA, float16
    or bfloat16 (the tensors', or autocast's), 2-D or more."""
    return (
        weight.device.type == "cuda"
        and x.device == weight.device
        and x.dim() >= 2
        and x.numel() > 0
        and compute_dtype(x, weight) in HALF_DTYPES
    )


class KernelLayer:
    """The kernel state of one prunable weight (see the module docstring)."""

    def __init__(self, name: str, form: Form, mode: str) -> None:
        self.name = name
        self.form = form
        self.mode = mode  # "auto" | "on"
        self.operands: CsrOperands | SemiStructuredOperands | None = None
        self.masked = False  # under a mask (a sparse phase), with operands or none for it
        self.kernel: str | None = None  # "sparse" | "dense"; None until chosen for this mask
        self.timing: KernelTiming | None = None
        self.slot = next(_slots)
        LAYERS[self.slot] = self

    def __deepcopy__(self, memo: dict[int, Any]) -> KernelLayer:
        """A copied model gets layers of its own (a slot of its own for compiled graphs)."""
        twin = KernelLayer(self.name, self.form, self.mode)
        twin.kernel, twin.timing, twin.masked = self.kernel, self.timing, self.masked
        twin.operands = copy.deepcopy(self.operands, memo)
        return twin

    # -- the mask ---------------------------------------------------------------------------
    def use_mask(self, mask: Tensor, weight: Tensor) -> None:
        """Build the sparse operands of a new mask (CSR on the CPU; on CUDA, the mask of a 2:4
        Linear); the kernel is chosen again."""
        matrix = mask.detach().reshape(weight_matrix_shape(tuple(weight.shape)))
        self.operands, self.masked = None, True
        if weight.device.type == "cpu":
            self.operands = build_operands(matrix, weight.dtype)
        elif self.form.kind == "Linear" and not semi_structured_problem(
            matrix, None, capability_of(weight.device)
        ):
            self.operands = SemiStructuredOperands(matrix.to(weight.device, torch.bool))
        self.kernel, self.timing = None, None  # chosen on the first training forward

    def drop(self) -> None:
        """A dense phase: back to the module's own computation, memory returned."""
        self.operands, self.kernel, self.timing, self.masked = None, None, None, False

    def restore_choice(self, kernel: str | None, timing: KernelTiming | None) -> None:
        self.kernel, self.timing = kernel, timing

    # -- the forward pass -------------------------------------------------------------------
    def capable(self, x: Tensor, weight: Tensor) -> bool:
        if isinstance(self.operands, SemiStructuredOperands):
            return semi_capable(x, weight)
        return sparse_capable(x, weight) and (self.form.kind != "Conv2d" or x.dim() == 4)

    def path(self, x: Tensor, weight: Tensor, bias: Tensor | None, training: bool) -> str:
        """The path of this call: "sparse" (CSR), "semi" (2:4) or "dense". The first training
        call under a new mask chooses (`auto` times both paths); until then, and without a
        mask, it is dense."""
        operands = self.operands
        if operands is None or not self.capable(x, weight):
            return "dense"
        csr = isinstance(operands, CsrOperands)
        if self.kernel is None:
            if not training:
                return "dense"
            if csr:
                operands.refresh_(weight)
            self.choose(x, weight, bias)
        if self.kernel != "sparse":
            return "dense"
        if csr:
            operands.refresh_(weight)
            return "sparse"
        return "semi"

    def forward(self, module: nn.Module, x: Tensor) -> Tensor:
        """The layer's output: on the sparse operands when this mask's kernel is sparse, else
        the module's own dense computation."""
        weight, bias = module.weight, module.bias
        path = self.path(x, weight, bias, module.training and torch.is_grad_enabled())
        if path == "sparse":
            return SparseLayerFunction.apply(x, weight, bias, self.form, self.operands)
        if path == "semi":
            return self._semi_call(x, weight, bias)
        return self.form.dense_forward(x, weight, bias)

    def _semi_call(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        operands = self.operands
        assert isinstance(operands, SemiStructuredOperands)
        dtype = compute_dtype(x, weight)
        compressed = operands.refresh_(weight, dtype)
        return SemiStructuredLinearFunction.apply(
            x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
            compressed, operands.mask_in(dtype),
        )  # fmt: skip

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

        if isinstance(operands, SemiStructuredOperands):
            self._choose_semi(x, weight, bias, operands, dense, input_grad)
            return

        def sparse() -> None:
            y, matrix, geometry = sparse_forward(form, operands, x, bias)
            sparse_backward(
                form, operands, y, matrix, geometry, weight.shape, input_grad,
                bias_grad=bias is not None,
            )  # fmt: skip

        self.timing = time_paths(dense, sparse, x.device)
        self.kernel = "sparse" if agreed(self.timing.sparse_wins, x.device) else "dense"

    def _choose_semi(
        self, x: Tensor, weight: Tensor, bias: Tensor | None,
        operands: SemiStructuredOperands, dense: Callable[[], object], input_grad: bool,
    ) -> None:  # fmt: skip
        """The 2:4 path, where it runs and its outputs agree with dense (`on`: then always);
        `auto`: where it is also faster."""
        dtype = compute_dtype(x, weight)
        assert dtype is not None
        masked = operands.masked(weight, dtype)
        half_bias = None if bias is None else bias.to(dtype)
        half_x, mask = x.to(dtype), operands.mask_in(dtype)
        try:
            got = semi_forward(half_x, operands.refresh_(weight, dtype), half_bias)
        except (RuntimeError, NotImplementedError):  # no 2:4 kernel for this GPU or build
            works = False
        else:
            works = agrees(got, self.form.dense_forward(half_x, masked, half_bias))

        def semi() -> None:  # a step compresses the weight once (it changed since)
            y = semi_forward(half_x, compress(masked), half_bias)
            semi_backward(y, half_x, masked, mask, input_grad, bias is not None)

        if works and self.mode == "auto":
            self.timing = time_paths(dense, semi, x.device)
            works = self.timing.sparse_wins
        self.kernel = "sparse" if agreed(works, x.device) else "dense"


def agreed(sparse_wins: bool, device: torch.device = CPU) -> bool:
    """Whether every process of the process group (DDP) found the sparse path faster: ranks
    time on their own, and replicas must compute alike to stay bit-identical. Every rank
    chooses in the same forward, so the all-reduce meets its peers (gloo on the CPU, NCCL
    on the layer's GPU)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sparse_wins
    backend = str(dist.get_backend())
    if "gloo" in backend:
        where = CPU
    elif "nccl" in backend and device.type == "cuda":
        where = device
    else:
        return sparse_wins  # no collective here for a vote on this device
    vote = torch.tensor([int(sparse_wins)], dtype=torch.int32, device=where)
    dist.all_reduce(vote, op=dist.ReduceOp.MIN)
    return bool(vote.item())
