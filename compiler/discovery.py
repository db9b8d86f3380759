"""Pass 2: find the weights that conv, linear and attention ops apply, and account for every
other parameter.

A *weight site* is one op that applies weights: a layer of a registered kind (`kinds.py`:
Conv*, ConvTranspose*, Linear, MultiheadAttention, transformers' Conv1D, your own), or a
functional call (``F.linear``, ``F.conv2d``, ...) whose weight is a parameter read by
``get_attr``. In a traced model the layers are the ``call_module`` nodes (and layers inside
standard containers that stay leaves, such as ``nn.TransformerEncoderLayer``). A layer of a
registered kind whose weight the graph does not show being applied (it reaches the graph only
as an input of a function the tracer keeps whole, or is applied by hand) is a site *by module
type*, with a note saying why. Without a graph the module tree is walked and every layer of a
registered kind is a site.

Every parameter becomes one `Candidate` under its canonical (first, unwrapped) name, so tied
parameters appear once, with their other names as aliases, and with its `role`: a prunable
``weight``, a ``head`` (a transformers model's output or classification head, `heads.py`), or
``bias``, ``norm``, ``embedding`` or ``other``. A weight held by an embedding is an embedding
even when an output projection also applies it (tied input/output embeddings).
A weight of a registered kind that no site applies is a `CompileError`: the plan accounts for
every parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn import functional as F

from acdc_recipe.compiler.errors import CompileError
from acdc_recipe.compiler.heads import in_head, output_heads
from acdc_recipe.compiler.kinds import LayerKind, kind_of, layer_kinds
from acdc_recipe.compiler.tracing import TraceResult

# Functional ops taking (input, weight, ...): function -> (op name, kind name).
FUNCTIONAL_KINDS: dict[object, tuple[str, str]] = {
    F.linear: ("linear", "Linear"),
    F.conv1d: ("conv1d", "Conv1d"),
    F.conv2d: ("conv2d", "Conv2d"),
    F.conv3d: ("conv3d", "Conv3d"),
    F.conv_transpose1d: ("conv_transpose1d", "ConvTranspose1d"),
    F.conv_transpose2d: ("conv_transpose2d", "ConvTranspose2d"),
    F.conv_transpose3d: ("conv_transpose3d", "ConvTranspose3d"),
}
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


@dataclass(frozen=True)
class WeightSite:
    """One op applying weights. `key` is the layer path, or the fx node name of a functional call.

    `by_type` marks a layer the graph does not show being applied (pruned by its module type);
    `note` says why.
    """

    key: str
    functional: bool
    op: str  # class name ("Conv2d") or function name ("linear")
    kind: str  # registered kind ("Conv2d", "Linear", "Conv1D", ...)
    weights: tuple[tuple[str, str], ...]  # (canonical parameter name, role)
    by_type: bool = False
    note: str | None = None


@dataclass(frozen=True)
class Candidate:
    """One parameter under its canonical name, what (if anything) applies it, and its role."""

    name: str
    layer: str  # module that owns it
    op: str  # op of the first site using it, else the owner's class name
    kind: str | None  # registered kind of that op; None when no prunable op applies it
    shape: tuple[int, ...]
    types: frozenset[str]  # class names a `type:` rule can match (owners, op layer, kind)
    role: str  # "weight" (prunable by default), "head", "bias", "norm", "embedding", "other"
    input_axis: int = 1  # the weight's input-feature axis (N:M runs along it)
    aliases: tuple[str, ...] = ()  # its other names (tied parameters)


@dataclass(frozen=True)
class Discovery:
    """Result of the discovery pass."""

    sites: tuple[WeightSite, ...]
    candidates: tuple[Candidate, ...]
    parameters: dict[str, nn.Parameter]  # canonical name -> parameter

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)


def discover(result: TraceResult, kinds: Mapping[str, LayerKind] | None = None) -> Discovery:
    """Weight sites and candidates of a traced (or, failing that, walked) model."""
    kinds = layer_kinds() if kinds is None else kinds
    root = result.root
    canonical = {id(p): name for name, p in root.named_parameters()}
    parameters = dict(root.named_parameters())
    if result.traced:
        paths = []
        for graph in result.graphs():
            paths += [n.target for n in graph.nodes if n.op == "call_module"]
        sites = _layer_sites(root, list(dict.fromkeys(paths)), canonical, kinds)
        sites += _functional_sites(result, canonical)
        sites += _sites_by_type(result, sites, canonical, kinds)
    else:
        sites = _layer_sites(root, [""], canonical, kinds)
    candidates = account(root, sites, kinds, output_heads(root))
    return Discovery(tuple(sites), tuple(candidates), parameters)


def _layer_sites(
    root: nn.Module, paths: list[str], canonical: dict[int, str], kinds: Mapping[str, LayerKind]
) -> list[WeightSite]:
    """Sites among the modules at `paths` and everything below them (pre-order); a weight
    already applied by an enclosing site (MultiheadAttention's out_proj) is not repeated."""
    sites: dict[str, WeightSite] = {}
    for path in paths:
        for sub, module in root.get_submodule(path).named_modules(prefix=path):
            kind = kind_of(module, kinds)
            if kind is None or sub in sites:
                continue
            ancestors = [""] + [sub[:i] for i, ch in enumerate(sub) if ch == "."]
            enclosing = {
                name for key in ancestors if key in sites for name, _ in sites[key].weights
            }
            weights = [
                (name, role)
                for name, role in _kind_weights(module, kinds[kind], canonical)
                if name not in enclosing
            ]
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


def _sites_by_type(
    result: TraceResult,
    sites: list[WeightSite],
    canonical: dict[int, str],
    kinds: Mapping[str, LayerKind],
) -> list[WeightSite]:
    """Layers of a registered kind whose weights no traced site applies: pruned by type."""
    applied = {name for site in sites for name, _ in site.weights}
    readers = _get_attr_readers(result, canonical)
    found = []
    for path, module in result.root.named_modules():
        kind = kind_of(module, kinds)
        if kind is None:
            continue
        weights = [
            (name, role)
            for name, role in _kind_weights(module, kinds[kind], canonical)
            if name not in applied
        ]
        if not weights:
            continue
        applied.update(name for name, _ in weights)
        users = sorted({user for name, _ in weights for user in readers.get(name, ())})
        note = (
            f"its weight reaches the traced graph only as an input of {', '.join(users)}"
            if users
            else "the traced forward never calls it"
        )
        found.append(
            WeightSite(path, False, type(module).__name__, kind, tuple(weights), True, note)
        )
    return found


def _get_attr_readers(result: TraceResult, canonical: dict[int, str]) -> dict[str, set[str]]:
    """canonical parameter name -> names of the graph ops that take it as an input."""
    readers: dict[str, set[str]] = {}
    for graph in result.graphs():
        for node in graph.nodes:
            if node.op != "get_attr":
                continue
            param = _get(result.root, node.target)
            if isinstance(param, nn.Parameter) and id(param) in canonical:
                names = readers.setdefault(canonical[id(param)], set())
                names.update(_op_name(user) for user in node.users)
    return readers


def account(
    root: nn.Module,
    sites: list[WeightSite],
    kinds: Mapping[str, LayerKind],
    heads: tuple[str, ...] = (),
) -> list[Candidate]:
    """One `Candidate` per parameter, with its role (a weight inside one of the `heads`
    module paths is a "head"); a registered kind's weight that no site applies raises
    `CompileError` (nothing is left out of the plan silently)."""
    canonical = {id(p): name for name, p in root.named_parameters()}
    aliases: dict[str, list[str]] = {}
    for name, param in root.named_parameters(remove_duplicate=False):
        aliases.setdefault(canonical[id(param)], []).append(name)
    first_site: dict[str, WeightSite] = {}
    for site in sites:
        for name, _ in site.weights:
            first_site.setdefault(name, site)
    modules = dict(root.named_modules(remove_duplicate=False))
    unapplied = [
        (path, name)
        for path, module in root.named_modules()
        if (kind := kind_of(module, kinds)) is not None
        for name, _ in _kind_weights(module, kinds[kind], canonical)
        if name not in first_site
    ]
    if unapplied:
        path, name = unapplied[0]
        raise CompileError(
            f"the weight {name!r} of layer {path!r} ({type(modules[path]).__name__}) is applied "
            "by no op the compiler found, so it would silently stay out of the plan; "
            f"{len(unapplied)} weight(s) are affected. This is a bug in acdc-recipe's discovery: "
            "please report it with the model's definition",
            layer=path,
        )
    found = []
    for param_name, names in aliases.items():
        owners = [modules[n.rpartition(".")[0]] for n in names]
        owner = owners[0]
        site = first_site.get(param_name)
        types = {c for o in owners for c in _class_names(o)}
        if site is not None:
            types.add(site.kind)
            if not site.functional:
                types.update(_class_names(modules[site.key]))
        found.append(
            Candidate(
                name=param_name,
                layer=param_name.rpartition(".")[0],
                op=site.op if site else type(owner).__name__,
                kind=site.kind if site else None,
                shape=tuple(_get(root, param_name).shape),
                types=frozenset(types),
                role=_role(param_name, owners, site, heads),
                input_axis=kinds[site.kind].input_axis if site and site.kind in kinds else 1,
                aliases=tuple(names[1:]),
            )
        )
    return found


def _role(
    name: str, owners: list[nn.Module], site: WeightSite | None, heads: tuple[str, ...]
) -> str:
    """What a parameter is: a weight some prunable op applies, a head's weight, or
    bias/norm/embedding/other."""
    if any(isinstance(owner, EMBEDDINGS) for owner in owners):
        return "embedding"
    if site is not None:
        return "head" if in_head(name.rpartition(".")[0], heads) else "weight"
    if any(isinstance(o, NORMS) or type(o).__name__.endswith("Norm") for o in owners):
        return "norm"
    return "bias" if "bias" in name.rpartition(".")[2] else "other"


def _kind_weights(
    module: nn.Module, kind: LayerKind, canonical: dict[int, str]
) -> list[tuple[str, str]]:
    """(canonical name, role) of the parameters a layer of `kind` applies."""
    found = []
    for attribute, role in kind.weights_of(module):
        param = _get(module, attribute)
        if isinstance(param, nn.Parameter) and id(param) in canonical:
            found.append((canonical[id(param)], role))
    return found


def _op_name(node: fx.Node) -> str:
    if node.op in ("call_function", "call_method"):
        target = node.target
        return target if isinstance(target, str) else getattr(target, "__name__", str(target))
    return f"{node.op} {node.target}"


def _class_names(module: nn.Module) -> list[str]:
    return [c.__name__ for c in type(module).__mro__ if c not in (nn.Module, object)]


def _get(obj: object, path: str) -> torch.Tensor | nn.Module | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj  # type: ignore[return-value]
