"""FSDP2-sharded prunable parameters on two gloo ranks: the masks are a single process's.

One spawn of two ranks runs every scenario and saves what it saw; the tests read it. Layers
have row counts the ranks split unevenly (7 rows: 4 + 3), and one has a single row, so rank 1
holds an empty shard of it. The first mask is chosen from weights rounded to multiples of 1/8,
so many entries tie at the threshold.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard

from acdc_recipe.compiler import MaskGroup
from acdc_recipe.compiler import compile as compile_recipe
from acdc_recipe.language.schema import Recipe
from acdc_recipe.runtime import (
    MaskMismatchError,
    MasksComputed,
    RuntimeStateError,
    attach,
    select_masks,
)
from acdc_recipe.runtime.mask_sync import verify_sharded_masks
from acdc_recipe.runtime.sharding import Sharding, ShardingError, rebind, sharded_like
from acdc_recipe.runtime.threshold import unstructured_masks

pytestmark = pytest.mark.distributed  # every test reads what two gloo ranks saw

PHASES = [{"sparse": 3}, {"dense": 2}, {"gradual": 4, "initial": 0.3, "update": 2}, {"sparse": 2}]
SCENARIOS = {
    "global": {"target": 0.7, "scope": "global"},
    "uniform": {"target": 0.6, "scope": "uniform"},
    "erk": {"target": 0.8, "scope": "erk"},
    "patterns": {
        "target": 0.5,
        "rules": [{"match": "3", "pattern": "2:4"}, {"match": "5", "pattern": "block:1x7"}],
    },
    "min_density": {"target": 0.7, "scope": "global", "min_density": 0.28},
    "min_per_channel": {"target": 0.9, "scope": "global", "min_per_channel": 2},
}


def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(80, 7), nn.ReLU(),
        nn.Linear(7, 3), nn.ReLU(), nn.Linear(3, 1),
    )  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.copy_((p * 8).round() / 8)  # ties at the first threshold
    return net


def shard(net: nn.Module, placement=None) -> None:
    for layer in net:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, shard_placement_fn=placement)
    fully_shard(net, shard_placement_fn=placement)


def run_scenario(sparsity: dict) -> dict:
    net = model()
    recipe = Recipe.model_validate(
        {"name": "t", "sparsity": sparsity, "schedule": {"unit": "step", "phases": PHASES}}
    )
    compiled = compile_recipe(net, recipe, example_inputs=torch.zeros(2, 1, 6, 6))
    shard(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    runtime = attach(compiled, optimizer)
    events = []
    runtime.add_listener(events.append)
    params = [net.get_parameter(name) for name in compiled.plan.names]
    generator = torch.Generator().manual_seed(dist.get_rank())
    seen = {"computations": 0, "equal": 0, "sparse_steps": 0, "exact": 0, "split_ties": 0}
    update = None
    for step in range(runtime.timeline.length):
        index = runtime.timeline.phase_index_at(step)
        due = runtime.timeline.phases[index].mask_updates()
        if step in due:
            before = [p.full_tensor() for p in params]
        runtime.begin_step()
        if step in due:
            update = compiled.plan.updates[index][due.index(step)]
            expected = select_masks(before, update.groups)
            full = [sharded_like(m, p).full_tensor() for m, p in zip(runtime.masks, params)]
            seen["computations"] += 1
            seen["equal"] += all(torch.equal(a, b) for a, b in zip(full, expected))
            seen["split_ties"] += split_ties(before, full, update.groups)
            seen["floors_held"] = seen.get("floors_held", 0) + floors_held(full, update.groups)
            seen["channels_kept"] = seen.get("channels_kept", True) and channels_kept(
                full, update.groups
            )
            empty = {n: int((m.reshape(m.shape[0], -1).sum(1) == 0).sum()) for n, m in zip(
                compiled.plan.names, full)}  # fmt: skip
            reported = [e for e in events if isinstance(e, MasksComputed)][-1].emptied_channels
            seen["channels_counted"] = seen.get("channels_counted", 0) + (
                reported == {n: k for n, k in empty.items() if k}
            )
        x = torch.randn(4, 1, 6, 6, generator=generator)
        optimizer.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()
        if runtime.masks is not None:
            seen["sparse_steps"] += 1
            seen["exact"] += exact_after_step(runtime, params, optimizer, update)
    runtime.close()
    return seen


def split_ties(weights, masks, groups) -> int:
    """Unstructured groups whose threshold value is both pruned and kept (a positional
    tie-break decided which)."""
    found = 0
    for group in (g for g in groups if g.pattern == "unstructured" and g.prune):
        w = torch.cat([weights[i].abs().reshape(-1) for i in group.indices])
        m = torch.cat([masks[i].reshape(-1) for i in group.indices])
        at = w == w[m == 0].max()
        found += bool((at & (m == 0)).any() and (at & (m == 1)).any())
    return found


def floors_held(masks, groups) -> int:
    """Groups with floors where some tensor keeps exactly its floor (the floor decided)."""
    return sum(
        any(int(masks[i].count_nonzero()) == f for i, f in zip(g.indices, g.floors))
        for g in groups
        if g.floors
    )


def channels_kept(masks, groups) -> bool:
    """Every output channel (row) keeps at least its group's channel floor."""
    return all(
        bool((masks[i].reshape(masks[i].shape[0], -1).sum(1) >= floor).all())
        for g in groups
        for i, floor in zip(g.indices, g.channel_floors)
    )


