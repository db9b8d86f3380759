"""Pass 5: dense forward FLOPs of every weight site, and the schedule's FLOPs multipliers.

Counted: conv, transposed conv, linear and attention-projection ops only (one multiply-add =
2 FLOPs; attention score/softmax, norms and activations are not counted), per sample of the
example input. Shapes come from running the model once on fake tensors (no real compute,
parameters untouched, eval mode); a model that cannot run on fake tensors runs for real under
``torch.no_grad()``. As in the AC/DC paper, a layer's forward FLOPs scale with its density and
a training unit costs 3x forward, so the training multiplier is the mean forward multiplier
over the schedule's units.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from acdc_recipe.compiler.discovery import Discovery, WeightSite
from acdc_recipe.compiler.errors import CompileError
from acdc_recipe.compiler.tracing import TraceResult, set_mode

if TYPE_CHECKING:
    from acdc_recipe.compiler.compiled import CompiledRecipe

GLOBAL_ASSUMPTION = (
    "global scope: the per-layer split of the pool is chosen at run time by magnitude; these "
    "estimates assume every pool layer has the pool's average density"
)


@dataclass(frozen=True)
class FlopsMultipliers:
    """Training FLOPs of the schedule and inference FLOPs of the final model, over dense."""

    training: float
    inference: float


def example_inputs_for(model: nn.Module, input_shape: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """A batch of one zero sample of `input_shape`, in the model's dtype and device."""
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = first.dtype if first is not None else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    return (torch.zeros(1, *input_shape, dtype=dtype, device=device),)


