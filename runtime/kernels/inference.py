"""Where a model's inference runs on sparse kernels: the per-layer timing that decides it, at
every batch size a model will be called with.

`sparse_inference_model` times each eligible layer of a model (a Linear or Conv2d, or a whole
self-attention) on the input it really receives (one forward per batch size), dense against its
CSR twin (`CsrLayer`, `CsrAttention`) with either product on the CPU, and gives each twin a
`Dispatch`: per batch, the fastest kernel, a sparse one only where it wins by `SPARSE_MARGIN`.
Then every module holding sparse layers is timed as a whole, per batch, the same way, and its
layers compute dense at that batch when it is not faster: the model it returns is not slower
than its dense form at any measured batch, layer by layer and block by block, on the machine
that chose (between measured batches, a call takes the kernel of the nearest one). On CUDA a
2:4 Linear is timed against its semi-structured twin (`SemiStructuredLinear`) at the largest
batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from acdc_recipe.runtime.kernels.attention import CsrAttention, attention_eligible
from acdc_recipe.runtime.kernels.blocks import (
    BlockChecks,
    Calls,
    ancestors,
    device_of,
    replace_module,
    without_fused_paths,
)
from acdc_recipe.runtime.kernels.choices import BatchChoice, BlockRoute, LayerChoice
from acdc_recipe.runtime.kernels.csr_layer import (
    KERNELS,
    PRODUCTS,
    CsrLayer,
    Dispatch,
)
from acdc_recipe.runtime.kernels.forms import Form, form_of, inside_attention
from acdc_recipe.runtime.kernels.layer import sparse_capable
from acdc_recipe.runtime.kernels.semi_structured import (
    agrees,
    capability_of,
    semi_structured_problem,
)
from acdc_recipe.runtime.kernels.semi_structured_layer import SemiStructuredLinear
from acdc_recipe.runtime.kernels.timing import SPARSE_MARGIN, time_calls, time_paths

Run = Callable[[nn.Module], object]

__all__ = [
    "KERNELS",
    "PRODUCTS",
    "CsrAttention",
    "CsrLayer",
    "Dispatch",
    "BlockRoute",
    "LayerChoice",
    "SparseInference",
    "sparse_inference_model",
    "without_fused_paths",
]


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
    dispatch: Dispatch,
    contiguous: bool = False,
    state: dict[str, Tensor] | None = None,
    name: str = "",
) -> CsrLayer | CsrAttention:
    """The CSR twin of an eligible layer; with `state` (the exported state dict, and `name`
    the layer's place in it), one with tensors of the sizes stored there, to load it into."""

    def nnz(prefix: str) -> int | None:
        if state is None:
            return None
        values = state.get(f"{prefix}weight_values")
        return 0 if values is None else values.numel()

    if isinstance(module, nn.MultiheadAttention):
        counts = None if state is None else (nnz(f"{name}.in_proj."), nnz(f"{name}.out_proj."))
        twin = CsrAttention.of(module, counts, dispatch)
        twin.contiguous = contiguous
        return twin
    return CsrLayer.of(module, nnz(f"{name}."), dispatch, contiguous)


def module_calls(model: nn.Module, run: Callable[[], object]) -> Calls:
    """The (args, kwargs) every module of `model` receives during `run()` (its first call)."""
    seen: Calls = {}

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


def _columns(module: nn.Module, x: Tensor) -> int:
    """The columns of the matrix a layer multiplies for input `x` (tokens for attention)."""
    form = form_of(module)
    return form.columns(x) if form is not None else x.numel() // max(x.shape[-1], 1)


def _choose_batch(module: nn.Module, twin: nn.Module, batch: int, call: tuple) -> BatchChoice:
    """One layer at one batch: every kernel timed on the input it received (the twin's
    dispatch set to each product in turn)."""
    args, kwargs = call
    x = args[0]
    form = form_of(module)
    if form is not None:
        dense = partial(_dense_forward, form, module, x)
    else:
        dense = partial(module, *args, **kwargs)
    products = [partial(_call_on, twin, p, args, kwargs) for p in PRODUCTS]
    ms = dict(zip(KERNELS, time_calls([dense, *products], x.device)))
    fastest = min(PRODUCTS, key=ms.__getitem__)
    kernel = fastest if ms[fastest] <= SPARSE_MARGIN * ms["dense"] else "dense"
    return BatchChoice(batch, _columns(module, x), kernel, ms)


def _call_on(twin: nn.Module, product: str, args: tuple, kwargs: dict) -> object:
    twin.dispatch = Dispatch.always(product)
    return twin(*args, **kwargs)


def _choose_layer(name: str, module: nn.Module, calls: Mapping[int, tuple | None]) -> LayerChoice:
    weights = layer_weights(module)
    kept = sum(int((w != 0).sum()) for w in weights)
    density = kept / max(sum(w.numel() for w in weights), 1)
    kind = layer_kind(module) or type(module).__name__
    inputs = {
        batch: call
        for batch, call in calls.items()
        if call is not None and call[0] and isinstance(call[0][0], Tensor)
    }
    if not inputs:
        return LayerChoice(name, kind, "dense", density)
    largest = inputs[max(inputs)][0][0]
    if largest.device.type == "cuda" and kind == "Linear":
        return _choose_semi_structured(name, module, largest, density)
    if not all(sparse_capable(call[0][0], weights[0]) for call in inputs.values()):
        return LayerChoice(name, kind, "dense", density)
    twin = csr_twin(module, Dispatch.always(PRODUCTS[0]))
    batches = tuple(_choose_batch(module, twin, b, call) for b, call in sorted(inputs.items()))
    return LayerChoice(name, kind, "dense", density).with_batches(batches)


def _choose_semi_structured(name: str, module: nn.Module, x: Tensor, density: float) -> LayerChoice:
    """A CUDA Linear: its 2:4 twin where it runs, agrees with dense and is faster."""
    weight = module.weight.detach()
    problem = semi_structured_problem(weight, weight.dtype, capability_of(weight.device))
    if problem is not None:
        return LayerChoice(name, "Linear", "dense", density, problem=problem)
    twin = SemiStructuredLinear.of(module)
    got = twin(x)
    if twin.problem is not None:  # its kernel raised: no 2:4 kernel for this GPU or build
        return LayerChoice(name, "Linear", "dense", density, problem=twin.problem)
    if not agrees(got, module(x)):
        problem = "its 2:4 kernel's outputs differ from dense beyond the dtype's tolerance"
        return LayerChoice(name, "Linear", "dense", density, problem=problem)
    timing = time_paths(partial(module, x), partial(twin, x), x.device)
    kernel = "semi_structured" if timing.sparse_wins else "dense"
    return LayerChoice(name, "Linear", kernel, density, timing=timing)


def sparse_twin(module: nn.Module, choice: LayerChoice) -> nn.Module:
    """The twin a layer's choice names (a CSR or a 2:4 one)."""
    if choice.kernel == "semi_structured":
        return SemiStructuredLinear.of(module)
    return csr_twin(module, choice.dispatch, choice.contiguous)


@dataclass
class SparseInference:
    """What `sparse_inference_model` returns: the model, each layer's choice, and the blocks
    routed to a dense copy of themselves at some batch sizes."""

    model: nn.Module
    choices: list[LayerChoice]
    routes: list[BlockRoute]


@torch.no_grad()
def sparse_inference_model(
    model: nn.Module, layers: dict[str, nn.Module], runs: Mapping[int, Run]
) -> SparseInference:
    """A copy of `model` (eval mode) with each of `layers` as its CSR twin (`CsrLayer`,
    `CsrAttention`) where that is faster at some batch size, the choices, and the blocks routed
    dense at some batch sizes.

    `runs` maps each batch size to a call of the model on a batch of that size. Each layer is
    timed against its twins on the input it receives in each run; then each CSR Linear's
    output layout is chosen (`_choose_layouts`); then, per batch size, every module holding a
    sparse layer is timed as a whole, innermost first, against its dense form: where it is not
    faster, its layers compute dense at that batch, and where it is still not faster so (a
    block with a fused inference path, as `TransformerEncoderLayer`'s, which a CSR layer turns
    off), the block computes on a dense copy of itself at that batch. The whole model is such
    a block too, so at every measured batch the model is not slower than its dense form.
    """
    calls = {batch: module_calls(model, partial(run, model)) for batch, run in runs.items()}
    choices = {
        name: _choose_layer(name, m, {b: calls[b].get(name) for b in calls})
        for name, m in layers.items()
    }
    sparse = copy.deepcopy(model)
    for name, choice in choices.items():
        if choice.kernel != "dense":
            replace_module(sparse, name, sparse_twin(layers[name], choice))
    without_fused_paths(sparse)
    if all(_runs(sparse, run) for run in runs.values()):
        _choose_layouts(sparse, choices, calls)
    else:
        for name, choice in choices.items():
            if choice.kernel == "csr":
                sparse.get_submodule(name).contiguous = True
                choices[name] = replace(choice, contiguous=True)
    holders = BlockChecks(model, sparse, layers, choices, calls)
    for batch in sorted(runs):
        holders.check(batch)
    for name, choice in choices.items():
        if choice.kernel == "dense" and not isinstance(
            sparse.get_submodule(name), type(layers[name])
        ):
            replace_module(sparse, name, copy.deepcopy(layers[name]))
    return SparseInference(sparse.eval(), list(choices.values()), holders.routes())


def _choose_layouts(
    sparse: nn.Module, choices: dict[str, LayerChoice], calls: Mapping[int, Calls]
) -> None:
    """Each CSR Linear's (and attention's) output layout, at the largest batch where it computes
    sparse: the transposed view, or contiguous where the nearest module around it that the run
    called is faster so (an elementwise op between it and a tensor of `F.linear`'s layout reads
    the transposed one slowly: 140 us against 11 us for a residual add of 16 x 32 x 128)."""
    for name, choice in choices.items():
        if choice.kernel != "csr" or choice.kind == "Conv2d":
            continue
        batch = max(b.batch for b in choice.batches if b.kernel != "dense")
        holder = next((a for a in reversed(ancestors(name)) if a in calls[batch]), None)
        if holder is None:
            continue
        layer, block = sparse.get_submodule(name), sparse.get_submodule(holder)
        args, kwargs = calls[batch][holder]
        transposed_ms, contiguous_ms = time_calls(
            [
                partial(_run_laid_out, layer, layout, block, args, kwargs)
                for layout in (False, True)
            ],
            device_of(args),
        )
        layer.contiguous = contiguous_ms < transposed_ms
        choices[name] = replace(choice, contiguous=layer.contiguous)


def _run_laid_out(
    layer: nn.Module, contiguous: bool, block: nn.Module, args: tuple, kwargs: dict
) -> object:
    layer.contiguous = contiguous
    return block(*args, **kwargs)


def _runs(model: nn.Module, run: Run) -> bool:
    """Whether `run(model)` completes with transposed Linear outputs (a `.view` that merges
    their last dimension with another raises)."""
    try:
        run(model)
    except RuntimeError:
        return False
    return True
