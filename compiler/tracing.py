"""Pass 1: unwrap DDP/torch.compile wrappers and trace the model with torch.fx.

Standard layers (everything in ``torch.nn``, e.g. Conv2d, Linear, MultiheadAttention) and
layers of a registered kind (`kinds.py`) stay leaves, so each appears as one ``call_module``
node. The model is traced twice, in train and
in eval mode; when the graphs differ (``if self.training:`` in Python, e.g. stochastic depth)
the result is a `DualGraphModule` that switches graph with ``.train()/.eval()``, so its forward
matches the original in both modes. A model that does not trace is not refused: the result
carries the reason and the compiler walks the module tree instead.

A transformers ``PreTrainedModel`` is traced by transformers' own fx tracer
(``transformers.utils.fx.symbolic_trace``, on its first input) where that exists and works;
transformers 5 removed it, and plain torch.fx cannot trace these models, so they are then
compiled by walking the module tree, which finds every layer of a registered kind.
"""

from __future__ import annotations

import inspect
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import chain

from torch import fx, nn
from torch.fx.graph_module import _copy_attr

from acdc_recipe.compiler.kinds import kind_of, layer_kinds

# Attribute through which a wrapper holds the model it wraps (DDP/DataParallel, torch.compile).
WRAPPER_ATTRIBUTES = ("module", "_orig_mod")


