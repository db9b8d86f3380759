"""Pass 6: the plan as JSON-ready data, and the build folder (recipe, plan.json, module code).

Every file is written atomically (temp file, fsync, rename), so a reader never sees half a plan.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acdc_recipe.compiler.flops import GLOBAL_ASSUMPTION, scheduled_multipliers
from acdc_recipe.compiler.tracing import DualGraphModule
from acdc_recipe.files import write_text_atomic

if TYPE_CHECKING:
    from acdc_recipe.compiler.compiled import CompiledRecipe

PLAN_VERSION = 1
FLOPS_COUNTED = (
    "conv, transposed conv, linear and attention-projection ops, per sample, multiply-add = 2; "
    "a training unit costs 3x its forward FLOPs; a layer's FLOPs scale with its density"
)


def build_plan(compiled: CompiledRecipe) -> dict[str, Any]:
    """Everything `acdc compile` decided, as plain data (plan.json)."""
    recipe, sparsity = compiled.recipe, compiled.recipe.sparsity
    groups = compiled.mask_groups(sparsity.target) if sparsity else []
    total = sum(p.numel for p in compiled.params)
    pruned = sum(g.prune for g in groups)
    multipliers = scheduled_multipliers(compiled)
    rules = sparsity.rules if sparsity else ()
    return {
        "version": PLAN_VERSION,
        "recipe": {"name": recipe.name, "hash": compiled.recipe_hash},
        "tracer": {
            "traced": compiled.traced,
            "error": compiled.trace_error,
            "dual_graph": compiled.dual_graph,
            "unwrapped": list(compiled.unwrapped),
        },
        "example_input_shapes": [list(s) for s in compiled.example_shapes],
        "sparsity": None
        if sparsity is None
        else {"target": sparsity.target, "scope": sparsity.scope, "pattern": sparsity.pattern},
        "params": [_param(p, rules) for p in compiled.params],
        "dense": [_param(p, rules) for p in compiled.dense],
        "mask_groups": [
            {
                "params": [compiled.params[i].name for i in g.indices],
                "prune": g.prune,
                "pattern": g.pattern,
            }
            for g in groups
        ],
        "timeline": {
            "unit": compiled.timeline.unit,
            "length": compiled.timeline.length,
            "sparse_units": compiled.timeline.sparse_units,
            "phases": [dataclasses.asdict(p) for p in compiled.timeline.phases],
        },
        "totals": {
            "prunable_params": len(compiled.params),
            "prunable_weights": total,
            "pruned_at_target": pruned,
            "sparsity_at_target": pruned / total if total else 0.0,
            "dense_forward_flops": compiled.dense_forward_flops,
        },
        "flops": {
            "counted": FLOPS_COUNTED,
            "assumption": GLOBAL_ASSUMPTION if sparsity and sparsity.scope == "global" else None,
            "training_multiplier": multipliers.training,
            "inference_multiplier": multipliers.inference,
            "not_pruned": {
                name: value
                for name, value in compiled.weight_flops.items()
                if name not in {p.name for p in compiled.params}
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
        return f"# {type(module).__name__}: traced by torch.fx\n{module.code}"
    return (
        f"# not traced by torch.fx: {compiled.trace_error}\n"
        "# the original module runs unchanged; its structure:\n"
        + "\n".join(f"# {line}" for line in repr(module).splitlines())
        + "\n"
    )


def write_build(compiled: CompiledRecipe, folder: str | Path, recipe_text: str) -> list[Path]:
    """Write recipe.yaml, plan.json and module.py into `folder`; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "recipe.yaml": recipe_text,
        "plan.json": json.dumps(compiled.plan(), indent=2) + "\n",
        "module.py": module_code(compiled),
    }
    written = []
    for name, text in files.items():
        write_text_atomic(folder / name, text)
        written.append(folder / name)
    return written


def _param(param, rules) -> dict[str, Any]:
    return {
        "name": param.name,
        "layer": param.layer,
        "op": param.op,
        "shape": list(param.shape),
        "numel": param.numel,
        "rule": param.rule,
        "rule_match": rules[param.rule].match if param.rule is not None else None,
        "target": param.target,
        "pattern": param.pattern,
        "scope": param.scope,
        "dense_flops": param.dense_flops,
    }
