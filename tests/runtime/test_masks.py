"""select_masks for unstructured, N:M and block groups; sparsity and mask-change fractions."""

from __future__ import annotations

from math import prod

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acdc_recipe.compiler.plan import MaskGroup
from acdc_recipe.runtime.masks import (
    mask_change_fraction,
    mask_sparsity,
    select_masks,
)


def zeros_in(mask):
    return int(mask.numel() - mask.count_nonzero())


def runs_along_input_axis(tensor, m):
    """[out, in, *k] -> rows of m consecutive input channels at fixed (out, *k)."""
    return tensor.movedim(1, -1).reshape(-1, m)


def tied_weights(shape, seed):
    """Magnitudes drawn from four levels with random signs: many ties inside runs and blocks."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.0, 0.5, 1.0, 2.0])[torch.randint(4, shape, generator=generator)]
    signs = torch.randint(2, shape, generator=generator) * 2 - 1
    return levels * signs


def test_groups_align_masks_with_tensors_and_keep_dtype():
    generator = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(8, 4, generator=generator),
        torch.randn(6, 8, 3, 3, generator=generator),
        torch.randn(5, 7, generator=generator),
        torch.randn(4, 8, generator=generator),
    ]
    groups = [
        MaskGroup((0, 2), 40, "unstructured"),
        MaskGroup((1,), 6 * 8 * 9 // 2, "2:4"),
        MaskGroup((3,), 16, "block:2x4"),
    ]
    masks = select_masks(tensors, groups)
    assert [m.shape for m in masks] == [t.shape for t in tensors]
    assert [m.dtype for m in masks] == [t.dtype for t in tensors]
    assert zeros_in(masks[0]) + zeros_in(masks[2]) == 40
    assert zeros_in(masks[1]) == 216 and zeros_in(masks[3]) == 16
    pool = torch.cat([tensors[0].reshape(-1), tensors[2].reshape(-1)]).abs()
    kept = torch.cat([masks[0].reshape(-1), masks[2].reshape(-1)]) != 0
    assert pool[~kept].max() <= pool[kept].min()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masks_follow_the_weight_dtype(dtype):
    tensors = [torch.randn(4, 8).to(dtype), torch.randn(4, 8).to(dtype)]
    groups = [MaskGroup((0,), 16, "2:4"), MaskGroup((1,), 8, "block:1x4")]
    assert {m.dtype for m in select_masks(tensors, groups)} == {dtype}


@settings(max_examples=60, deadline=None)
@given(
    shape=st.sampled_from([(8, 16), (3, 8), (4, 8, 3, 3), (2, 4, 1, 5), (6, 12, 2)]),
    n_m=st.sampled_from([(2, 4), (1, 4), (3, 4), (1, 2), (2, 8)]),
    seed=st.integers(0, 2**16),
    tied=st.booleans(),
)
def test_n_m_keeps_the_n_largest_of_every_m_input_channels(shape, n_m, seed, tied):
    n, m = n_m
    if shape[1] % m:
        return
    generator = torch.Generator().manual_seed(seed)
    weight = tied_weights(shape, seed) if tied else torch.randn(shape, generator=generator)
    prune = weight.numel() // m * (m - n)
    mask = select_masks([weight], [MaskGroup((0,), prune, f"{n}:{m}")])[0]
    runs, kept = runs_along_input_axis(weight.abs(), m), runs_along_input_axis(mask, m) != 0
    assert (kept.sum(dim=1) == n).all()
    smallest_kept = torch.where(kept, runs, torch.inf).min(dim=1).values
    largest_pruned = torch.where(kept, -torch.inf, runs).max(dim=1).values
    assert (largest_pruned <= smallest_kept).all()
    # among ties, the earliest input channels are pruned
    order = runs.argsort(dim=1, stable=True)[:, : m - n]
    assert not kept.gather(1, order).any()


def test_n_m_ties_prune_the_first_channels():
    weight = torch.ones(2, 8)
    mask = select_masks([weight], [MaskGroup((0,), 8, "2:4")])[0]
    assert mask.tolist() == [[0, 0, 1, 1, 0, 0, 1, 1]] * 2


def test_n_m_runs_go_along_input_channels_of_a_conv():
    """A conv's runs of 4 are its 4 input channels at one (out, kh, kw), not 4 memory neighbours."""
    weight = torch.zeros(1, 4, 1, 2)
    weight[0, :, 0, 0] = torch.tensor([4.0, 1.0, 3.0, 2.0])
    weight[0, :, 0, 1] = torch.tensor([-1.0, 2.0, -3.0, 4.0])
    mask = select_masks([weight], [MaskGroup((0,), 4, "2:4")])[0]
    assert mask[0, :, 0, 0].tolist() == [1, 0, 1, 0]
    assert mask[0, :, 0, 1].tolist() == [0, 0, 1, 1]


