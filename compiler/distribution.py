"""Pass 4: per-layer targets and exact integer prune counts (`mask_groups`).

Which group a prunable parameter falls in:
- the *pool*: unstructured, and no rule target. Scope ``global`` makes it one group with
  ``round(overall * pool size)`` entries pruned (one magnitude threshold); ``lamp`` the same
  group ranked by layer-adaptive scores, every layer keeping at least one weight. With
  ``min_density`` each pool layer keeps at least ``ceil(min_density * size)``; with
  ``min_per_channel`` each of its output channels keeps its largest weights. ``uniform`` and
  ``erk`` give every pool parameter its own group; the counts come from per-layer quotas
  (``overall`` everywhere, or RigL's Erdos-Renyi-Kernel densities) by largest-remainder
  apportionment, so they sum exactly to ``round(overall * pool size)``.
- a rule target: its own group at ``rule.target * overall / sparsity.target`` (a gradual ramp
  ramps it too), capped so at least one entry survives.
- N:M: its own group, with the count the pattern implies.
- block (no rule target): its own group at ``overall``, in whole blocks.
Parameters kept dense by a rule are not in the list at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from math import prod

from acdc_recipe.compiler.errors import CompileError
from acdc_recipe.compiler.patterns import prune_count
from acdc_recipe.compiler.plan import MaskGroup, MaskUpdate, ParamScope, PrunableParam
from acdc_recipe.language.timeline import Timeline


def apportion(quotas: Sequence[float], total: int, caps: Sequence[int]) -> list[int]:
    """Integers near `quotas`, each within [0, cap], summing exactly to `total` (largest remainder)."""
    if not 0 <= total <= sum(caps):
        raise ValueError(f"cannot apportion {total} over capacities summing to {sum(caps)}")
    clipped = [min(max(q, 0.0), c) for q, c in zip(quotas, caps)]
    counts = [math.floor(q) for q in clipped]
    remainders = [q - n for q, n in zip(clipped, counts)]
    order = sorted(range(len(counts)), key=lambda i: (-remainders[i], i))
    rest = total - sum(counts)
    while rest > 0:
        room = [i for i in order if counts[i] < caps[i]]
        for i in room[:rest]:
            counts[i] += 1
        rest = total - sum(counts)
    while rest < 0:
        room = [i for i in reversed(order) if counts[i] > 0]
        for i in room[:-rest]:
            counts[i] -= 1
        rest = total - sum(counts)
    return counts


def erk_densities(shapes: Sequence[tuple[int, ...]], density: float) -> list[float]:
    """Per-layer densities of RigL's Erdos-Renyi-Kernel rule, overall `density` exactly.

    density_l = eps * sum(shape_l) / prod(shape_l); layers that would exceed 1 are set to 1 and
    eps is solved again over the rest, until every density is at most 1.
    """
    sizes = [prod(s) for s in shapes]
    scores = [sum(s) / n for s, n in zip(shapes, sizes)]
    dense: set[int] = set()
    budget = density * sum(sizes)
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        if not free:
            return [1.0] * len(shapes)
        eps = (budget - sum(sizes[i] for i in dense)) / sum(sizes[i] * scores[i] for i in free)
        over = {i for i in free if eps * scores[i] > 1.0}
        if not over:
            return [1.0 if i in dense else eps * scores[i] for i in range(len(shapes))]
        dense |= over


def _floors_error(
    pool: Sequence[int],
    params: Sequence[PrunableParam],
    floors: Sequence[int],
    kept: int,
    overall: float,
) -> CompileError:
    options = [
        name
        for name in ("min_density", "min_per_channel")
        if any(getattr(params[i], name) is not None for i in pool)
    ]
    lamp = ["scope lamp (one weight per layer)"] if params[pool[0]].scope == "lamp" else []
    return CompileError(
        f"at sparsity {overall:g} the pruned layers keep {kept} of their "
        f"{sum(params[i].numel for i in pool)} weights together, fewer than the {sum(floors)} "
        f"reserved by {' and '.join(options + lamp)}; lower "
        + " or ".join([*options, "the target"]),
        ("sparsity", options[0] if options else "target"),
    )


def pool_floors(params: Sequence[PrunableParam]) -> tuple[int, ...]:
    """Entries each pool parameter keeps at least: ``ceil(min_density * size)`` (the decimal
    value as written, so 0.1 of 30 is 3), its channel floors (`channel_floors`), and under
    scope lamp at least 1."""
    floors = []
    for param, channel_floor in zip(params, channel_floors(params), strict=True):
        density = param.min_density
        floor = math.ceil(Fraction(repr(density)) * param.numel) if density is not None else 0
        floor = max(floor, channel_floor * param.channels)
        floors.append(max(floor, 1 if param.scope == "lamp" else 0))
    return tuple(floors)


def channel_floors(params: Sequence[PrunableParam]) -> tuple[int, ...]:
    """Weights each output channel of each parameter keeps at least: `min_per_channel`, at
    most the whole channel."""
    return tuple(
        min(p.min_per_channel or 0, p.numel // p.channels if p.channels else 0) for p in params
    )


def param_scope(pattern: str, rule_target: float | None, recipe_scope: str) -> ParamScope:
    """Unstructured without a rule target: the recipe's scope (the pool); else its own group."""
    return recipe_scope if pattern == "unstructured" and rule_target is None else "layer"  # type: ignore[return-value]


