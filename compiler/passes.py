"""`compile(model, recipe)`: the ordered compiler passes.

trace -> discover -> resolve rules -> distribute (patterns, targets) -> FLOPs -> emit.
Each pass is a plain function of the previous results and lives in its own module.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from acdc_recipe.compiler.compiled import CompiledRecipe, TiedGroup, TypeFoundLayer
from acdc_recipe.compiler.discovery import Discovery, discover
from acdc_recipe.compiler.distribution import mask_updates, param_scope, planned_targets
from acdc_recipe.compiler.errors import CompileError
from acdc_recipe.compiler.flops import site_flops
from acdc_recipe.compiler.kinds import LayerKind, known_kind_names, layer_kinds
from acdc_recipe.compiler.patterns import check_pattern, implied_sparsity
from acdc_recipe.compiler.plan import DenseParam, InputSample, PrunableParam, SparsityPlan
from acdc_recipe.compiler.rules import Resolution, resolve_rules
from acdc_recipe.compiler.tracing import TraceResult, trace
from acdc_recipe.language.schema import Recipe, Sparsity, recipe_hash
from acdc_recipe.language.timeline import lower


def compile(  # noqa: A001 - the public name the API promises
    model: nn.Module, recipe: Recipe, example_inputs: Any = None
) -> CompiledRecipe:
    """Compile `recipe` against `model`; raise `CompileError` for a recipe that cannot apply.

    `example_inputs` (a tensor or tuple of positional inputs, one batch) drives shape
    propagation for FLOPs; without it no FLOPs are counted (the plan says so).
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(
            f"compile() needs a Recipe, got {type(recipe).__name__}; load one with "
            "acdc_recipe.load_recipe(path)"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile() needs an nn.Module, got {type(model).__name__}")
    timeline = lower(recipe.schedule)
    kinds = layer_kinds()
    sparsity = recipe.sparsity
    prunable = prunable_kinds(sparsity, kinds)
    result = trace(model)
    found = discover(result, kinds)
    resolution = (
        resolve_rules(sparsity.rules, found.candidates, prunable)
        if sparsity is not None
        else Resolution({}, {})
    )
    params, dense = distribute(found, resolution, sparsity)
    inputs = _as_tuple(example_inputs)
    flops = site_flops(result, found, inputs, kinds) if inputs is not None else {}
    weight_flops = _flops_by_weight(found, flops)
    params = tuple(replace(p, dense_flops=weight_flops.get(p.name, 0)) for p in params)
    dense = tuple(replace(p, dense_flops=weight_flops.get(p.name, 0)) for p in dense)
    recipe_target = sparsity.target if sparsity is not None else 0.0
    plan = SparsityPlan(
        params=params,
        timeline=timeline,
        updates=mask_updates(params, timeline, recipe_target),
        on_decompress=recipe.optimizer_state.on_decompress,
        recipe_hash=recipe_hash(recipe),
        sample=_sample(inputs),
    )
    not_pruned = _not_pruned(found, resolution, prunable, sparsity)
    compiled = CompiledRecipe(
        recipe=recipe,
        module=result.graph_module if result.traced else result.root,
        plan=plan,
        parameters=[found.parameters[p.name] for p in params],
        traced=result.traced,
        trace_error=result.error,
        warnings=tuple(_warnings(result, params, sparsity, inputs, timeline.warnings())),
        dense=dense,
        weight_flops=weight_flops,
        unwrapped=result.unwrapped,
        dual_graph=result.dual,
        example_shapes=tuple(tuple(t.shape) for t in inputs or () if isinstance(t, torch.Tensor)),
        tracer=result.tracer,
        not_pruned=not_pruned,
        tied=tuple(
            TiedGroup((c.name, *c.aliases), not_pruned.get(c.name, "pruned"))
            for c in found.candidates
            if c.aliases
        ),
        found_by_type=tuple(
            TypeFoundLayer(s.key, s.op, tuple(n for n, _ in s.weights), s.note or "")
            for s in found.sites
            if s.by_type
        ),
    )
    instrument(compiled, result, found, flops)
    return compiled


def prunable_kinds(sparsity: Sparsity | None, kinds: Mapping[str, LayerKind]) -> tuple[str, ...]:
    """The layer kinds pruned by default: `sparsity.prunable`, checked against the registry,
    or every registered kind."""
    if sparsity is None or sparsity.prunable is None:
        return tuple(kinds)
    known = set(kinds) | set(known_kind_names())
    for index, name in enumerate(sparsity.prunable):
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise CompileError(
                f"{name!r} is not a registered layer kind.{hint} Registered: "
                f"{', '.join(sorted(known))}; add your own to acdc_recipe.compiler.LAYER_KINDS",
                ("sparsity", "prunable", index),
            )
    return sparsity.prunable


def _not_pruned(
    found: Discovery,
    resolution: Resolution,
    prunable: Sequence[str],
    sparsity: Sparsity | None,
) -> dict[str, str]:
    """Every parameter that is not pruned, with the reason (a key of NOT_PRUNED_REASONS)."""
    reasons = {}
    for candidate in found.candidates:
        if candidate.name in resolution.pruned:
            continue
        if candidate.name in resolution.dense:
            reasons[candidate.name] = "dense"
        elif candidate.role == "weight" and sparsity is not None:
            reasons[candidate.name] = "excluded"
        else:
            reasons[candidate.name] = candidate.role
    return reasons


def distribute(
    found: Discovery, resolution: Resolution, sparsity: Sparsity | None
) -> tuple[tuple[PrunableParam, ...], tuple[DenseParam, ...]]:
    """Prunable parameters with their pattern, scope and target; and those kept dense."""
    if sparsity is None:
        return (), ()
    params = []
    for name, rule_index in resolution.pruned.items():
        candidate = found.candidate(name)
        rule = sparsity.rules[rule_index] if rule_index is not None else None
        pattern = (rule.pattern if rule else None) or sparsity.pattern
        from_rule = rule is not None and rule.pattern is not None
        path = (
            ("sparsity", "rules", rule_index, "pattern") if from_rule else ("sparsity", "pattern")
        )
        check_pattern(
            pattern, candidate.layer, candidate.op, candidate.shape, path, candidate.input_axis
        )
        rule_target = rule.target if rule is not None else None
        scope = param_scope(pattern, rule_target, sparsity.scope)
        floor = rule.min_density if rule is not None and rule.min_density is not None else None
        floor = sparsity.min_density if floor is None else floor
        per_channel = rule.min_per_channel if rule is not None else None
        per_channel = sparsity.min_per_channel if per_channel is None else per_channel
        params.append(
            PrunableParam(
                name=candidate.name,
                layer=candidate.layer,
                op=candidate.op,
                shape=candidate.shape,
                rule=rule_index,
                pattern=pattern,
                scope=scope,
                rule_target=rule_target,
                target=0.0,
                dense_flops=0,
                input_axis=candidate.input_axis,
                min_density=floor if scope != "layer" else None,
                min_per_channel=per_channel if scope != "layer" else None,
            )
        )
    targets = planned_targets(params, sparsity.target)
    final = tuple(replace(p, target=t) for p, t in zip(params, targets))
    dense = tuple(
        DenseParam(c.name, c.layer, c.op, c.shape, index, 0)
        for name, index in resolution.dense.items()
        for c in [found.candidate(name)]
    )
    return final, dense


def instrument(
    compiled: CompiledRecipe,
    result: TraceResult,
    found: Discovery,
    flops: dict[str, dict[str, int]],
) -> None:
    """Annotate weight-site nodes with ``node.meta["acdc"]`` and link the module to `compiled`."""
    by_name = {p.name: p for p in (*compiled.params, *compiled.dense)}
    sites = {s.key: s for s in found.sites}
    for graph in result.graphs():
        for node in graph.nodes:
            key = node.name if node.op == "call_function" else node.target
            if node.op == "call_function" and key not in sites:
                key = f"train:{node.name}"
            inside = [s for k, s in sites.items() if not s.functional and _within(k, key)]
            if node.op == "call_module" and inside:
                node.meta["acdc"] = [_site_meta(s, by_name, flops) for s in inside]
            elif node.op == "call_function" and key in sites:
                node.meta["acdc"] = [_site_meta(sites[key], by_name, flops)]
    compiled.module.acdc_compiled = compiled


def _within(layer: str, path: Any) -> bool:
    return isinstance(path, str) and (layer == path or layer.startswith(f"{path}."))


def _site_meta(site, by_name: dict[str, PrunableParam | DenseParam], flops: dict) -> dict[str, Any]:
    weights = []
    for name, role in site.weights:
        param = by_name.get(name)
        pruned = isinstance(param, PrunableParam)
        weights.append(
            {
                "name": name,
                "role": role,
                "rule": param.rule if param else None,
                "target": param.target if pruned else 0.0,
                "pattern": param.pattern if pruned else "dense",
                "flops": flops.get(site.key, {}).get(name, 0),
            }
        )
    return {"site": site.key, "op": site.op, "weights": weights}


def _flops_by_weight(found: Discovery, flops: dict[str, dict[str, int]]) -> dict[str, int]:
    totals = {c.name: 0 for c in found.candidates if c.kind is not None}
    for per_weight in flops.values():
        for name, value in per_weight.items():
            totals[name] = totals.get(name, 0) + value
    return totals


def _sample(inputs: tuple | None) -> InputSample | None:
    """One sample of the first batched tensor input (for exports that time the model)."""
    first = next((t for t in inputs or () if isinstance(t, torch.Tensor) and t.dim() >= 1), None)
    if first is None:
        return None
    return InputSample(tuple(first.shape[1:]), "float" if first.is_floating_point() else "int64")


def _as_tuple(given: Any) -> tuple | None:
    if given is None:
        return None
    return tuple(given) if isinstance(given, (tuple, list)) else (given,)


def _warnings(
    result: TraceResult,
    params: Sequence[PrunableParam],
    sparsity: Sparsity | None,
    inputs: tuple | None,
    schedule_notes: list[str],
) -> list[str]:
    notes = []
    if not result.traced:
        notes.append(
            f"{result.tracer} could not trace the model ({result.error}); compiled by walking "
            "the module tree instead: every layer of a registered kind is found, weights used "
            "only through functional calls are not"
        )
    if inputs is None:
        notes.append("no example input: FLOPs not computed")
    if sparsity is None:
        notes.append("the recipe has no sparsity section: nothing is pruned")
    elif not params:
        notes.append("no prunable parameters found: nothing will be pruned")
    else:
        fixed = implied_sparsity(sparsity.pattern)
        if fixed is not None and abs(fixed - sparsity.target) > 1e-9:
            notes.append(
                f"pattern {sparsity.pattern} fixes the sparsity of its layers at {fixed:g}; "
                f"sparsity.target {sparsity.target:g} applies only to unstructured/block layers"
            )
    return notes + schedule_notes
