"""Global selection with floors: the global order with exhausted tensors skipped, exact counts,
no emptied layer under LAMP scores, and the paper's global selection untouched without them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acdc_recipe.compiler.plan import MaskGroup
from acdc_recipe.runtime import select_masks
from acdc_recipe.runtime.floors import floored_masks, guarded_masks
from acdc_recipe.runtime.threshold import magnitude_keys, prune_mask_unstructured


def walk(values, prune, floors, protected=None):
    """The definition: walk all entries by (|value|, tensor, position), skipping tensors that
    have given up all their entries but `floors[k]` and the positions in `protected[k]`, until
    `prune` are pruned."""
    protected = protected or [set() for _ in values]
    keys = sorted(
        (int(magnitude_keys(v.reshape(-1)[j])), k, j)
        for k, v in enumerate(values)
        for j in range(v.numel())
        if j not in protected[k]
    )
    left = [v.numel() - max(f, len(p)) for v, f, p in zip(values, floors, protected)]
    masks = [torch.ones(v.numel(), dtype=v.dtype) for v in values]
    for _, k, j in keys:
        if prune == 0:
            break
        if left[k]:
            masks[k][j], left[k], prune = 0, left[k] - 1, prune - 1
    return [m.reshape(v.shape) for m, v in zip(masks, values)]


@st.composite
def floored_problems(draw):
    """1-5 tensors at different scales, many ties, floors, and a feasible prune count."""
    tensors, floors = [], []
    for _ in range(draw(st.integers(1, 5))):
        size = draw(st.integers(1, 30))
        seed = draw(st.integers(0, 2**16))
        levels = torch.randint(0, 5, (size,), generator=torch.Generator().manual_seed(seed))
        scale = draw(st.sampled_from([1e-3, 0.5, 1.0, 8.0]))
        tensors.append((levels.float() - 2.0) * scale)
        floors.append(draw(st.integers(0, size)))
    room = sum(t.numel() - f for t, f in zip(tensors, floors))
    return tensors, draw(st.integers(0, room)), floors


@settings(max_examples=300, deadline=None)
@given(problem=floored_problems())
def test_floored_selection_is_the_global_order_with_exhausted_tensors_skipped(problem):
    tensors, prune, floors = problem
    masks = floored_masks(tensors, prune, floors)
    assert all(torch.equal(a, b) for a, b in zip(masks, walk(tensors, prune, floors)))
    assert sum(int((m == 0).sum()) for m in masks) == prune  # exact count
    assert all(int(m.count_nonzero()) >= f for m, f in zip(masks, floors))


@settings(max_examples=100, deadline=None)
@given(problem=floored_problems())
def test_without_floors_it_is_the_plain_global_selection(problem):
    tensors, prune, _ = problem
    plain = prune_mask_unstructured(tensors, prune)
    assert all(
        torch.equal(a, b) for a, b in zip(floored_masks(tensors, prune, [0] * len(tensors)), plain)
    )


def test_an_infeasible_floor_is_refused():
    with pytest.raises(ValueError, match="keeping at least"):
        floored_masks([torch.ones(4), torch.ones(4)], 7, [1, 1])


def collapsing_layers(seed: int = 0) -> list[torch.Tensor]:
    """A large layer and two small ones 1000x smaller: global magnitude empties the small."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(64, 64, generator=generator),
        torch.randn(16, 8, generator=generator) * 1e-3,
        torch.randn(10, 16, generator=generator) * 1e-3,
    ]


@pytest.mark.parametrize("target", [0.5, 0.9, 0.98, 0.999])
def test_lamp_empties_no_layer_where_global_magnitude_does(target):
    weights = collapsing_layers()
    total = sum(w.numel() for w in weights)
    prune = round(target * total)
    plain = select_masks(weights, [MaskGroup((0, 1, 2), prune, "unstructured")])
    lamp = MaskGroup((0, 1, 2), prune, "unstructured", "lamp", (1, 1, 1))
    masks = select_masks(weights, [lamp])
    assert sum(int((m == 0).sum()) for m in masks) == prune
    assert all(m.count_nonzero() > 0 for m in masks)
    assert [m.dtype for m in masks] == [w.dtype for w in weights]
    if target >= 0.9:
        assert any(m.count_nonzero() == 0 for m in plain)


def test_min_density_keeps_its_fraction_of_every_layer_and_the_total_exact():
    weights = collapsing_layers(1)
    prune = round(0.9 * sum(w.numel() for w in weights))
    floors = (205, 7, 8)  # min_density 0.05: ceil(0.05 x 4096, 128, 160)
    masks = guarded_masks(weights, MaskGroup((0, 1, 2), prune, "unstructured", floors=floors))
    assert [int(m.count_nonzero()) for m in masks][1:] == [7, 8]  # the floors bind
    assert sum(int((m == 0).sum()) for m in masks) == prune