def site_flops(
    result: TraceResult, discovery: Discovery, inputs: tuple[Any, ...]
) -> dict[str, dict[str, int]]:
    """Per-sample dense forward FLOPs: site key -> {parameter name: FLOPs}."""
    layer_sites = {s.key: s for s in discovery.sites if not s.functional}
    functional = {s.key: s for s in discovery.sites if s.functional}
    counts: dict[str, dict[str, int]] = {
        s.key: dict.fromkeys((n for n, _ in s.weights), 0) for s in discovery.sites
    }
    modules = dict(result.root.named_modules())

    def record(site: WeightSite, args: tuple, kwargs: dict, output: Any) -> None:
        for name, role in site.weights:
            shape = tuple(discovery.parameters[name].shape)
            counts[site.key][name] += weight_flops(site.op, role, shape, args, kwargs, output)

    def hook(key: str):
        return lambda module, args, kwargs, output: record(layer_sites[key], args, kwargs, output)

    handles = [modules[k].register_forward_hook(hook(k), with_kwargs=True) for k in layer_sites]
    try:
        _run_once(result, inputs, functional, record, reset=lambda: _zero(counts))
    finally:
        for handle in handles:
            handle.remove()
    batch = _batch_size(inputs)
    return {k: {n: v // batch for n, v in c.items()} for k, c in counts.items()}


def weight_flops(
    op: str, role: str, weight_shape: tuple[int, ...], args: tuple, kwargs: dict, output: Any
) -> int:
    """FLOPs of one call of an op for the weight in `role` (multiply-add = 2)."""
    out = output[0] if isinstance(output, (tuple, list)) else output
    if op == "MultiheadAttention":
        names = ("query", "key", "value")
        q, k, v = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names))
        tokens = {"q": _tokens(q), "k": _tokens(k), "v": _tokens(v)}
        embed = weight_shape[0]
        if role == "in_proj":
            embed = weight_shape[0] // 3
            return 2 * embed * weight_shape[1] * (tokens["q"] + tokens["k"] + tokens["v"])
        if role == "out_proj":
            return 2 * tokens["q"] * prod(weight_shape)
        return 2 * tokens[role[0]] * prod(weight_shape)
    per_output = prod(weight_shape[1:])
    if op.lower().startswith("convtranspose") or op.startswith("conv_transpose"):
        first = args[0] if args else kwargs["input"]
        return 2 * first.numel() * per_output
    if op.lower().startswith("conv"):
        return 2 * out.numel() * per_output
    return 2 * (out.numel() // out.shape[-1]) * prod(weight_shape)  # linear


def forward_multiplier(
    compiled: CompiledRecipe, densities: Sequence[float] | Mapping[str, float]
) -> float:
    """Forward FLOPs at these densities (aligned with `compiled.params`, or by name) over dense."""
    if not isinstance(densities, Mapping):
        densities = {p.name: d for p, d in zip(compiled.params, densities)}
    dense = sum(compiled.weight_flops.values())
    if dense == 0:
        return 1.0
    sparse = sum(f * densities.get(name, 1.0) for name, f in compiled.weight_flops.items())
    return sparse / dense


def flops_multipliers(
    compiled: CompiledRecipe, densities_per_unit: Sequence[Sequence[float] | Mapping[str, float]]
) -> FlopsMultipliers:
    """Multipliers from measured densities, one entry per schedule unit (epoch or step) in order.

    Training: the mean forward multiplier over units (a unit costs 3x its forward FLOPs, dense
    or sparse alike). Inference: the forward multiplier of the last unit's densities.
    """
    if not densities_per_unit:
        return FlopsMultipliers(1.0, 1.0)
    values = [forward_multiplier(compiled, d) for d in densities_per_unit]
    return FlopsMultipliers(sum(values) / len(values), values[-1])


def planned_densities(compiled: CompiledRecipe, overall: float) -> list[float]:
    """Densities aligned with `compiled.params` at an overall target (global pool: its average)."""
    densities = [1.0] * len(compiled.params)
    for group in compiled.mask_groups(overall):
        size = sum(compiled.params[i].numel for i in group.indices)
        for i in group.indices:
            densities[i] = 1.0 - group.prune / size if size else 1.0
    return densities


def scheduled_multipliers(compiled: CompiledRecipe) -> FlopsMultipliers:
    """Multipliers the recipe's schedule implies, from planned densities (see GLOBAL_ASSUMPTION)."""
    sparsity = compiled.recipe.sparsity
    timeline = compiled.timeline
    if sparsity is None or timeline.length == 0:
        return FlopsMultipliers(1.0, 1.0)
    cache: dict[float, float] = {}

    def at(overall: float) -> float:
        if overall not in cache:
            cache[overall] = forward_multiplier(compiled, planned_densities(compiled, overall))
        return cache[overall]

    total = 0.0
    for phase in timeline.phases:
        if phase.kind == "dense":
            total += phase.length
            continue
        starts = list(phase.mask_updates())
        for start, end in zip(starts, starts[1:] + [phase.end]):
            total += (end - start) * at(phase.sparsity_at(start, sparsity.target))
    last = timeline.phases[-1]
    final = at(last.sparsity_at(last.end - 1, sparsity.target)) if last.kind != "dense" else 1.0
    return FlopsMultipliers(total / timeline.length, final)


def _run_once(result: TraceResult, inputs: tuple, functional: dict, record, reset) -> None:
    """Run the eval-mode forward once, fake tensors first, recording functional sites."""
    graph_module = result.graph_module
    everything = [result.root, *([graph_module] if graph_module is not None else [])]
    modes = {m: m.training for top in everything for m in top.modules()}
    try:
        if graph_module is not None:
            set_mode(graph_module, False)
        result.root.eval()
        try:
            _forward(result, inputs, functional, record, fake=True)
        except Exception:  # noqa: BLE001 - fake tensors cannot run everything; run for real
            reset()
            _forward(result, inputs, functional, record, fake=False)
    except Exception as error:  # noqa: BLE001 - any failure here is the example input's fault
        shapes = [list(t.shape) for t in inputs if isinstance(t, torch.Tensor)]
        raise CompileError(
            f"running the model once on an example input of shape {shapes} failed "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "set train.model.input_shape to one sample's shape (no batch dimension), or pass "
            "example_inputs to compile()",
            ("train", "model", "input_shape"),
        ) from None
    finally:
        if graph_module is not None:
            set_mode(graph_module, modes[graph_module])
        for module, mode in modes.items():
            module.training = mode


def _forward(result: TraceResult, inputs: tuple, functional: dict, record, fake: bool) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    args = tuple(mode.from_tensor(t) if mode and isinstance(t, torch.Tensor) else t for t in inputs)
    quiet = _logger_disabled("torch._subclasses.fake_tensor") if fake else contextlib.nullcontext()
    with torch.no_grad(), quiet, mode if mode is not None else contextlib.nullcontext():
        if result.graph_module is None:
            result.root(*args)
        else:
            _Recorder(result.graph_module, result.eval_graph(), functional, record).run(*args)


@contextlib.contextmanager
def _logger_disabled(name: str):
    """Silence a logger: a failed fake run is retried for real, its logged traceback is noise."""
    logger = logging.getLogger(name)
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


# Layers whose output has their input's shape; the shape run skips them (fake batch norm is slow).
SHAPE_PRESERVING = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
)


class _Recorder(fx.Interpreter):
    """Interpreter that reports the functional weight sites' calls and skips shape-preserving layers."""

    def __init__(self, module: fx.GraphModule, graph: fx.Graph, sites: dict, record) -> None:
        super().__init__(module, graph=graph)
        self.sites = sites
        self.record = record

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        module = self.fetch_attr(target)
        if isinstance(module, SHAPE_PRESERVING) and len(args) == 1 and not kwargs:
            return args[0]
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        output = super().run_node(n)
        if n.name in self.sites and n.op == "call_function":
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            self.record(self.sites[n.name], args, kwargs, output)
        return output


def _zero(counts: dict[str, dict[str, int]]) -> None:
    for per_weight in counts.values():
        for name in per_weight:
            per_weight[name] = 0


def _tokens(tensor: torch.Tensor) -> int:
    return tensor.numel() // tensor.shape[-1]


def _batch_size(inputs: tuple) -> int:
    first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else 1
