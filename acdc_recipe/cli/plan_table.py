"""The terminal report of `acdc compile`: per-layer table, totals, schedule, FLOPs, warnings,
from plan.json's data."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def render_plan(plan: dict[str, Any], console: Console) -> None:
    """Print a plan (as `CompiledRecipe.plan()` returns it) for a person to read."""
    tracer = plan["tracer"]
    name = tracer.get("tracer", "torch.fx")
    how = (
        f"traced by {name}"
        if tracer["traced"]
        else "[yellow]not traced[/] (see the warning below): module tree walked"
    )
    if tracer["dual_graph"]:
        how += " (separate train/eval graphs)"
    if tracer["unwrapped"]:
        how += f"; unwrapped {', '.join(tracer['unwrapped'])}"
    console.print(f"[bold]{plan['recipe']['name']}[/]  recipe {plan['recipe']['hash'][:12]}  {how}")
    console.print(_layer_table(plan))
    rules = {
        e["rule"]: e["rule_match"] for e in plan["params"] + plan["dense"] if e["rule"] is not None
    }
    if rules:
        console.print(
            "rules: " + "; ".join(f"{i} = {m}" for i, m in sorted(rules.items())), markup=False
        )
    _print_account(plan, console)
    totals, sparsity = plan["totals"], plan["sparsity"]
    if sparsity:
        console.print(
            f"{totals['prunable_params']} prunable tensors, {totals['prunable_weights']:,} weights; "
            f"at target {sparsity['target']:g} ({sparsity['scope']}, {sparsity['pattern']}): "
            f"{totals['pruned_at_target']:,} pruned = {totals['sparsity_at_target']:.4f}"
        )
    timeline = plan["timeline"]
    console.print(
        f"schedule ({timeline['length']} {timeline['unit']}s, {timeline['sparse_units']} "
        f"sparse): {timeline['compact']}"
    )
    flops = plan["flops"]
    if totals["dense_forward_flops"]:
        console.print(
            f"dense forward {_flops(totals['dense_forward_flops'])}/sample; "
            f"inference x{flops['inference_multiplier']:.4f}, "
            f"training x{flops['training_multiplier']:.4f} of dense"
        )
        console.print(f"[dim]counted: {flops['counted']}[/]")
        if flops["assumption"]:
            console.print(f"[dim]assumed: {flops['assumption']}[/]")
    for note in plan["warnings"]:
        console.print(f"[yellow]warning[/] {note}")


def _layer_table(plan: dict[str, Any]) -> Table:
    """One row per weight; the rule and pattern columns appear only when they say something."""
    entries = plan["params"] + plan["dense"]
    show_rule = any(e["rule"] is not None for e in entries)
    show_pattern = len({e["pattern"] for e in entries}) > 1
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("parameter", no_wrap=True)
    table.add_column("op", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    if show_rule:
        table.add_column("rule", justify="right", no_wrap=True)
    if show_pattern:
        table.add_column("pattern", no_wrap=True)
    table.add_column("target", justify="right", no_wrap=True)
    table.add_column("MFLOPs", justify="right", no_wrap=True)
    for entry in entries:
        shape = "x".join(map(str, entry["shape"]))
        if entry.get("input_axis") == 0 and len(entry["shape"]) == 2:
            shape += " (in x out)"
        row = [entry["name"], entry["op"], shape]
        if show_rule:
            row.append("-" if entry["rule"] is None else str(entry["rule"]))
        if show_pattern:
            row.append(entry["pattern"])
        row.append("dense" if entry["scope"] == "dense" else f"{entry['target']:.4f}")
        row.append(f"{entry['dense_flops'] / 1e6:,.1f}")
        table.add_row(*row)
    return table


def _print_account(plan: dict[str, Any], console: Console) -> None:
    """Where every parameter went: pruned, kept dense, or not pruned and why; tied weights;
    layers found by their module type because the graph does not show them applied."""
    account = plan.get("parameters")
    if account is None:
        return
    line = f"parameters: {account['pruned']} pruned"
    if account["not_pruned"]:
        reasons = [f"{account['reasons'][key]} ({n})" for key, n in account["not_pruned"].items()]
        line += "; not pruned: " + ", ".join(reasons)
    console.print(line, markup=False)
    for group in plan.get("tied", []):
        decision = group["decision"]
        said = {
            "pruned": "pruned, as one tensor",
            "dense": "kept dense by a rule",
            "embedding": "not pruned, an embedding (a rule with include: true would prune it)",
        }.get(decision, f"not pruned ({account['reasons'][decision]})")
        console.print(f"tied: {' = '.join(group['names'])}: {said}", markup=False)
    by_why: dict[str, list[str]] = {}
    for layer in plan.get("found_by_type", []):
        by_why.setdefault(layer["why"], []).append(layer["layer"])
    for why, layers in by_why.items():
        shown = ", ".join(layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
        console.print(
            f"[yellow]found by module type[/] ({why}): {shown}; their FLOPs are counted at the "
            "ops that apply their weights",
        )


def _flops(value: float) -> str:
    for scale, unit in ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
        if value >= scale:
            return f"{value / scale:.3f} {unit}"
    return f"{value:.0f} FLOPs"
