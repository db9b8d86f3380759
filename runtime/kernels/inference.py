"""Where a model's inference runs on sparse kernels: the per-layer timing that decides it.

`sparse_inference_model` times each eligible layer of a model (a Linear or Conv2d, or a whole
self-attention) on the input it really receives (one forward with the given batch), dense
against its CSR twin (`CsrLayer`, `CsrAttention`) with either product on the CPU, or on CUDA
a 2:4 Linear against its semi-structured twin (`SemiStructuredLinear`), keeps the faster
where it wins by `SPARSE_MARGIN`, then checks every module holding sparse layers as a whole
the same way: the model it returns is not slower than its dense form, layer by layer and
block by block, on the machine that chose.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from acdc_recipe.runtime.kernels.attention import CsrAttention, attention_eligible
from acdc_recipe.runtime.kernels.csr_layer import PRODUCTS, CsrLayer
from acdc_recipe.runtime.kernels.forms import Form, form_of, inside_attention
from acdc_recipe.runtime.kernels.layer import sparse_capable
from acdc_recipe.runtime.kernels.semi_structured import (
    agrees,
    capability_of,
    semi_structured_problem,
)
from acdc_recipe.runtime.kernels.semi_structured_layer import SemiStructuredLinear
from acdc_recipe.runtime.kernels.timing import KernelTiming, time_calls, time_paths

HOLDER_ROUNDS = 5  # one disturbed round must not revert a whole block

__all__ = ["PRODUCTS", "CsrAttention", "CsrLayer", "LayerChoice", "sparse_inference_model"]


@dataclass(frozen=True)
class LayerChoice:
    """One eligible layer's inference kernel: "csr" (with its product), "semi_structured"
    (2:4 on CUDA) or "dense", with the timing behind it (`sparse_ms`: the faster product's;
    `product_ms`: each product's) and, for a CUDA Linear left dense untimed, `problem`: why
    no 2:4 kernel computes it."""

    name: str
    kind: str
    kernel: str
    density: float
    timing: KernelTiming | None
    reverted_by: str | None = None  # the module that was faster with this layer dense
    product: str | None = None
    product_ms: dict[str, float] | None = None
    contiguous: bool = False  # the model needs the layer's output contiguous
    problem: str | None = None


def _dense_forward(form: Form, module: nn.Module, x: Tensor) -> Tensor:
    return form.dense_forward(x, module.weight, module.bias)


def eligible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers a CSR twin can replace: plain Linear/Conv2d outside MultiheadAttention (which
    reads its projection weights itself), and plain self-attention as a whole."""
    in_attention = inside_attention(model)
    return {
        name: module
        for name, module in model.named_modules()
        if (id(module) not in in_attention and form_of(module) is not None)
        or attention_eligible(module)
    }


def layer_kind(module: nn.Module | None) -> str | None:
    """The kind of an eligible layer ("Linear", "Conv2d" or "MultiheadAttention"), else None."""
    if module is not None and attention_eligible(module):
        return "MultiheadAttention"
    form = None if module is None else form_of(module)
    return None if form is None else form.kind


def layer_weights(module: nn.Module) -> list[Tensor]:
    """The weights an eligible layer's twin holds in CSR (the first one names its shape)."""
    if isinstance(module, nn.MultiheadAttention):
        return [module.in_proj_weight.detach(), module.out_proj.weight.detach()]
    return [module.weight.detach()]


def csr_twin(
    module: nn.Module,
    product: str,
    contiguous: bool = False,
    state: dict[str, Tensor] | None = None,
    name: str = "",
) -> CsrLayer | CsrAttention:
    """The CSR twin of an eligible layer; with `state` (the exported state dict, and `name`
    the layer's place in it), one with buffers of the sizes stored there, to load it into."""

    def nnz(prefix: str) -> int | None:
        if state is None:
            return None
        values = state.get(f"{prefix}weight_values")
        return 0 if values is None else values.numel()

    if isinstance(module, nn.MultiheadAttention):
        counts = None if state is None else (nnz(f"{name}.in_proj."), nnz(f"{name}.out_proj."))
        twin = CsrAttention.of(module, counts, product)
        twin.contiguous = contiguous
        return twin
    return CsrLayer.of(module, nnz(f"{name}."), product, contiguous)


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
    weights = layer_weights(module)
    kept = sum(int((w != 0).sum()) for w in weights)
    density = kept / max(sum(w.numel() for w in weights), 1)
    kind = layer_kind(module) or type(module).__name__
    args, kwargs = call if call is not None else ((), {})
    x = args[0] if args else None
    if isinstance(x, Tensor) and x.device.type == "cuda" and kind == "Linear":
        return _choose_semi_structured(name, module, x, density)
    if not isinstance(x, Tensor) or not sparse_capable(x, weights[0]):
        return LayerChoice(name, kind, "dense", density, None)
    twins = [csr_twin(module, product) for product in PRODUCTS]
    form = form_of(module)
    if form is not None:
        dense = partial(_dense_forward, form, module, x)
    else:
        dense = partial(module, *args, **kwargs)
    dense_ms, *sparse_ms = time_calls(
        [dense, *(partial(twin, *args, **kwargs) for twin in twins)], x.device
    )
    fastest = min(range(len(PRODUCTS)), key=sparse_ms.__getitem__)
    timing = KernelTiming(dense_ms=dense_ms, sparse_ms=sparse_ms[fastest])
    return LayerChoice(
        name, kind, "csr" if timing.sparse_wins else "dense", density, timing,
        product=PRODUCTS[fastest], product_ms=dict(zip(PRODUCTS, sparse_ms)),
    )  # fmt: skip


def _choose_semi_structured(name: str, module: nn.Module, x: Tensor, density: float) -> LayerChoice:
    """A CUDA Linear: its 2:4 twin where it runs, agrees with dense and is faster."""
    weight = module.weight.detach()
    problem = semi_structured_problem(weight, weight.dtype, capability_of(weight.device))
    if problem is not None:
        return LayerChoice(name, "Linear", "dense", density, None, problem=problem)
    twin = SemiStructuredLinear.of(module)
    got = twin(x)
    if twin.problem is not None:  # its kernel raised: no 2:4 kernel for this GPU or build
        return LayerChoice(name, "Linear", "dense", density, None, problem=twin.problem)
    if not agrees(got, module(x)):
        problem = "its 2:4 kernel's outputs differ from dense beyond the dtype's tolerance"
        return LayerChoice(name, "Linear", "dense", density, None, problem=problem)
    timing = time_paths(partial(module, x), partial(twin, x), x.device)
    kernel = "semi_structured" if timing.sparse_wins else "dense"
    return LayerChoice(name, "Linear", kernel, density, timing)


def sparse_twin(module: nn.Module, choice: LayerChoice) -> nn.Module:
    """The twin a layer's choice names (a CSR or a 2:4 one)."""
    if choice.kernel == "semi_structured":
        return SemiStructuredLinear.of(module)
    return csr_twin(module, choice.product, choice.contiguous)


def replace_module(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Put `layer` at `name` (a dotted submodule path) in `model`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


@torch.no_grad()
def sparse_inference_model(
    model: nn.Module, layers: dict[str, nn.Module], run: Callable[[nn.Module], object]
) -> tuple[nn.Module, list[LayerChoice]]:
    """A copy of `model` (eval mode) with each of `layers` as its CSR twin (`CsrLayer`,
    `CsrAttention`) where that is faster, and the choices.

    Each layer is timed against its twins on the input it receives in `run(model)`; then each
    CSR Linear's output layout is chosen (`_choose_layouts`); then every module holding a CSR
    layer is timed as a whole, innermost first, against its dense form, and reverted to dense
    when it is not faster: a module may compute faster than the sum of its layers
    (`TransformerEncoderLayer`'s fused inference path, which a CSR layer turns off), and the
    whole model is such a module too.
    """
    calls = module_calls(model, lambda: run(model))
    choices = {name: _choose_layer(name, m, calls.get(name)) for name, m in layers.items()}
    sparse = copy.deepcopy(model)
    for name, choice in choices.items():
        if choice.kernel != "dense":
            replace_module(sparse, name, sparse_twin(layers[name], choice))
    if not _runs(sparse, run):
        for name, choice in choices.items():
            if choice.kernel == "csr":
                replace_module(sparse, name, csr_twin(layers[name], choice.product, True))
                choices[name] = replace(choice, contiguous=True)
    else:
        _choose_layouts(sparse, choices, calls)
    holders = {
        ancestor
        for name, choice in choices.items()
        if choice.kernel != "dense"
        for ancestor in _ancestors(name)
    }
    for holder in sorted(holders, key=lambda n: (-n.count(".") if n else 1, n)):
        inside = [n for n, c in choices.items() if c.kernel != "dense" and _within(n, holder)]
        if not inside or holder not in calls:
            continue
        args, kwargs = calls[holder]
        dense_block, sparse_block = model.get_submodule(holder), sparse.get_submodule(holder)
        timing = time_paths(
            partial(dense_block, *args, **kwargs), partial(sparse_block, *args, **kwargs),
            _device_of(args), rounds=HOLDER_ROUNDS,
        )  # fmt: skip
        if timing.sparse_ms >= timing.dense_ms:  # its layers each won by the margin already
            for name in inside:
                replace_module(sparse, name, copy.deepcopy(layers[name]))
                choices[name] = replace(
                    choices[name], kernel="dense", reverted_by=holder, contiguous=False
                )
    without_nested_tensors(sparse)
    return sparse.eval(), list(choices.values())


def without_nested_tensors(model: nn.Module) -> None:
    """Turn off the nested-tensor path of every `TransformerEncoder` holding a CSR twin.

    That path (taken with a key padding mask) reads its layers' dense weights and runs them on
    nested tensors, which no twin has or takes. Such an encoder then computes as one built with
    `enable_nested_tensor=False` does: padded positions hold computed values, not zeros."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and any(
            isinstance(inner, CsrLayer | CsrAttention | SemiStructuredLinear)
            for inner in module.modules()
        ):
            module.use_nested_tensor = False


def _choose_layouts(
    sparse: nn.Module, choices: dict[str, LayerChoice], calls: dict[str, tuple[tuple, dict]]
) -> None:
    """Each CSR Linear's (and attention's) output layout: the transposed view, or contiguous
    where the nearest module around it that the run called is faster so (an elementwise op
    between it and a tensor of `F.linear`'s layout reads the transposed one slowly: 140 us
    against 11 us for a residual add of 16 x 32 x 128)."""
    for name, choice in choices.items():
        if choice.kernel != "csr" or choice.kind == "Conv2d":
            continue
        holder = next((a for a in reversed(_ancestors(name)) if a in calls), None)
        if holder is None:
            continue
        layer, block = sparse.get_submodule(name), sparse.get_submodule(holder)
        args, kwargs = calls[holder]
        transposed_ms, contiguous_ms = time_calls(
            [
                partial(_run_laid_out, layer, layout, block, args, kwargs)
                for layout in (False, True)
            ],
            _device_of(args),
        )
        layer.contiguous = contiguous_ms < transposed_ms
        choices[name] = replace(choice, contiguous=layer.contiguous)


def _device_of(args: tuple) -> torch.device:
    """Where a recorded call computes: its first argument's device."""
    return args[0].device if args and isinstance(args[0], Tensor) else torch.device("cpu")


def _run_laid_out(
    layer: nn.Module, contiguous: bool, block: nn.Module, args: tuple, kwargs: dict
) -> object:
    layer.contiguous = contiguous
    return block(*args, **kwargs)


def _runs(model: nn.Module, run: Callable[[nn.Module], object]) -> bool:
    """Whether `run(model)` completes with transposed Linear outputs (a `.view` that merges
    their last dimension with another raises)."""
    try:
        run(model)
    except RuntimeError:
        return False
    return True


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts))]  # "" is the model itself


def _within(name: str, holder: str) -> bool:
    return holder == "" or name.startswith(holder + ".")
