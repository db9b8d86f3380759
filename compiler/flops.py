"""Pass 5: dense forward FLOPs of every weight site, and the schedule's FLOPs multipliers.

Counted: the ops that apply a weight of a registered layer kind (conv, transposed conv,
linear, attention projections, transformers' Conv1D, kinds of your own, each by its kind's
FLOPs function; one multiply-add = 2 FLOPs; attention score/softmax, norms, embeddings and
activations are not counted), per sample of the example input (token ids for a language model:
``input_dtype: int64``). Shapes come from running the model once on fake tensors (no real compute,
parameters untouched, eval mode); a model that cannot run on fake tensors runs for real under
``torch.no_grad()``. As in the AC/DC paper, a layer's forward FLOPs scale with its density and
a training unit costs 3x forward, so the training multiplier is the mean forward multiplier
over the schedule's units.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from acdc_recipe.compiler.compiled import CompiledRecipe
from acdc_recipe.compiler.discovery import Discovery, WeightSite
from acdc_recipe.compiler.errors import ExampleInputError
from acdc_recipe.compiler.kinds import (
    FlopsFunction,
    LayerKind,
    conv_flops,
    conv_transpose_flops,
    layer_kinds,
    linear_flops,
)
from acdc_recipe.compiler.plan import MaskUpdate, SparsityPlan
from acdc_recipe.compiler.tracing import TraceResult, set_mode

GLOBAL_ASSUMPTION = (
    "global or lamp scope: the per-layer split of the pool is chosen at run time by magnitude; "
    "these estimates assume every pool layer has the pool's average density"
)


@dataclass(frozen=True)
class FlopsMultipliers:
    """Training FLOPs of the schedule and inference FLOPs of the final model, over dense."""

    training: float
    inference: float


def example_inputs_for(
    model: nn.Module, input_shape: Sequence[int], input_dtype: str = "float"
) -> tuple[torch.Tensor, ...]:
    """A batch of one zero sample of `input_shape` on the model's device: in the model's
    floating dtype, or int64 for ``input_dtype="int64"`` (token ids; 0 is a valid id)."""
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = first.dtype if first is not None else torch.float32
    if input_dtype == "int64":
        dtype = torch.int64
    device = first.device if first is not None else torch.device("cpu")
    return (torch.zeros(1, *input_shape, dtype=dtype, device=device),)


def site_flops(
    result: TraceResult,
    discovery: Discovery,
    inputs: tuple[Any, ...],
    kinds: Mapping[str, LayerKind] | None = None,
) -> dict[str, dict[str, int]]:
    """Per-sample dense forward FLOPs: site key -> {parameter name: FLOPs}.

    Layers are counted by forward hooks, functional sites at their graph node, and sites found
    by module type (the graph does not show their call) at every op that applies their weight
    (``F.linear``, convolutions, ``addmm``, ``matmul``), seen through a torch function mode.
    """
    kinds = layer_kinds() if kinds is None else kinds
    hooked = {s.key: s for s in discovery.sites if not s.functional and not s.by_type}
    functional = {s.key: s for s in discovery.sites if s.functional}
    counts: dict[str, dict[str, int]] = {
        s.key: dict.fromkeys((n for n, _ in s.weights), 0) for s in discovery.sites
    }
    modules = dict(result.root.named_modules())

    def record(site: WeightSite, args: tuple, kwargs: dict, output: Any) -> None:
        count = kinds[site.kind].flops
        for name, role in site.weights:
            shape = tuple(discovery.parameters[name].shape)
            counts[site.key][name] += count(role, shape, args, kwargs, output)

    def hook(key: str):
        return lambda module, args, kwargs, output: record(hooked[key], args, kwargs, output)

    by_type = {
        id(discovery.parameters[name]): (site.key, name)
        for site in discovery.sites
        if site.by_type
        for name, _ in site.weights
    }

    def applied(key: str, name: str, flops: int) -> None:
        counts[key][name] += flops

    handles = [modules[k].register_forward_hook(hook(k), with_kwargs=True) for k in hooked]
    try:
        with _WeightCalls(by_type, applied) if by_type else contextlib.nullcontext():
            _run_once(result, inputs, functional, record, reset=lambda: _zero(counts))
    finally:
        for handle in handles:
            handle.remove()
    batch = _batch_size(inputs)
    return {k: {n: v // batch for n, v in c.items()} for k, c in counts.items()}


def forward_multiplier(weight_flops: Mapping[str, int], densities: Mapping[str, float]) -> float:
    """Forward FLOPs with each weight at its density (missing: 1.0), over dense forward FLOPs."""
    dense = sum(weight_flops.values())
    if dense == 0:
        return 1.0
    sparse = sum(f * densities.get(name, 1.0) for name, f in weight_flops.items())
    return sparse / dense


@dataclass
class FlopsMeter:
    """The paper's accounting, unit by unit: a training unit costs 3x its forward FLOPs at the
    densities in force during it, so the training multiplier is the mean forward multiplier
    over the units counted; inference is the forward multiplier of the densities now."""

    weight_flops: Mapping[str, int]  # per-sample dense forward FLOPs of every counted weight
    densities: dict[str, float] = field(default_factory=dict)  # missing weights: dense
    multiplier_sum: float = 0.0
    units: int = 0

    def set_densities(self, densities: Mapping[str, float]) -> None:
        """The densities in force from now on (an empty mapping: dense)."""
        self.densities = dict(densities)

    def count(self, units: int = 1) -> None:
        self.multiplier_sum += units * forward_multiplier(self.weight_flops, self.densities)
        self.units += units

    def multipliers(self) -> FlopsMultipliers:
        training = self.multiplier_sum / self.units if self.units else 1.0
        return FlopsMultipliers(training, forward_multiplier(self.weight_flops, self.densities))

    def state_dict(self) -> dict[str, Any]:
        return {"densities": dict(self.densities), "sum": self.multiplier_sum, "units": self.units}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.densities = {str(k): float(v) for k, v in state["densities"].items()}
        self.multiplier_sum, self.units = float(state["sum"]), int(state["units"])


def planned_densities(plan: SparsityPlan, update: MaskUpdate) -> dict[str, float]:
    """Each pruned weight's density after `update` (a global pool: its average density)."""
    densities = {}
    for group in update.groups:
        size = sum(plan.params[i].numel for i in group.indices)
        for i in group.indices:
            densities[plan.params[i].name] = 1.0 - group.prune / size if size else 1.0
    return densities