def test_lamp_ranks_within_a_layer_by_magnitude():
    weights = collapsing_layers(2)
    prune = round(0.8 * sum(w.numel() for w in weights))
    masks = select_masks(weights, [MaskGroup((0, 1, 2), prune, "unstructured", "lamp", (1, 1, 1))])
    for weight, mask in zip(weights, masks):
        kept, pruned = weight[mask == 1].abs(), weight[mask == 0].abs()
        assert pruned.numel() == 0 or kept.min() >= pruned.max()


def protected_positions(value: torch.Tensor, keep: int, input_axis: int) -> set[int]:
    """The definition: the `keep` largest |v| of every output channel (ties: the earliest in the
    channel's own order), as flat positions of `value`."""
    output_axis = 1 if input_axis == 0 else 0
    positions = torch.arange(value.numel()).reshape(value.shape).movedim(output_axis, 0)
    magnitudes = value.abs().movedim(output_axis, 0)
    chosen = set()
    for channel, where in zip(magnitudes, positions):
        ranked = sorted(zip((-channel).reshape(-1).tolist(), where.reshape(-1).tolist()))
        order = sorted(range(len(ranked)), key=lambda j: (ranked[j][0], j))
        chosen |= {ranked[j][1] for j in order[:keep]}
    return chosen


@st.composite
def channel_problems(draw):
    """1-4 matrices (Linear or Conv1D layout) at different scales with ties, a channel floor
    each, tensor floors, and a feasible prune count."""
    tensors, axes, keeps, floors = [], [], [], []
    for _ in range(draw(st.integers(1, 4))):
        rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        seed = draw(st.integers(0, 2**16))
        levels = torch.randint(0, 4, (rows, cols), generator=torch.Generator().manual_seed(seed))
        tensors.append((levels.float() - 1.5) * draw(st.sampled_from([1e-3, 1.0, 8.0])))
        axes.append(draw(st.sampled_from([0, 1])))
        channel = cols if axes[-1] == 1 else rows
        keeps.append(draw(st.integers(0, channel)))
        floors.append(draw(st.integers(0, rows * cols)))
    protected = [protected_positions(t, k, a) for t, k, a in zip(tensors, keeps, axes, strict=True)]
    floors = [max(f, len(p)) for f, p in zip(floors, protected, strict=True)]
    room = sum(t.numel() - f for t, f in zip(tensors, floors, strict=True))
    return tensors, axes, keeps, floors, draw(st.integers(0, room)), protected


@settings(max_examples=300, deadline=None)
@given(problem=channel_problems())
def test_channel_floors_keep_each_channels_largest_and_the_rest_in_global_order(problem):
    tensors, axes, keeps, floors, prune, protected = problem
    group = MaskGroup(
        tuple(range(len(tensors))), prune, "unstructured", "magnitude", tuple(floors), tuple(keeps)
    )
    masks = select_masks(tensors, [group], axes)
    expected = walk(tensors, prune, floors, protected)
    assert all(torch.equal(a, b) for a, b in zip(masks, expected))
    assert sum(int((m == 0).sum()) for m in masks) == prune  # exact count
    for mask, keep, axis in zip(masks, keeps, axes):
        per_channel = mask.sum(dim=0 if axis == 0 else 1)
        assert bool((per_channel >= keep).all())


@pytest.mark.parametrize("keep", [1, 3])
def test_lamp_with_channel_floors_empties_no_channel(keep):
    generator = torch.Generator().manual_seed(3)
    row_scales = torch.logspace(0, -3, 16).unsqueeze(1)  # filters a batch norm rescales
    weights = [torch.randn(16, 72, generator=generator) * row_scales for _ in range(3)]
    prune = round(0.9 * sum(w.numel() for w in weights))
    floors = tuple(keep * w.shape[0] for w in weights)
    group = MaskGroup((0, 1, 2), prune, "unstructured", "lamp", floors, (keep,) * 3)
    masks = select_masks(weights, [group])
    assert sum(int((m == 0).sum()) for m in masks) == prune
    assert all(bool((m.sum(1) >= keep).all()) for m in masks)
    lamp_only = select_masks(
        weights, [MaskGroup((0, 1, 2), prune, "unstructured", "lamp", (1,) * 3)]
    )
    assert any(bool((m.sum(1) < keep).any()) for m in lamp_only)  # the floor is what keeps them


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_weight_is_refused_not_protected(bad):
    from acdc_recipe.runtime.threshold import NonFiniteWeightError

    weights = [torch.randn(4, 3), torch.randn(2, 3)]
    weights[1][0, 0] = bad  # the largest of its channel: it would be the one protected
    group = MaskGroup((0, 1), 12, "unstructured", "magnitude", (4, 2), (1, 1))
    with pytest.raises(NonFiniteWeightError):
        select_masks(weights, [group])
