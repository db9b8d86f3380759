"""2:4 semi-structured kernels on CUDA (`torch.sparse.to_sparse_semi_structured`).

A Linear weight whose mask keeps at most 2 of every 4 consecutive input weights can be
compressed to half its values plus 2-bit positions, and multiplied on the sparse tensor cores
of GPUs of compute capability 8.0 or newer: on cuSPARSELt where torch has it, else on CUTLASS,
whose kernels torch builds for compute capability 8.x only.
Those kernels take float16 and bfloat16 weights: torch's float32 kernels compute 1:2
sparsity in TF32, which a 2:4 mask does not fit. Every other case computes dense, and
`semi_structured_problem` says why in one line.

Sparse training uses them in the forward only (`SemiStructuredLinearFunction`); its backward
is the dense one, with the weight's gradient kept at the mask's positions. Export uses
`SemiStructuredLinear` (`semi_structured_layer.py`). Both are chosen by timing against dense and checking the outputs
agree, so a kernel that is missing or wrong on some GPU leaves the layer dense.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

HALF_DTYPES = (torch.float16, torch.bfloat16)
MIN_CAPABILITY = (8, 0)
# rows, columns a compressed half weight must be a multiple of (the stricter backend's)
MIN_SHAPE = (32, 64)
# a 2:4 output agrees with dense within this times its scale (torch.testing's rtol)
RTOL = {torch.float16: 1e-3, torch.bfloat16: 1.6e-2}


def two_four(mask: Tensor) -> bool:
    """Whether a `[rows, columns]` mask keeps at most 2 of every 4 consecutive columns."""
    rows, columns = mask.shape
    if columns % 4:
        return False
    return bool(((mask != 0).reshape(rows, columns // 4, 4).sum(-1) <= 2).all())


def semi_structured_problem(
    mask: Tensor, dtype: torch.dtype | None, capability: tuple[int, int] | None
) -> str | None:
    """Why 2:4 kernels cannot compute a Linear of this `[out, in]` mask and compute dtype
    (None: not known yet, not checked) on a device of this CUDA `capability` (None: not a CUDA
    device), or None when they can."""
    if capability is None:
        return "2:4 semi-structured kernels run on CUDA devices only"
    if tuple(capability) < MIN_CAPABILITY:
        return (
            f"2:4 semi-structured kernels need compute capability 8.0 or newer; this GPU has "
            f"{capability[0]}.{capability[1]}"
        )
    if capability[0] != 8 and _cutlass():
        return (
            f"torch has no cuSPARSELt here, and its CUTLASS 2:4 kernels run on compute "
            f"capability 8.x only; this GPU has {capability[0]}.{capability[1]}"
        )
    if dtype is not None and dtype not in HALF_DTYPES:
        return (
            f"2:4 semi-structured kernels take float16 or bfloat16 weights, not {dtype} (train "
            "with precision bf16, or export with --precision bf16)"
        )
    rows, columns = MIN_SHAPE
    if mask.dim() != 2 or mask.shape[0] % rows or mask.shape[1] % columns:
        return (
            f"a {tuple(mask.shape)} weight is not a multiple of the {rows}x{columns} blocks the "
            "2:4 kernels compress"
        )
    if not two_four(mask):
        return "the mask keeps more than 2 of some 4 consecutive weights (not 2:4)"
    return None


def capability_of(device: torch.device) -> tuple[int, int] | None:
    """The CUDA compute capability of `device`, or None for any other device."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def _cutlass() -> bool:
    """Whether torch's 2:4 tensors use CUTLASS here (no cuSPARSELt, or CUTLASS forced)."""
    forced = torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS
    return forced or not torch.backends.cusparselt.is_available()


def compress(matrix: Tensor) -> Tensor:
    """`matrix` (2:4, float16 or bfloat16, on CUDA) as a semi-structured sparse tensor, on
    cuSPARSELt when torch has it, else on CUTLASS."""
    sparse = torch.sparse
    backend = (
        sparse.SparseSemiStructuredTensorCUTLASS
        if _cutlass()
        else sparse.SparseSemiStructuredTensorCUSPARSELT
    )
    return backend.from_dense(matrix.contiguous())


