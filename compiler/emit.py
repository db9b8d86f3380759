"""Pass 6: the plan as JSON-ready data (plan.json) and the instrumented module as readable code.

Every file is written atomically (temp file, fsync, rename), so a reader never sees half a plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from math import prod
from typing import Any

from acdc_recipe.compiler.compiled import NOT_PRUNED_REASONS, CompiledRecipe
from acdc_recipe.compiler.distribution import mask_groups
from acdc_recipe.compiler.flops import GLOBAL_ASSUMPTION, scheduled_multipliers
from acdc_recipe.compiler.plan import DenseParam, MaskGroup, PrunableParam
from acdc_recipe.compiler.tracing import DualGraphModule
from acdc_recipe.language.schema import Rule

PLAN_VERSION = 1
FLOPS_COUNTED = (
    "ops applying a prunable layer kind's weights (conv, transposed conv, linear, attention "
    "projections, Conv1D), per sample, multiply-add = 2; "
    "a training unit costs 3x its forward FLOPs; a layer's FLOPs scale with its density"
)


def plan_json(compiled: CompiledRecipe) -> dict[str, Any]:
    """Everything `acdc compile` decided, as plain data (plan.json)."""
    recipe, sparsity, plan = compiled.recipe, compiled.recipe.sparsity, compiled.plan
    groups = mask_groups(plan.params, sparsity.target, sparsity.target) if sparsity else ()
    total = sum(p.numel for p in plan.params)
    pruned = sum(g.prune for g in groups)
    multipliers = scheduled_multipliers(compiled)
    rules = sparsity.rules if sparsity else ()
    names = plan.names
    return {
        "version": PLAN_VERSION,
        "recipe": {"name": recipe.name, "hash": plan.recipe_hash},
        "tracer": {
            "traced": compiled.traced,
            "tracer": compiled.tracer,
            "error": compiled.trace_error,
            "dual_graph": compiled.dual_graph,
            "unwrapped": list(compiled.unwrapped),
        },
        "parameters": _account(compiled),
        "tied": [{"names": list(g.names), "decision": g.decision} for g in compiled.tied],
        "found_by_type": [dataclasses.asdict(layer) for layer in compiled.found_by_type],
        "example_input_shapes": [list(s) for s in compiled.example_shapes],
        "sparsity": None
        if sparsity is None
        else {
            "target": sparsity.target,
            "scope": sparsity.scope,
            "pattern": sparsity.pattern,
            "min_density": sparsity.min_density,
            "min_per_channel": sparsity.min_per_channel,
        },
        "params": [_entry(p, rules) for p in plan.params],
        "dense": [_entry(p, rules) for p in compiled.dense],
        "mask_groups": [_group(g, names) for g in groups],
        "timeline": {
            "unit": plan.timeline.unit,
            "length": plan.timeline.length,
            "sparse_units": plan.timeline.sparse_units,
            "compact": plan.timeline.compact(),
            "phases": [
                {
                    **dataclasses.asdict(phase),
                    "mask_updates": [
                        {
                            "position": position,
                            "target": update.target,
                            "prune": [g.prune for g in update.groups],
                        }
                        for position, update in zip(phase.mask_updates(), updates, strict=True)
                    ],
                }
                for phase, updates in zip(plan.timeline.phases, plan.updates, strict=True)
            ],
        },
        "totals": {
            "prunable_params": len(plan.params),
            "prunable_weights": total,
            "pruned_at_target": pruned,
            "sparsity_at_target": pruned / total if total else 0.0,
            "dense_forward_flops": compiled.dense_forward_flops,
        },
        "flops": {
            "counted": FLOPS_COUNTED,
            "assumption": GLOBAL_ASSUMPTION
            if sparsity and sparsity.scope in ("global", "lamp")
            else None,
            "training_multiplier": multipliers.training,
            "inference_multiplier": multipliers.inference,
            "not_pruned": {
                name: value
                for name, value in compiled.weight_flops.items()
                if name not in set(names)
            },
        },
        "warnings": list(compiled.warnings),
    }


def module_code(compiled: CompiledRecipe) -> str:
    """Readable Python of the instrumented module's forward (both graphs when they differ)."""
    module = compiled.module
    if isinstance(module, DualGraphModule):
        train = module.train_graph.python_code("self").src
        evaluate = module.eval_graph.python_code("self").src
        return f"# train mode\n{train}\n\n# eval mode\n{evaluate}"
    if compiled.traced:
        return f"# {type(module).__name__}: traced by {compiled.tracer}\n{module.code}"
    return (
        f"# not traced by {compiled.tracer}: {compiled.trace_error}\n"
        "# the original module runs unchanged; its structure:\n"
        + "\n".join(f"# {line}" for line in repr(module).splitlines())
        + "\n"
    )


def _entry(param: PrunableParam | DenseParam, rules: Sequence[Rule]) -> dict[str, Any]:
    pruned = isinstance(param, PrunableParam)
    return {
        "name": param.name,
        "layer": param.layer,
        "op": param.op,
        "shape": list(param.shape),
        "numel": prod(param.shape),
        "rule": param.rule,
        "rule_match": rules[param.rule].match if param.rule is not None else None,
        "target": param.target if pruned else 0.0,
        "pattern": param.pattern if pruned else "dense",
        "scope": param.scope if pruned else "dense",
        "input_axis": param.input_axis if pruned else None,
        "dense_flops": param.dense_flops,
    }


def _account(compiled: CompiledRecipe) -> dict[str, Any]:
    """Every parameter: how many are pruned, kept dense, or not pruned and why (by name)."""
    reasons: dict[str, int] = {}
    for reason in compiled.not_pruned.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "pruned": len(compiled.params),
        "not_pruned": dict(sorted(reasons.items())),
        "reasons": {key: NOT_PRUNED_REASONS[key] for key in sorted(reasons)},
        "not_pruned_params": dict(compiled.not_pruned),
    }


def _group(group: MaskGroup, names: Sequence[str]) -> dict[str, Any]:
    return {
        "params": [names[i] for i in group.indices],
        "prune": group.prune,
        "pattern": group.pattern,
        "score": group.score,
        "floors": list(group.floors),
        "channel_floors": list(group.channel_floors),
    }