def scheduled_multipliers(compiled: CompiledRecipe) -> FlopsMultipliers:
    """Multipliers the recipe's schedule implies, from planned densities (see GLOBAL_ASSUMPTION)."""
    plan = compiled.plan
    meter = FlopsMeter(compiled.weight_flops)
    for phase, updates in zip(plan.timeline.phases, plan.updates, strict=True):
        if not updates:
            meter.set_densities({})
            meter.count(phase.length)
            continue
        starts = list(phase.mask_updates())
        for start, end, update in zip(starts, starts[1:] + [phase.end], updates, strict=True):
            meter.set_densities(planned_densities(plan, update))
            meter.count(end - start)
    return meter.multipliers()


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
        raise ExampleInputError(
            f"running the model once on an example input of shape {shapes} failed "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "pass example inputs the model takes (one batch) to compile()"
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


# Ops that apply a weight argument: function -> (position of the weight, FLOPs of one call).
WEIGHT_OPS: dict[Any, tuple[int, FlopsFunction]] = {
    F.linear: (1, linear_flops),
    torch.addmm: (2, linear_flops),
    torch.mm: (1, linear_flops),
    torch.matmul: (1, linear_flops),
    torch.Tensor.matmul: (1, linear_flops),
    torch.Tensor.__matmul__: (1, linear_flops),
    F.conv1d: (1, conv_flops),
    F.conv2d: (1, conv_flops),
    F.conv3d: (1, conv_flops),
    F.conv_transpose1d: (1, conv_transpose_flops),
    F.conv_transpose2d: (1, conv_transpose_flops),
    F.conv_transpose3d: (1, conv_transpose_flops),
}


class _WeightCalls(TorchFunctionMode):
    """Counts the calls that apply one of `weights` (parameter id -> (site key, name))."""

    def __init__(self, weights: dict[int, tuple[str, str]], applied) -> None:
        super().__init__()
        self.weights = weights
        self.applied = applied

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        entry = WEIGHT_OPS.get(func)
        if entry is not None:
            position, count = entry
            weight = args[position] if len(args) > position else kwargs.get("weight")
            found = self.weights.get(id(weight))
            if found is not None:
                key, name = found
                self.applied(key, name, count("weight", tuple(weight.shape), args, kwargs, output))
        return output


def _zero(counts: dict[str, dict[str, int]]) -> None:
    for per_weight in counts.values():
        for name in per_weight:
            per_weight[name] = 0


def _batch_size(inputs: tuple) -> int:
    first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else 1