def exact_after_step(runtime, params, optimizer, update) -> bool:
    """Pruned weights and momentum exactly 0, and each group prunes exactly its count."""
    full = [sharded_like(m, p).full_tensor() for m, p in zip(runtime.masks, params)]
    weights = [p.full_tensor() for p in params]
    momenta = [optimizer.state[p]["momentum_buffer"].full_tensor() for p in params]
    zero = all(
        bool((w[m == 0] == 0).all() and (b[m == 0] == 0).all())
        for w, b, m in zip(weights, momenta, full)
    )
    counts = all(
        sum(int((full[i] == 0).sum()) for i in g.indices) == g.prune for g in update.groups
    )
    return zero and counts


def tie_break_cases(cases: int) -> tuple[int, int]:
    """(cases, agreements) of the sharded selection with one process's, over random splits."""
    rng = random.Random(7)  # the same cases on both ranks
    world, rank = dist.get_world_size(), dist.get_rank()
    agree = 0
    for _ in range(cases):
        tensors = []
        for _ in range(rng.randint(1, 4)):
            rows, cols = rng.randint(1, 9), rng.randint(1, 5)
            levels = rng.choice([1, 2, 3, 50])  # few levels: heavy ties
            values = [rng.randrange(levels) / 4 * rng.choice([-1, 1]) for _ in range(rows * cols)]
            tensors.append(torch.tensor(values).reshape(rows, cols))
        total = sum(t.numel() for t in tensors)
        prune = rng.randint(0, total)
        local = []
        for t in tensors:  # an arbitrary split of the rows, in rank order (empty blocks too)
            cuts = sorted(rng.randint(0, t.shape[0]) for _ in range(world - 1))
            edges = [0, *cuts, t.shape[0]]
            local.append(t[edges[rank] : edges[rank + 1]])
        shapes = tuple(tuple(t.shape) for t in tensors)
        sharding = Sharding(None, rank, world, shapes, (0,) * len(tensors))
        masks, threshold = unstructured_masks(local, prune, sharding)
        expected, expected_threshold = unstructured_masks(tensors, prune)
        whole = [torch.zeros(0)] * len(tensors)
        for i, mask in enumerate(masks):
            gathered = [None] * world
            dist.all_gather_object(gathered, mask)
            whole[i] = torch.cat(gathered)
        same_threshold = (threshold is None and expected_threshold is None) or torch.equal(
            threshold, expected_threshold
        )
        agree += same_threshold and all(torch.equal(a, b) for a, b in zip(whole, expected))
    return cases, agree


