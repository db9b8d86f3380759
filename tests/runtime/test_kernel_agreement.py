"""Under DDP on the CPU every rank times its layers alone; the kernel is sparse only where all
ranks found it faster, so replicas compute alike and stay bit-identical."""

from __future__ import annotations

import pytest

from acdc_recipe.runtime.kernels.layer import agreed


def _votes(rank: int) -> list[bool]:
    return [agreed(rank == 0), agreed(True), agreed(False)]


@pytest.mark.distributed
def test_ranks_choose_sparse_only_when_every_rank_found_it_faster(two_ranks):
    assert two_ranks(_votes) == [[False, True, False]] * 2
    assert agreed(True) and not agreed(False)  # one process: its own timing decides