class LeafTracer(fx.Tracer):
    """fx tracer that keeps every standard ``torch.nn`` layer (not containers) and every layer
    of a registered kind as a leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds = layer_kinds()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        return (
            type(m).__module__.startswith(("torch.nn", "torch.ao.nn"))
            or kind_of(m, self.kinds) is not None
            or super().is_leaf_module(m, module_qualified_name)
        )


class DualGraphModule(fx.GraphModule):
    """A GraphModule holding a train-mode and an eval-mode graph; ``train(mode)`` picks one."""

    def __init__(self, root: nn.Module, train_graph: fx.Graph, eval_graph: fx.Graph) -> None:
        super(fx.GraphModule, self).__init__()
        for node in chain(train_graph.nodes, eval_graph.nodes):
            if node.op in ("get_attr", "call_module"):
                _copy_attr(root, self, node.target)
        self.train_graph = train_graph
        self.eval_graph = eval_graph
        self.graph = train_graph
        self.training = True

    def train(self, mode: bool = True) -> DualGraphModule:
        wanted = self.train_graph if mode else self.eval_graph
        if self.graph is not wanted:
            self.graph = wanted
        return super().train(mode)

    def graphs(self) -> tuple[fx.Graph, ...]:
        return (self.train_graph, self.eval_graph)


@dataclass(frozen=True)
class TraceResult:
    """What tracing produced. `root` is the unwrapped model; its names are the canonical ones."""

    root: nn.Module
    graph_module: fx.GraphModule | None  # None when tracing failed
    error: str | None  # why tracing failed, one line
    unwrapped: tuple[str, ...]  # wrappers removed, e.g. ("DistributedDataParallel.module",)
    tracer: str = "torch.fx"  # which tracer was tried: "torch.fx" or "transformers.utils.fx"

    @property
    def traced(self) -> bool:
        return self.graph_module is not None

    @property
    def dual(self) -> bool:
        return isinstance(self.graph_module, DualGraphModule)

    def graphs(self) -> tuple[fx.Graph, ...]:
        """Every graph (train first), or () when not traced."""
        if self.graph_module is None:
            return ()
        if isinstance(self.graph_module, DualGraphModule):
            return self.graph_module.graphs()
        return (self.graph_module.graph,)

    def eval_graph(self) -> fx.Graph | None:
        if isinstance(self.graph_module, DualGraphModule):
            return self.graph_module.eval_graph
        return self.graph_module.graph if self.graph_module is not None else None


def unwrap(model: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """Strip wrappers that only hold the real model (DDP, DataParallel, torch.compile).

    A wrapper is a module with no parameters or buffers of its own whose only child is named
    ``module`` or ``_orig_mod``; this covers DDP, DataParallel and torch.compile's
    OptimizedModule without importing them, and names then match the unwrapped model's.
    """
    removed: list[str] = []
    while True:
        children = dict(model.named_children())
        owns_state = any(True for _ in chain(model.parameters(False), model.buffers(False)))
        attribute = next((a for a in WRAPPER_ATTRIBUTES if a in children), None)
        if attribute is None or len(children) != 1 or owns_state:
            return model, tuple(removed)
        removed.append(f"{type(model).__name__}.{attribute}")
        model = children[attribute]


def trace(model: nn.Module) -> TraceResult:
    """Unwrap and trace `model`; on failure return the reason instead of raising."""
    root, unwrapped = unwrap(model)
    if _is_transformers_model(root):
        return _trace_transformers(root, unwrapped)
    return _trace_with(root, unwrapped, "torch.fx", lambda module: LeafTracer().trace(module))


def _trace_with(
    root: nn.Module,
    unwrapped: tuple[str, ...],
    tracer: str,
    trace_graph: Callable[[nn.Module], fx.Graph],
) -> TraceResult:
    """Trace `root` in train and in eval mode with `trace_graph`; failures become the reason."""
    modes = {m: m.training for m in root.modules()}
    try:
        graphs = []
        for mode in (True, False):
            root.train(mode)
            graphs.append(trace_graph(root))
        train_graph, eval_graph = graphs
        if train_graph.python_code("self").src == eval_graph.python_code("self").src:
            graph_module = fx.GraphModule(root, train_graph, type(root).__name__)
        else:
            graph_module = DualGraphModule(root, train_graph, eval_graph)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "walk modules instead"
        return TraceResult(root, None, _one_line(error), unwrapped, tracer)
    finally:
        for module, mode in modes.items():
            module.training = mode
    set_mode(graph_module, root.training)
    return TraceResult(root, graph_module, None, unwrapped, tracer)


def _is_transformers_model(module: nn.Module) -> bool:
    """A transformers ``PreTrainedModel`` (transformers is imported when one exists)."""
    modeling = sys.modules.get("transformers.modeling_utils")
    base = getattr(modeling, "PreTrainedModel", None)
    return base is not None and isinstance(module, base)


def _trace_transformers(root: nn.Module, unwrapped: tuple[str, ...]) -> TraceResult:
    """transformers' own fx tracer on the model's first input, where this transformers has it."""
    import transformers  # an optional dependency, already imported by the model's own module

    try:
        from transformers.utils.fx import symbolic_trace
    except ImportError:
        reason = (
            f"transformers {transformers.__version__} has no torch.fx tracer "
            "(transformers.utils.fx was removed in 5.0), and plain torch.fx cannot trace its models"
        )
        return TraceResult(root, None, reason, unwrapped, "transformers.utils.fx")
    first = next(iter(inspect.signature(root.forward).parameters))

    def trace_graph(module: nn.Module) -> fx.Graph:
        notes = logging.getLogger("torch.fx._symbolic_trace")  # warns once about is_fx_tracing
        disabled, notes.disabled = notes.disabled, True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's own notes, not the user's business
                return symbolic_trace(module, input_names=[first]).graph
        finally:
            notes.disabled = disabled

    result = _trace_with(root, unwrapped, "transformers.utils.fx", trace_graph)
    if result.traced:
        return result
    return replace(result, error=f"transformers {transformers.__version__}: {result.error}")


def set_mode(graph_module: fx.GraphModule, training: bool) -> None:
    """Put a traced module in train/eval mode without touching the shared layers' own flags."""
    if isinstance(graph_module, DualGraphModule):
        graph_module.graph = graph_module.train_graph if training else graph_module.eval_graph
    graph_module.training = training


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
