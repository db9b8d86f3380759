"""`SemiStructuredLinear`: a Linear for inference on 2:4 semi-structured kernels (CUDA)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from acdc_recipe.errors import first_line
from acdc_recipe.runtime.kernels.semi_structured import (
    capability_of,
    compress,
    semi_forward,
    semi_structured_problem,
    version_key,
)


class SemiStructuredLinear(nn.Module):
    """A Linear for inference on 2:4 kernels. It keeps the masked dense `weight` (its state
    dict is a Linear's) and multiplies with the weight compressed, on CUDA in float16 or
    bfloat16 (its input cast to that dtype, as autocast would), compressing again when the
    weight moved or changed; on any other device or dtype, with a weight that is not 2:4, or
    where the kernel raises, it computes dense and `problem` says why."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._compressed: Tensor | None = None
        self._key: tuple | None = None
        self.problem: str | None = None

    @classmethod
    def of(cls, module: nn.Module) -> SemiStructuredLinear:
        return cls(module.weight, module.bias)

    def _compressed_weight(self) -> Tensor | None:
        weight = self.weight
        key = version_key(weight)
        if key != self._key:
            self.problem = semi_structured_problem(
                weight, weight.dtype, capability_of(weight.device)
            )
            self._compressed = None if self.problem else compress(weight)
            self._key = key
        return self._compressed

    def forward(self, x: Tensor) -> Tensor:
        compressed = self._compressed_weight()
        if compressed is not None and x.numel() > 0 and x.device == compressed.device:
            try:
                return semi_forward(x.to(compressed.dtype), compressed, self.bias)
            except (RuntimeError, NotImplementedError) as error:  # no kernel for this GPU
                self.problem = first_line(error)
                self._compressed = None
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, 2:4"
