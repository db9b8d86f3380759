"""Inference layers on sparse kernels, and the per-layer timing that decides where they go.

A `CsrLayer` (a Linear or a Conv2d) holds its weight as CSR buffers (`weight_crow_indices`,
`weight_col_indices`, `weight_values`: the nonzeros, row-major), so their state dict is the
compressed layer and nothing dense is kept. `sparse_inference_model` times each eligible layer
of a model on the input it really receives (one forward with the given batch), dense against
CSR, keeps CSR where it wins by `SPARSE_MARGIN`, then checks every module holding CSR layers
as a whole the same way: the model it returns is not slower than its dense form, layer by
layer and block by block, on the machine that chose.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from math import prod
from typing import Any

import torch
from torch import Tensor, nn

from acdc_recipe.runtime.kernels.csr import csr_from_mask
from acdc_recipe.runtime.kernels.forms import Form, form_of, inside_attention
from acdc_recipe.runtime.kernels.function import sparse_forward
from acdc_recipe.runtime.kernels.layer import sparse_capable
from acdc_recipe.runtime.kernels.timing import KernelTiming, time_paths


def _no_fast_path(module: nn.Module, args: tuple) -> None:
    """Present only to be present: `TransformerEncoderLayer`'s inference fast path reads its
    linear layers' dense `.weight` directly and is skipped when a submodule has a forward
    hook, so an encoder holding a CSR layer calls that layer's forward instead."""


class CsrLayer(nn.Module):
    """A Linear or Conv2d for inference whose weight is a CSR matrix `[out, in * kernel]` of
    its nonzeros (see the module docstring); `form` says which layer it computes."""

    def __init__(
        self,
        form: Form,
        weight_shape: tuple[int, ...],
        crow_indices: Tensor,
        col_indices: Tensor,
        values: Tensor,
        bias: Tensor | None,
    ) -> None:
        super().__init__()
        self.form = form
        self.weight_shape = tuple(weight_shape)
        self.register_buffer("weight_crow_indices", crow_indices.to(torch.int32))
        self.register_buffer("weight_col_indices", col_indices.to(torch.int32))
        self.register_buffer("weight_values", values)
        self.register_buffer("bias", bias)
        self.register_forward_pre_hook(_no_fast_path)

    @classmethod
    def of(cls, module: nn.Module, nnz: int | None = None) -> CsrLayer:
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
            return cls(form, tuple(weight.shape), crow, index, values, bias)
        matrix = weight.cpu().reshape(rows, -1)
        keep = matrix != 0
        csr = csr_from_mask(keep, matrix[keep].clone())
        return cls(
            form, tuple(weight.shape), csr.crow_indices(), csr.col_indices(), csr.values(), bias
        )

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

    def forward(self, x: Tensor) -> Tensor:
        if not sparse_capable(x, self.weight_values):
            return self.form.dense_forward(x, self.dense_weight(), self.bias)
        return sparse_forward(self.form, self.weight_csr(), x, self.bias).contiguous()

    def extra_repr(self) -> str:
        return f"{self.form}, nnz={self.weight_values.numel()}"


@dataclass(frozen=True)
class LayerChoice:
    """One eligible layer's inference kernel: "csr" or "dense", with the timing behind it."""

    name: str
    kind: str
    kernel: str
    density: float
    timing: KernelTiming | None
    reverted_by: str | None = None  # the module that was faster with this layer dense


def _dense_forward(form: Form, module: nn.Module, x: Tensor) -> Tensor:
    return form.dense_forward(x, module.weight, module.bias)


def eligible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers a CSR twin can replace: plain Linear/Conv2d outside MultiheadAttention (which
    reads its projection weights itself)."""
    in_attention = inside_attention(model)
    return {
        name: module
        for name, module in model.named_modules()
        if id(module) not in in_attention and form_of(module) is not None
    }


def module_calls(
    model: nn.Module, run: Callable[[], object]
) -> dict[str, tuple[tuple, dict[str, Any]]]:
    """The (args, kwargs) every module of `model` receives during `run()` (its first call)."""
    seen: dict[str, tuple[tuple, dict[str, Any]]] = {}

    def recorder(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            seen.setdefault(name, (args, kwargs))

        return record

    handles = [
        m.register_forward_pre_hook(recorder(n), with_kwargs=True) for n, m in model.named_modules()
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _choose_layer(name: str, module: nn.Module, call: tuple | None) -> LayerChoice:
    weight = module.weight.detach()
    density = float((weight != 0).sum()) / max(weight.numel(), 1)
    x = call[0][0] if call is not None and call[0] else None
    if not isinstance(x, Tensor) or not sparse_capable(x, weight):
        return LayerChoice(name, type(module).__name__, "dense", density, None)
    twin = CsrLayer.of(module)
    timing = time_paths(partial(_dense_forward, twin.form, module, x), partial(twin, x), x.device)
    return LayerChoice(
        name, twin.form.kind, "csr" if timing.sparse_wins else "dense", density, timing
    )


def replace_module(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Put `layer` at `name` (a dotted submodule path) in `model`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


@torch.no_grad()
def sparse_inference_model(
    model: nn.Module, layers: dict[str, nn.Module], run: Callable[[nn.Module], object]
) -> tuple[nn.Module, list[LayerChoice]]:
    """A copy of `model` (eval mode) with each of `layers` as its `CsrLayer` where that is
    faster, and the choices.

    Each layer is timed against its twin on the input it receives in `run(model)`; then every
    module holding a CSR layer is timed as a whole, innermost first, against its dense form,
    and reverted to dense when it is not faster: a module may compute faster than the sum of
    its layers (`TransformerEncoderLayer`'s fused inference path, which a CSR layer turns off),
    and the whole model is such a module too.
    """
    calls = module_calls(model, lambda: run(model))
    choices = {name: _choose_layer(name, m, calls.get(name)) for name, m in layers.items()}
    sparse = copy.deepcopy(model)
    for name, choice in choices.items():
        if choice.kernel == "csr":
            replace_module(sparse, name, CsrLayer.of(layers[name]))
    holders = {
        ancestor
        for name, choice in choices.items()
        if choice.kernel == "csr"
        for ancestor in _ancestors(name)
    }
    for holder in sorted(holders, key=lambda n: (-n.count(".") if n else 1, n)):
        inside = [n for n, c in choices.items() if c.kernel == "csr" and _within(n, holder)]
        if not inside or holder not in calls:
            continue
        args, kwargs = calls[holder]
        dense_block, sparse_block = model.get_submodule(holder), sparse.get_submodule(holder)
        timing = time_paths(
            partial(dense_block, *args, **kwargs), partial(sparse_block, *args, **kwargs),
            args[0].device if args and isinstance(args[0], Tensor) else torch.device("cpu"),
        )  # fmt: skip
        if not timing.sparse_wins:
            for name in inside:
                replace_module(sparse, name, copy.deepcopy(layers[name]))
                choices[name] = replace(choices[name], kernel="dense", reverted_by=holder)
    return sparse.eval(), list(choices.values())


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts))]  # "" is the model itself


def _within(name: str, holder: str) -> bool:
    return holder == "" or name.startswith(holder + ".")