def version_key(tensor: Tensor) -> tuple:
    """What changes when `tensor` is replaced, moved or edited in place (an inference tensor
    has no version counter: it cannot be edited outside inference mode)."""
    version = -1 if tensor.is_inference() else tensor._version
    return (tensor.data_ptr(), version, tensor.dtype, tensor.device)


def agrees(got: Tensor, expected: Tensor) -> bool:
    """Whether a 2:4 output matches dense within the dtype's tolerance, relative to the
    output's scale (sums of thousands of products differ by more than a fixed atol near 0)."""
    rtol = RTOL.get(expected.dtype, 1e-4)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return torch.allclose(got, expected, rtol=rtol, atol=max(rtol * scale, 1e-5))


def semi_forward(x: Tensor, compressed: Tensor, bias: Tensor | None) -> Tensor:
    """`F.linear` with a compressed weight, in the dtype the tensors have (no autocast), on
    `x` as a matrix of rows (the kernels view their input as one)."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()  # cuSPARSELt reads its strides as dense
    with torch.autocast("cuda", enabled=False):
        y = F.linear(rows, compressed, bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def semi_backward(
    grad: Tensor, x: Tensor, weight: Tensor, mask: Tensor, input_grad: bool, has_bias: bool
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """The gradients of `F.linear(x, weight, bias)`; the weight's is zero off `mask`."""
    g = grad.reshape(-1, weight.shape[0])
    grad_x = (g @ weight).reshape(x.shape) if input_grad else None
    grad_w = (g.t() @ x.reshape(-1, weight.shape[1])).mul_(mask)
    return grad_x, grad_w, g.sum(0) if has_bias else None


class SemiStructuredLinearFunction(torch.autograd.Function):
    """`F.linear(x, compressed, bias)` forward; the dense backward of `F.linear(x, weight,
    bias)`, with the weight's gradient zero off `mask`. `compressed` is `weight` compressed;
    all tensors share one dtype."""

    @staticmethod
    def forward(
        ctx,  # noqa: ANN001 - torch's signature
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        compressed: Tensor,
        mask: Tensor,
    ) -> Tensor:
        ctx.save_for_backward(x, weight, mask)
        ctx.has_bias = bias is not None
        return semi_forward(x, compressed, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        x, weight, mask = ctx.saved_tensors
        grad_x, grad_w, grad_b = semi_backward(
            grad, x, weight, mask, ctx.needs_input_grad[0], ctx.has_bias
        )
        return grad_x, grad_w, grad_b, None, None


class SemiStructuredOperands:
    """The mask of one Linear under 2:4 training, and its weight compressed in the compute
    dtype; compressed again when the weight changed (its version counter) or the dtype did."""

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask
        self.compressed: Tensor | None = None
        self._key: tuple | None = None
        self._masks: dict[torch.dtype, Tensor] = {}

    def __deepcopy__(self, memo: dict[int, object]) -> SemiStructuredOperands:
        """A copy of the mask; the copy compresses its own weight on first use."""
        return SemiStructuredOperands(self.mask.clone())

    def mask_in(self, dtype: torch.dtype) -> Tensor:
        if dtype not in self._masks:
            self._masks[dtype] = self.mask.to(dtype)
        return self._masks[dtype]

    @torch.no_grad()
    def masked(self, weight: Tensor, dtype: torch.dtype) -> Tensor:
        """`weight` in `dtype`, exactly zero off the mask (a new tensor, never `weight`)."""
        half = weight.detach().to(dtype)
        return torch.where(self.mask, half, torch.zeros_like(half))

    @torch.no_grad()
    def refresh_(self, weight: Tensor, dtype: torch.dtype) -> Tensor:
        key = (*version_key(weight), dtype)
        if self.compressed is None or key != self._key:
            self.compressed = compress(self.masked(weight, dtype))
            self._key = key
        return self.compressed
