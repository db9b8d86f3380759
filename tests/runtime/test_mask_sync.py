"""Mask agreement across data-parallel ranks: the checksum and a 2-process gloo check."""

from __future__ import annotations

import pytest
import torch

from acdc_recipe.runtime.mask_sync import MaskMismatchError, mask_checksum, verify_masks_identical


def test_checksum_tells_masks_apart():
    a = [torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.ones(3)]
    moved = [torch.tensor([0.0, 1.0, 1.0, 0.0]), torch.ones(3)]
    assert torch.equal(mask_checksum(a), mask_checksum([m.clone() for m in a]))
    assert torch.equal(mask_checksum(a), mask_checksum([m.bool() for m in a]))
    assert mask_checksum(a)[0] == mask_checksum(moved)[0]  # same kept count ...
    assert mask_checksum(a)[1] != mask_checksum(moved)[1]  # ... other positions


def test_single_process_needs_no_check():
    verify_masks_identical([torch.ones(3)], ["fc.weight"])


def _rank(rank: int) -> str:
    same = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0])]
    verify_masks_identical(same, ["a.weight", "b.weight"])
    differs = [same[0], torch.tensor([1.0, 0.0]) if rank == 1 else same[1]]
    try:
        verify_masks_identical(differs, ["a.weight", "b.weight"])
        outcome = "no error"
    except MaskMismatchError as error:
        outcome = str(error)
    return outcome


@pytest.mark.distributed
def test_two_ranks_with_different_masks_both_raise(two_ranks):
    for outcome in two_ranks(_rank):
        assert "b.weight" in outcome and "a.weight" not in outcome