def refused_layout(sparsity: dict, placement) -> str:
    """What attaching says when every weight is sharded on its input channels."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2))
    recipe = Recipe.model_validate(
        {"name": "t", "sparsity": sparsity, "schedule": {"unit": "step", "phases": PHASES}}
    )
    compiled = compile_recipe(net, recipe, example_inputs=torch.zeros(2, 12))
    shard(net, placement)
    try:
        attach(compiled, torch.optim.SGD(net.parameters(), lr=0.1))
    except ShardingError as error:
        return str(error)
    return "attached"


class OwnWeight(nn.Module):
    """A weight the root owns and uses functionally: the traced module keeps its own copy."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.weight = nn.Parameter(torch.randn(4, 6))

    def forward(self, x):
        return nn.functional.linear(x, self.weight)


def stale_then_rebound() -> tuple[str, bool]:
    """What attach says when fully_shard replaced a weight the compiled module does not share,
    and whether attaching `rebind(compiled, model)` then masks the sharded weight."""
    net = OwnWeight()
    recipe = Recipe.model_validate(
        {"name": "t", "sparsity": {"target": 0.5, "rules": [{"match": "weight", "include": True}]},
         "schedule": {"unit": "step", "phases": [{"sparse": 2}]}}
    )  # fmt: skip
    compiled = compile_recipe(net, recipe, example_inputs=torch.zeros(2, 6))
    fully_shard(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    try:
        attach(compiled, optimizer)
        message = "attached"
    except ShardingError as error:
        message = str(error)
    runtime = attach(rebind(compiled, net), optimizer)
    runtime.begin_step()
    pruned = int((net.weight.full_tensor() == 0).sum())
    runtime.close()
    return message, pruned == 12


def sparse_kernels_refused() -> str:
    """What attaching with sparse kernels says of FSDP2 shards."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2))
    recipe = Recipe.model_validate(
        {"name": "t", "sparsity": {"target": 0.5}, "schedule": {"unit": "step", "phases": PHASES}}
    )
    compiled = compile_recipe(net, recipe, example_inputs=torch.zeros(2, 12))
    shard(net, lambda p: Shard(0))
    try:
        attach(compiled, torch.optim.SGD(net.parameters(), lr=0.1), sparse_kernels="auto")
    except RuntimeStateError as error:
        return str(error)
    return "attached"


def exported_shards(folder: str) -> str:
    """What exporting a sharded model in memory says."""
    from acdc_recipe.exporter import ExportError, export

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2))
    recipe = Recipe.model_validate(
        {"name": "t", "sparsity": {"target": 0.5}, "schedule": {"unit": "step", "phases": PHASES}}
    )
    compiled = compile_recipe(net, recipe, example_inputs=torch.zeros(2, 12))
    shard(net)
    runtime = attach(compiled, torch.optim.SGD(net.parameters(), lr=0.1))
    try:
        export(net, f"{folder}/export-{dist.get_rank()}", runtime=runtime)
    except ExportError as error:
        return str(error)
    return "exported"


def mismatches() -> list[str]:
    """What the cross-rank check says of shards that prune one entry too few, and of ranks
    that chose different thresholds."""
    rank = dist.get_rank()
    sharding = Sharding(None, rank, 2, ((2, 2),), (0,))
    group = MaskGroup((0,), 2, "unstructured")
    cases = [
        (torch.tensor([[1.0, 0.0]]) if rank == 0 else torch.ones(1, 2), torch.tensor(0.5)),
        (torch.tensor([[1.0, 0.0]]), torch.tensor(0.5 + rank)),
    ]
    seen = []
    for mask, threshold in cases:
        try:
            verify_sharded_masks([mask], ["fc.weight"], [group], [threshold], sharding)
            seen.append("no error")
        except MaskMismatchError as error:
            seen.append(str(error))
    return seen


def _rank(rank: int, folder: str) -> dict:
    results = {name: run_scenario(sparsity) for name, sparsity in SCENARIOS.items()}
    results["tie_break"] = tie_break_cases(120)
    by_columns = lambda p: Shard(1) if p.dim() > 1 else Shard(0)  # noqa: E731
    results["nm_split"] = refused_layout(
        {"target": 0.5, "pattern": "2:4"}, by_columns
    )  # Linear(12, 4): 12 input channels split 6 + 6
    results["unstructured_split"] = refused_layout({"target": 0.5}, by_columns)
    results["lamp"] = refused_layout({"target": 0.5, "scope": "lamp"}, None)
    results["mismatches"] = mismatches()
    results["stale"] = stale_then_rebound()
    results["kernels"] = sparse_kernels_refused()
    results["export"] = exported_shards(folder)
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, two_ranks):
    return two_ranks(_rank, str(tmp_path_factory.mktemp("fsdp")))


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["global", "uniform", "erk", "patterns"])
def test_every_mask_computation_equals_a_single_process_from_the_same_weights(ranks, scenario):
    for seen in (rank[scenario] for rank in ranks):
        assert seen["computations"] == 4  # sparse start, two gradual updates, the last start
        assert seen["equal"] == seen["computations"]
        assert seen["split_ties"] > 0


@pytest.mark.parametrize("scenario", ["global", "uniform", "erk", "patterns"])
def test_pruned_weights_and_momentum_are_zero_and_counts_exact_after_every_sparse_step(
    ranks, scenario
):
    for seen in (rank[scenario] for rank in ranks):
        assert seen["sparse_steps"] == 9  # 3 sparse + 4 gradual + 2 sparse
        assert seen["exact"] == seen["sparse_steps"]


def test_min_density_floors_are_exact_over_the_shards(ranks):
    for seen in (rank["min_density"] for rank in ranks):
        assert seen["computations"] == 4 and seen["equal"] == 4
        assert seen["floors_held"] > 0  # a floor decided some layer's count
        assert seen["sparse_steps"] == seen["exact"] == 9


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_emptied_channels_are_counted_over_the_shards(ranks, scenario):
    for seen in (rank[scenario] for rank in ranks):
        assert seen["channels_counted"] == seen["computations"]


def test_channel_floors_are_exact_over_the_shards(ranks):
    for seen in (rank["min_per_channel"] for rank in ranks):
        assert seen["computations"] == 4 and seen["equal"] == 4
        assert seen["channels_kept"]
        assert seen["sparse_steps"] == seen["exact"] == 9


def test_lamp_on_shards_is_refused_at_attach_with_the_way_out(ranks):
    for rank in ranks:
        assert "scope: lamp" in rank["lamp"] and "min_density" in rank["lamp"]


def test_distributed_tie_break_matches_one_process_for_random_splits(ranks):
    for rank in ranks:
        cases, agree = rank["tie_break"]
        assert agree == cases == 120


def test_a_split_through_n_m_runs_is_refused_naming_the_layer(ranks):
    message = ranks[0]["nm_split"]
    assert "'0.weight'" in message and "2:4" in message and "[6, 6]" in message


def test_unstructured_masks_need_dim_0_shards(ranks):
    message = ranks[0]["unstructured_split"]
    assert "'0.weight'" in message and "dim 1" in message and "dim 0" in message


def test_ranks_whose_shards_do_not_make_one_mask_both_raise_naming_the_layer(ranks):
    for rank in ranks:
        count, threshold = rank["mismatches"]
        assert "fc.weight" in count and "prune 1 entries together where the plan prunes 2" in count
        assert "fc.weight" in threshold and "thresholds differ" in threshold


def test_a_sharded_weight_the_compiled_module_does_not_share_is_named_then_rebound(ranks):
    message, masked = ranks[0]["stale"]
    assert "'weight'" in message and "rebind(compiled, model)" in message
    assert masked


def test_sparse_kernels_on_shards_are_refused_before_anything_is_installed(ranks):
    for rank in ranks:
        assert "FSDP2 shards" in rank["kernels"] and "sparse_kernels='off'" in rank["kernels"]


def test_a_sharded_model_in_memory_is_refused_by_export_with_the_way_out(ranks):
    for rank in ranks:
        assert "sharded with FSDP2" in rank["export"] and "run directory" in rank["export"]
