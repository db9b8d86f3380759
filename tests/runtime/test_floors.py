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


def walk(values, prune, floors):
    """The definition: walk all entries by (|value|, tensor, position), skipping tensors that
    have given up all their entries but `floors[k]`, until `prune` are pruned."""
    keys = [
        (int(magnitude_keys(v.reshape(-1)[j])), k, j)
        for k, v in enumerate(values)
        for j in range(v.numel())
    ]
    left = [v.numel() - f for v, f in zip(values, floors)]
    masks = [torch.ones(v.numel(), dtype=v.dtype) for v in values]
    for _, k, j in sorted(keys)[: len(keys)]:
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
