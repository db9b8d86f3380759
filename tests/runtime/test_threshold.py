"""Radix-select magnitude threshold: agreement with torch.kthvalue and exact, positional masks."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acdc_recipe.runtime import threshold
from acdc_recipe.runtime.threshold import (
    NonFiniteWeightError,
    check_finite,
    kth_smallest_magnitude,
    prune_mask_unstructured,
    select_magnitude_key,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def flat_magnitudes(tensors):
    return torch.cat([t.reshape(-1).abs() for t in tensors])


def reference_kth(tensors, k):
    return flat_magnitudes(tensors).kthvalue(k).values


def reference_pruned_positions(tensors, prune):
    """Positions a stable ascending sort puts first: below the threshold, then earliest ties."""
    keys = torch.cat([threshold.magnitude_keys(t).reshape(-1).long() for t in tensors])
    return set(torch.sort(keys, stable=True).indices[:prune].tolist())


def pruned_positions(masks):
    return set(torch.cat([m.reshape(-1) for m in masks]).eq(0).nonzero().flatten().tolist())


def special_values(dtype):
    info = torch.finfo(dtype)
    return [0.0, -0.0, info.tiny, -info.tiny, info.tiny / 4, -info.tiny / 8, 1.0, -1.0, 0.5,
            info.max, -info.max, info.eps, 3.0]  # fmt: skip


@st.composite
def weight_lists(draw):
    """1-4 tensors of one dtype: random, heavily tied, zero-rich, denormal and mixed-sign values."""
    dtype = draw(st.sampled_from(DTYPES))
    pool = special_values(dtype)
    tensors = []
    for _ in range(draw(st.integers(1, 4))):
        size = draw(st.integers(1, 200))
        kind = draw(st.sampled_from(["random", "pool", "constant"]))
        seed = draw(st.integers(0, 2**16))
        generator = torch.Generator().manual_seed(seed)
        if kind == "random":
            values = torch.randn(size, generator=generator, dtype=torch.float64)
        elif kind == "pool":
            picks = torch.randint(len(pool), (size,), generator=generator)
            values = torch.tensor(pool, dtype=torch.float64)[picks]
        else:
            values = torch.full((size,), draw(st.sampled_from(pool)), dtype=torch.float64)
        tensors.append(values.to(dtype))
    return tensors


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(tensors=weight_lists(), data=st.data())
def test_threshold_matches_kthvalue(tensors, data):
    n = sum(t.numel() for t in tensors)
    k = data.draw(st.one_of(st.just(1), st.just(n), st.integers(1, n)))
    got = kth_smallest_magnitude(tensors, k)
    assert got.dtype == tensors[0].dtype and got.shape == ()
    assert torch.equal(got, reference_kth(tensors, k))


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(tensors=weight_lists(), data=st.data())
def test_unstructured_mask_prunes_exactly_the_stable_order(tensors, data):
    n = sum(t.numel() for t in tensors)
    prune = data.draw(st.integers(0, n))
    masks = prune_mask_unstructured(tensors, prune)
    assert [m.dtype for m in masks] == [t.dtype for t in tensors]
    assert [m.shape for m in masks] == [t.shape for t in tensors]
    assert all(bool(((m == 0) | (m == 1)).all()) for m in masks)
    assert pruned_positions(masks) == reference_pruned_positions(tensors, prune)


def test_ties_prune_earliest_positions_across_tensors():
    tensors = [torch.full((2, 3), 0.25), torch.full((4,), -0.25), torch.full((5,), 0.25)]
    tensors[1][3] = 0.0  # strictly smaller: always pruned first
    masks = prune_mask_unstructured(tensors, 9)
    flat = torch.cat([m.reshape(-1) for m in masks])
    assert flat.eq(0).nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9]
    again = prune_mask_unstructured(tensors, 9)
    assert all(torch.equal(a, b) for a, b in zip(masks, again))


def test_accepts_parameters_that_require_grad():
    weight = torch.nn.Parameter(torch.tensor([[0.5, -0.1], [0.3, 2.0]]))
    assert kth_smallest_magnitude([weight], 2).item() == pytest.approx(0.3)
    assert prune_mask_unstructured([weight], 1)[0].tolist() == [[1.0, 0.0], [1.0, 1.0]]


def test_ties_are_row_major_in_non_contiguous_tensors():
    weight = torch.ones(3, 4).t()  # non-contiguous view; flat order is its logical row-major
    mask = prune_mask_unstructured([weight], 5)[0]
    assert mask.reshape(-1).eq(0).nonzero().flatten().tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_counts_and_signed_zero(dtype):
    tensors = [torch.tensor([-0.0, 0.0, 1.0, -2.0], dtype=dtype), torch.tensor([0.0], dtype=dtype)]
    assert kth_smallest_magnitude(tensors, 3).item() == 0.0
    assert kth_smallest_magnitude(tensors, 4).item() == 1.0
    assert kth_smallest_magnitude(tensors, 5).item() == 2.0
    assert all(bool((m == 1).all()) for m in prune_mask_unstructured(tensors, 0))
    assert all(bool((m == 0).all()) for m in prune_mask_unstructured(tensors, 5))
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        kth_smallest_magnitude(tensors, 0)
    with pytest.raises(ValueError, match="cannot prune 6 of 5"):
        prune_mask_unstructured(tensors, 6)


@contextlib.contextmanager
def flush_to_zero():
    """Flush-to-zero (and denormals-are-zero) mode within the block, where the CPU has it.
    Create the weights before entering: in this mode new denormal tensors become zero."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode")
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def test_denormals_stay_distinct_under_flush_to_zero():
    tiny = torch.finfo(torch.float32).tiny
    weight = torch.tensor([tiny / 2, tiny / 4, tiny / 8, 0.0, 1.0])
    with flush_to_zero():
        mask = prune_mask_unstructured([weight], 2)[0]
    assert mask.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_selection_reports_counts_below_and_at_the_key():
    tensors = [torch.tensor([3.0, 1.0, 2.0, 2.0]), torch.tensor([-2.0, 5.0])]
    sel = select_magnitude_key(tensors, 3)
    assert threshold.key_to_value(sel.key, torch.float32).item() == 2.0
    assert (sel.below, sel.equal) == (1, 3)
    assert sel.equal_by_tensor == (2, 1)  # from the gathered candidates: no extra pass


