"""Pass 2: find the weight operands of conv, linear and attention ops, and every other parameter.

A *weight site* is one op that applies weights: a standard layer (Conv*, ConvTranspose*,
Linear, MultiheadAttention), or a functional call (``F.linear``, ``F.conv2d``, ...) whose
weight is a parameter read by ``get_attr``. In a traced model the layers are the
``call_module`` nodes (and layers inside standard containers that stay leaves, such as
``nn.TransformerEncoderLayer``); without a graph the module tree is walked and functional
calls cannot be seen. Every parameter becomes one `Candidate` under its canonical (first,
unwrapped) name, so tied parameters appear once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn import functional as F

from acdc_recipe.compiler.tracing import TraceResult

# Layer classes whose weights are prunable, most specific first; the value is the schema's name.
LAYER_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.MultiheadAttention, "MultiheadAttention"),
    (nn.ConvTranspose1d, "ConvTranspose1d"),
    (nn.ConvTranspose2d, "ConvTranspose2d"),
    (nn.ConvTranspose3d, "ConvTranspose3d"),
    (nn.Conv1d, "Conv1d"),
    (nn.Conv2d, "Conv2d"),
    (nn.Conv3d, "Conv3d"),
    (nn.Linear, "Linear"),
)

# Functional ops taking (input, weight, ...): function -> (op name, schema kind).
FUNCTIONAL_KINDS: dict[object, tuple[str, str]] = {
    F.linear: ("linear", "Linear"),
    F.conv1d: ("conv1d", "Conv1d"),
    F.conv2d: ("conv2d", "Conv2d"),
    F.conv3d: ("conv3d", "Conv3d"),
    F.conv_transpose1d: ("conv_transpose1d", "ConvTranspose1d"),
    F.conv_transpose2d: ("conv_transpose2d", "ConvTranspose2d"),
    F.conv_transpose3d: ("conv_transpose3d", "ConvTranspose3d"),
}


@dataclass(frozen=True)
class WeightSite:
    """One op applying weights. `key` is the layer path, or the fx node name of a functional call."""

    key: str
    functional: bool
    op: str  # class name ("Conv2d") or function name ("linear")
    kind: str  # schema prunable type ("Conv2d", "Linear", "MultiheadAttention", ...)
    weights: tuple[tuple[str, str], ...]  # (canonical parameter name, role)


@dataclass(frozen=True)
class Candidate:
    """One parameter under its canonical name, and what (if anything) uses it as an op weight."""

    name: str
    layer: str  # module that owns it
    op: str  # op of the first site using it, else the owner's class name
    kind: str | None  # schema prunable type of that op; None for norms, biases, embeddings...
    shape: tuple[int, ...]
    types: frozenset[str]  # class names a `type:` rule can match (owner, op layer, kind)


@dataclass(frozen=True)
class Discovery:
    """Result of the discovery pass."""

    sites: tuple[WeightSite, ...]
    candidates: tuple[Candidate, ...]
    parameters: dict[str, nn.Parameter]  # canonical name -> parameter

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)


def layer_kind(module: nn.Module) -> str | None:
    """The schema prunable type of a layer, or None."""
    return next((kind for cls, kind in LAYER_KINDS if isinstance(module, cls)), None)


def layer_weights(module: nn.Module) -> list[tuple[str, str]]:
    """(attribute path, role) of the prunable weights a layer applies."""
    if isinstance(module, nn.MultiheadAttention):
        if module.in_proj_weight is not None:
            found = [("in_proj_weight", "in_proj")]
        else:
            found = [(f"{p}_proj_weight", f"{p}_proj") for p in "qkv"]
        return found + [("out_proj.weight", "out_proj")]
    return [("weight", "weight")]


def discover(result: TraceResult) -> Discovery:
    """Weight sites and candidates of a traced (or, failing that, walked) model."""
    root = result.root
    canonical = {id(p): name for name, p in root.named_parameters()}
    parameters = dict(root.named_parameters())
    if result.traced:
        paths = []
        for graph in result.graphs():
            paths += [n.target for n in graph.nodes if n.op == "call_module"]
        sites = _layer_sites(root, list(dict.fromkeys(paths)), canonical)
        sites += _functional_sites(result, canonical)
    else:
        sites = _layer_sites(root, [""], canonical)
    return Discovery(tuple(sites), tuple(_candidates(root, sites, canonical)), parameters)


def _layer_sites(root: nn.Module, paths: list[str], canonical: dict[int, str]) -> list[WeightSite]:
    """Sites among the modules at `paths` and everything below them (pre-order)."""
    sites: dict[str, WeightSite] = {}
    inside_attention: set[str] = set()
    for path in paths:
        for sub, module in root.get_submodule(path).named_modules(prefix=path):
            kind = layer_kind(module)
            if kind is None or sub in sites or sub in inside_attention:
                continue
            if kind == "MultiheadAttention":
                inside_attention.add(f"{sub}.out_proj" if sub else "out_proj")
            weights = []
            for attribute, role in layer_weights(module):
                param = _get(module, attribute)
                if isinstance(param, nn.Parameter) and id(param) in canonical:
                    weights.append((canonical[id(param)], role))
            if weights:
                sites[sub] = WeightSite(sub, False, type(module).__name__, kind, tuple(weights))
    return list(sites.values())


def _functional_sites(result: TraceResult, canonical: dict[int, str]) -> list[WeightSite]:
    """Functional calls whose weight is a parameter; eval-graph nodes keep their names."""
    sites: list[WeightSite] = []
    seen: set[tuple[str, str]] = set()
    eval_graph = result.eval_graph()
    for graph in sorted(result.graphs(), key=lambda g: g is not eval_graph):
        for node in graph.nodes:
            if node.op != "call_function" or node.target not in FUNCTIONAL_KINDS:
                continue
            weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            if not isinstance(weight, fx.Node) or weight.op != "get_attr":
                continue
            param = _get(result.root, weight.target)
            if not isinstance(param, nn.Parameter) or id(param) not in canonical:
                continue
            op, kind = FUNCTIONAL_KINDS[node.target]
            name = canonical[id(param)]
            if graph is not eval_graph and (op, name) in seen:
                continue
            seen.add((op, name))
            key = node.name if graph is eval_graph else f"train:{node.name}"
            sites.append(WeightSite(key, True, op, kind, ((name, "weight"),)))
    return sites


def _candidates(
    root: nn.Module, sites: list[WeightSite], canonical: dict[int, str]
) -> list[Candidate]:
    first_site: dict[str, WeightSite] = {}
    for site in sites:
        for name, _ in site.weights:
            first_site.setdefault(name, site)
    modules = dict(root.named_modules())
    found = []
    for name in canonical.values():
        layer = name.rpartition(".")[0]
        owner = modules[layer]
        types = set(_class_names(owner))
        site = first_site.get(name)
        if site is not None:
            types.add(site.kind)
            if not site.functional:
                types.update(_class_names(modules[site.key]))
        shape = tuple(_get(root, name).shape)
        op = site.op if site else type(owner).__name__
        kind = site.kind if site else None
        found.append(Candidate(name, layer, op, kind, shape, frozenset(types)))
    return found


def _class_names(module: nn.Module) -> list[str]:
    return [c.__name__ for c in type(module).__mro__ if c not in (nn.Module, object)]


def _get(obj: object, path: str) -> torch.Tensor | nn.Module | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj  # type: ignore[return-value]