def test_n_m_rejects_a_wrong_count_and_accepts_zero():
    weight = torch.randn(4, 8)
    assert bool((select_masks([weight], [MaskGroup((0,), 0, "2:4")])[0] == 1).all())
    with pytest.raises(ValueError, match="2:4 prunes exactly 16 entries here, not 15"):
        select_masks([weight], [MaskGroup((0,), 15, "2:4")])
    with pytest.raises(ValueError, match="not .*divisible by 4|divisible by 4"):
        select_masks([torch.randn(4, 6)], [MaskGroup((0,), 12, "2:4")])


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(
    shape=st.sampled_from([(8, 16), (4, 2, 3, 3), (6, 4), (2, 8, 1, 1)]),
    block=st.sampled_from([(1, 4), (2, 2), (2, 1), (1, 2)]),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    tied=st.booleans(),
)
def test_block_prunes_whole_lowest_norm_blocks(shape, block, fraction, seed, tied):
    rows, cols = block
    out, inner = shape[0], prod(shape[1:])
    if out % rows or inner % cols:
        return
    generator = torch.Generator().manual_seed(seed)
    weight = tied_weights(shape, seed) if tied else torch.randn(shape, generator=generator)
    blocks = weight.numel() // (rows * cols)
    pruned_blocks = round(fraction * blocks)
    group = MaskGroup((0,), pruned_blocks * rows * cols, f"block:{rows}x{cols}")
    mask = select_masks([weight], [group])[0]
    grid = mask.reshape(out // rows, rows, inner // cols, cols)
    per_block = grid.sum(dim=(1, 3))
    assert bool(((per_block == 0) | (per_block == rows * cols)).all())  # whole blocks only
    assert int((per_block == 0).sum()) == pruned_blocks
    scores = weight.abs().reshape(out // rows, rows, inner // cols, cols).sum(dim=(1, 3))
    expected = scores.reshape(-1).double().argsort(stable=True)[:pruned_blocks]
    assert set((per_block.reshape(-1) == 0).nonzero().flatten().tolist()) == set(expected.tolist())


def test_block_rejects_partial_blocks():
    with pytest.raises(ValueError, match="not a multiple of 4"):
        select_masks([torch.randn(4, 8)], [MaskGroup((0,), 6, "block:1x4")])
    with pytest.raises(ValueError, match="not tiled by 3x4"):
        select_masks([torch.randn(4, 8)], [MaskGroup((0,), 12, "block:3x4")])


def test_every_tensor_in_exactly_one_group():
    tensors = [torch.randn(4), torch.randn(4)]
    with pytest.raises(ValueError, match=r"tensors \[1\] belong to no mask group"):
        select_masks(tensors, [MaskGroup((0,), 1, "unstructured")])
    with pytest.raises(ValueError, match=r"tensors \[0\] appear in more than one"):
        select_masks(tensors, [MaskGroup((0, 1), 1, "unstructured"), MaskGroup((0,), 1, "2:4")])
    with pytest.raises(ValueError, match="refers to tensor 2, but there are 2"):
        select_masks(tensors, [MaskGroup((0, 1, 2), 1, "unstructured")])
    with pytest.raises(ValueError, match=r"tensors \[0\] .*cannot prune 5 of 4"):
        select_masks(
            tensors, [MaskGroup((0,), 5, "unstructured"), MaskGroup((1,), 0, "unstructured")]
        )


def test_mask_sparsity_on_a_known_example():
    masks = [torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([[0, 0], [0, 1]], dtype=torch.bool)]
    overall, per_tensor = mask_sparsity(masks)
    assert overall == 5 / 8
    assert per_tensor == [0.5, 0.75]
    assert mask_sparsity([]) == (0.0, [])


def test_mask_change_fraction_on_a_known_example():
    old = [torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([True, False])]
    new = [torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.bfloat16), torch.tensor([True, False])]
    overall, per_tensor = mask_change_fraction(old, new)
    assert overall == 2 / 6
    assert per_tensor == [0.5, 0.0]
    assert mask_change_fraction(new, new) == (0.0, [0.0, 0.0])
    with pytest.raises(ValueError, match="mask 1 changed shape"):
        mask_change_fraction(old, [new[0], torch.ones(3)])


@settings(max_examples=30, deadline=None)
@given(
    pattern=st.sampled_from(["2:4", "1:4", "block:2x4", "block:4x2"]),
    seed=st.integers(0, 2**16),
)
def test_a_weight_stored_input_major_gets_the_transposed_mask(pattern, seed):
    """A Conv1D-style (in, out) weight with input axis 0 is masked exactly as the same weight
    stored (out, in) with input axis 1: N:M runs and blocks follow the layer, not the storage."""
    out_major = tied_weights((8, 16), seed)
    in_major = out_major.t().contiguous()
    size = out_major.numel()
    prune = size // 2 if pattern == "2:4" else 3 * size // 4 if pattern == "1:4" else 8 * 4
    (group,) = [MaskGroup((0,), prune, pattern)]
    (expected,) = select_masks([out_major], [group], [1])
    (mask,) = select_masks([in_major], [group], [0])
    assert mask.is_contiguous() and mask.shape == in_major.shape
    assert torch.equal(mask, expected.t())
    assert zeros_in(mask) == prune


def test_emptied_channels_are_rows_columns_of_a_conv1d_or_a_whole_1d_mask():
    from acdc_recipe.runtime.masks import emptied_channels

    mask = torch.tensor([[1.0, 0, 0], [0, 0, 0], [1, 0, 1]])
    conv = torch.zeros(4, 2, 3, 3)
    conv[0, 1, 2, 2] = 1
    cases = [mask, mask, torch.zeros(0, 3), torch.zeros(4), torch.ones(4), conv]
    axes = [1, 0, 1, 1, 1, 1]
    assert emptied_channels(cases, axes) == [1, 1, 0, 1, 0, 3]  # a row; a column; ...