def mask_groups(
    params: Sequence[PrunableParam], overall: float, recipe_target: float
) -> tuple[MaskGroup, ...]:
    """Mask groups with exact prune counts at an overall target `overall` (0 prunes nothing);
    rule targets scale with `overall / recipe_target`, so a gradual ramp ramps them too."""
    overall = max(0.0, overall)
    pool = [i for i, p in enumerate(params) if p.scope != "layer"]
    groups: dict[int, MaskGroup] = {}
    if pool:
        scope = params[pool[0]].scope
        sizes = [params[i].numel for i in pool]
        total = round(overall * sum(sizes))
        guarded = any(params[i].min_density is not None or params[i].min_per_channel for i in pool)
        if scope == "global" and not guarded:
            groups[pool[0]] = MaskGroup(tuple(pool), total, "unstructured")  # the paper's
        elif scope in ("global", "lamp"):
            members = [params[i] for i in pool]
            floors = pool_floors(members)
            if sum(floors) > sum(sizes) - total:
                raise _floors_error(pool, params, floors, sum(sizes) - total, overall)
            score = "lamp" if scope == "lamp" else "magnitude"
            per_channel = channel_floors(members)
            groups[pool[0]] = MaskGroup(
                tuple(pool),
                total,
                "unstructured",
                score,
                floors,
                per_channel if any(per_channel) else (),
            )
        else:
            if scope == "erk":
                densities = erk_densities([params[i].shape for i in pool], 1.0 - overall)
                quotas = [(1.0 - d) * n for d, n in zip(densities, sizes)]
            else:
                quotas = [overall * n for n in sizes]
            for i, count in zip(pool, apportion(quotas, total, sizes)):
                groups[i] = MaskGroup((i,), count, "unstructured")
    scale = overall / recipe_target if recipe_target else 0.0
    for i, param in enumerate(params):
        if param.scope != "layer":
            continue
        own = param.rule_target
        target = min(own * scale, 1.0) if own is not None else overall
        groups[i] = MaskGroup((i,), prune_count(param.pattern, param.numel, target), param.pattern)
    return tuple(groups[i] for i in sorted(groups))


def mask_updates(
    params: Sequence[PrunableParam], timeline: Timeline, recipe_target: float
) -> tuple[tuple[MaskUpdate, ...], ...]:
    """For every phase, its mask computations (aligned with `Phase.mask_updates()`)."""
    cache: dict[float, MaskUpdate] = {}

    def at(target: float) -> MaskUpdate:
        if target not in cache:
            cache[target] = MaskUpdate(target, mask_groups(params, target, recipe_target))
        return cache[target]

    return tuple(
        tuple(at(phase.sparsity_at(position, recipe_target)) for position in phase.mask_updates())
        for phase in timeline.phases
    )


def planned_targets(params: Sequence[PrunableParam], recipe_target: float) -> list[float]:
    """Each parameter's sparsity at the recipe target (pool under global scope: the pool average)."""
    targets = [0.0] * len(params)
    for group in mask_groups(params, recipe_target, recipe_target):
        size = sum(params[i].numel for i in group.indices)
        for i in group.indices:
            targets[i] = group.prune / size if size else 0.0
    return targets
