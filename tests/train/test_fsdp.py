"""`train.distributed: fsdp` pieces that need no second process: which modules `shard_model`
shards (on a one-process group), snapshots, and evaluation batches padded for sharded ranks."""

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from acdc_recipe.runtime.train.data import TensorData
from acdc_recipe.runtime.train.distributed import DistContext
from acdc_recipe.runtime.train.fsdp import load_snapshot, shard_model, snapshot
from acdc_recipe.runtime.train.loop import _val_batches


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
