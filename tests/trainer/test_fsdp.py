"""`train.distributed: fsdp` pieces: which modules `shard_model` shards and snapshots (on a
one-process group), reading a full model file as shards and gathering it on rank 0 (two gloo
ranks), evaluation batches padded for sharded ranks."""

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from acdc_recipe.trainer.data import TensorData
from acdc_recipe.trainer.distributed import DistContext
from acdc_recipe.trainer.fsdp import (
    gather_on_rank0,
    load_snapshot,
    read_snapshot,
    shard_model,
    snapshot,
)
from acdc_recipe.trainer.loop import _val_batches


@pytest.fixture
def one_process(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.attention = nn.MultiheadAttention(4, 2)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # one parameter, two modules


def test_modules_with_own_parameters_are_sharded_and_shared_ones_left_to_the_root(one_process):
    model = Tied()
    shard_model(model)
    sharded = {name for name, m in model.named_modules() if isinstance(m, FSDPModule)}
    assert sharded == {"", "attention", "norm"}  # attention whole: it reads out_proj's weight
    assert all(isinstance(p, DTensor) for p in model.parameters())
    assert model.head.weight is model.embed.weight


def test_a_snapshot_of_the_shards_loads_back_in_place(one_process):
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    shard_model(model)
    saved = snapshot(model)
    assert all(not isinstance(v, DTensor) for v in saved.values())
    with torch.no_grad():
        model[0].weight.to_local().zero_()
        model[1].running_mean.fill_(5.0)
    load_snapshot(model, saved)
    assert torch.equal(model[0].weight.to_local(), saved["0.weight"])
    assert torch.equal(model[1].running_mean, saved["1.running_mean"])


def test_sharded_ranks_evaluate_as_many_batches_the_last_ones_empty():
    data = TensorData(torch.arange(7.0).reshape(7, 1), torch.arange(7))
    counts = []
    for rank in range(3):  # 3, 2 and 2 samples in batches of 2: two forwards on every rank
        session = SimpleNamespace(
            data=SimpleNamespace(val=data),
            spec=SimpleNamespace(eval_batch_size=2),
            context=DistContext(rank, 3),
            sharded=True,
        )
        batches = list(_val_batches(session))
        counts.append([len(labels) for _, labels in batches])
        assert all(inputs.shape[1:] == (1,) for inputs, _ in batches)
    assert counts == [[2, 1], [2, 0], [2, 0]]


def _read_and_gather(rank: int, folder: str) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 1))
    full = {k: v.clone() for k, v in model.state_dict().items()}
    if rank == 0:
        save_file(full, f"{folder}/full.safetensors")
    dist.barrier()
    shard_model(model)
    read = read_snapshot(f"{folder}/full.safetensors", model)
    same = all(torch.equal(read[k], v) for k, v in snapshot(model).items())
    return {"same": same, "gathered": gather_on_rank0(model)}


@pytest.mark.distributed
def test_a_full_model_file_reads_as_each_ranks_shards_and_gathers_back_on_rank_0(
    tmp_path, two_ranks
):
    ranks = two_ranks(_read_and_gather, str(tmp_path))
    assert ranks[0]["same"] and ranks[1]["same"]  # rank 1 holds 2 of 5 rows, none of the last
    torch.manual_seed(0)
    expected = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 1)).state_dict()
    assert ranks[0]["gathered"].keys() == expected.keys() and ranks[1]["gathered"] == {}
    assert all(torch.equal(ranks[0]["gathered"][k], v) for k, v in expected.items())
