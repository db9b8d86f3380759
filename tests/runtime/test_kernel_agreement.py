"""Under DDP on the CPU every rank times its layers alone; the kernel is sparse only where all
ranks found it faster, so replicas compute alike and stay bit-identical."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from acdc_recipe.runtime.kernels.layer import agreed


def _rank(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    votes = [agreed(rank == 0), agreed(True), agreed(False)]
    torch.save(votes, f"{out}.{rank}")
    dist.destroy_process_group()


def test_ranks_choose_sparse_only_when_every_rank_found_it_faster(tmp_path):
    init, out = f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "votes")
    mp.spawn(_rank, args=(init, out), nprocs=2, join=True)
    for rank in (0, 1):
        assert torch.load(f"{out}.{rank}", weights_only=True) == [False, True, False]
    assert agreed(True) and not agreed(False)  # one process: its own timing decides