def test_pruning_everything_skips_empty_tensors():
    tensors = [torch.empty(0), torch.tensor([0.5, -2.0]), torch.empty(0, 3)]
    masks, largest = threshold.unstructured_masks(tensors, 2)
    assert [m.shape for m in masks] == [t.shape for t in tensors]
    assert all(int(m.count_nonzero()) == 0 for m in masks) and largest.item() == 2.0


def test_pruning_everything_reports_a_denormal_threshold_under_flush_to_zero():
    weights = [torch.tensor([0x00400000, 0x00000001], dtype=torch.int32).view(torch.float32)]
    with flush_to_zero():
        _, largest = threshold.unstructured_masks(weights, 2)
    assert largest.view(torch.int32).item() == 0x00400000  # the largest |w|, not 0


def test_normal_threshold_under_flush_to_zero_prunes_denormals_first():
    """The float compare used for a normal threshold: flush-to-zero only moves denormals."""
    tiny = torch.finfo(torch.float32).tiny
    weight = torch.tensor([tiny / 2, 3.0, -tiny, 0.5, -0.5, 2.0])
    with flush_to_zero():
        mask = prune_mask_unstructured([weight], 4)[0]
    assert mask.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_rejects_mixed_dtypes_and_integer_tensors():
    with pytest.raises(ValueError, match="share dtype and device"):
        kth_smallest_magnitude([torch.ones(3), torch.ones(3, dtype=torch.float16)], 1)
    with pytest.raises(TypeError, match="supports"):
        kth_smallest_magnitude([torch.ones(3, dtype=torch.int32)], 1)
    with pytest.raises(ValueError, match="at least one tensor"):
        kth_smallest_magnitude([], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streamed_and_sync_free_paths_agree(monkeypatch, dtype):
    """Force the paths used above the candidate budget and on GPUs (overflow bin, scatter)."""
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=generator).to(dtype) for s in (1000, 37, 4096)]
    tensors[2][:2000] = 0.125  # a crowded bin: more candidates than the budget
    n = sum(t.numel() for t in tensors)
    expected = {k: reference_kth(tensors, k) for k in (1, 1000, 2500, n)}
    monkeypatch.setattr(threshold, "_CANDIDATE_BUDGET", 64)
    monkeypatch.setattr(threshold, "_CHUNK", 1500)
    for k, value in expected.items():
        assert torch.equal(kth_smallest_magnitude(tensors, k), value)
    monkeypatch.setattr(threshold, "_sync_free", lambda device: True)
    for k, value in expected.items():
        assert torch.equal(kth_smallest_magnitude(tensors, k), value)
    masks = prune_mask_unstructured(tensors, 2500)
    assert pruned_positions(masks) == reference_pruned_positions(tensors, 2500)


@pytest.mark.slow
def test_twenty_million_weights_exact():
    generator = torch.Generator().manual_seed(1)
    sizes = [2_359_296, 4_000_000, 1_048_576, 9_437_184, 3_154_944]  # 20M in five layers
    tensors = [torch.empty(s).normal_(generator=generator) for s in sizes]
    tensors[1][:1_000_000] = 0.0
    n = sum(sizes)
    flat = flat_magnitudes(tensors)
    smallest_nonzero = torch.where(flat > 0, flat, torch.inf).min()
    assert torch.equal(kth_smallest_magnitude(tensors, 1_000_001), smallest_nonzero)
    prune = int(0.9 * n)
    assert torch.equal(kth_smallest_magnitude(tensors, prune), flat.kthvalue(prune).values)
    masks = prune_mask_unstructured(tensors, prune)
    flat_mask = torch.cat([m.reshape(-1) for m in masks])
    assert int(n - flat_mask.count_nonzero()) == prune
    kept_min = torch.where(flat_mask != 0, flat, torch.inf).min()
    pruned_max = torch.where(flat_mask == 0, flat, -torch.inf).max()
    assert pruned_max <= kept_min


def test_check_finite_names_the_first_bad_layer():
    good = torch.tensor([65504.0, -65504.0], dtype=torch.float16)  # max-|w| cannot overflow
    check_finite([good, torch.zeros(3), torch.empty(0)], ["a", "b", "empty"])
    bad_nan = torch.tensor([1.0, float("nan")], dtype=torch.bfloat16)
    bad_inf = torch.tensor([float("-inf")])
    with pytest.raises(NonFiniteWeightError, match="'layer2.weight'"):
        check_finite([good, bad_nan, bad_inf], ["layer1.weight", "layer2.weight", "fc.weight"])
    with pytest.raises(NonFiniteWeightError, match="'fc.weight'"):
        check_finite([torch.ones(2), bad_inf], ["conv.weight", "fc.weight"])
    assert issubclass(NonFiniteWeightError, ValueError)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_selection_itself_refuses_non_finite_weights(dtype, bad):
    clean = torch.linspace(-3, 3, 50, dtype=dtype)
    dirty = clean.clone()
    dirty[7] = bad
    assert prune_mask_unstructured([clean, clean], 30)[0].dtype == dtype  # finite: fine
    with pytest.raises(threshold.NonFiniteWeightError, match="NaN or infinite"):
        prune_mask_unstructured([clean, dirty], 30)
