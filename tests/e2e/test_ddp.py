"""Two data-parallel ranks on gloo train through sparse phases and stay identical.

The model is the small CNN, so batch-norm statistics (which DDP does not keep in sync between
forwards) are part of what must agree at the end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acdc_recipe.formats.checkpoint import load_safetensors

HERE = Path(__file__).parent
TINY = str(HERE / "data" / "tiny.yaml")
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(Path(__file__).parent),
}  # sitecustomize.py
CNN = ["train.model.name=cnn", "train.model.kwargs={in_channels: 1, num_classes: 10, width: 4}"]


@pytest.fixture(scope="module")
def worker_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(HERE / "ddp_worker.py"), TINY, str(out), *CNN]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_two_gloo_ranks_hold_identical_masks_and_weights(worker_run):
    tmp_path = worker_run
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    masks = [rank["masks"] for rank in ranks]
    assert len(masks[0]) == 4 and all(torch.equal(a, b) for a, b in zip(*masks))
    kept = sum(int(m.count_nonzero()) for m in masks[0])
    total = sum(m.numel() for m in masks[0])
    assert total - kept == round(0.8 * total)
    weights = [rank["weights"] for rank in ranks]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any("running_mean" in k for k in weights[0])
    assert int((weights[0]["0.weight"] == 0).sum()) == int((masks[0][0] == 0).sum())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 36  # 6 epochs x ceil(1437/2/128)
    assert summary["sparse_top1"] > 0.3  # 36 steps of a tiny CNN: well above chance (0.1)


def test_cli_ranks_crash_and_resume_to_the_same_weights(worker_run, tmp_path):
    sets = [item for pair in zip(["--set"] * len(CNN), CNN) for item in pair]
    command = [sys.executable, "-m", "acdc_recipe.cli.main", "run", TINY, *sets,
               "--out", str(tmp_path), "--device", "cpu", "--nproc-per-node", "2"]  # fmt: skip
    env = {
        **ENV,
        "ACDC_TEST_STOP_AT": r"before_rename:^checkpoint-\d+\.pt$:5",
    }  # 5, 6, 10, 12, then dies writing 15
    crashed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert crashed.returncode != 0 and not (tmp_path / "sparse.safetensors").exists()
    result = subprocess.run(
        command + ["--resume"], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed at step 12" in result.stdout and "(2 processes)" in result.stdout
    reference = torch.load(worker_run / "rank0.pt", weights_only=True)["weights"]
    resumed = load_safetensors(tmp_path / "sparse.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_two_ranks_on_sparse_kernels_reduce_dense_gradients_and_stay_identical(tmp_path):
    """Sparse kernels change only how each rank computes; DDP reduces the dense gradients."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(HERE / "ddp_worker.py"), TINY, str(tmp_path), *CNN,
               "train.sparse_kernels=on"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    weights = [rank["weights"] for rank in ranks]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    pruned = [k for k, v in weights[0].items() if k.endswith(".weight") and v.dim() > 1]
    for name, mask in zip(pruned, ranks[0]["masks"], strict=True):
        assert not weights[0][name][mask == 0].any()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    chosen = [json.loads(line) for line in lines if '"KernelsChosen"' in line]
    assert chosen and all("sparse" in record["kernels"].values() for record in chosen)


def test_two_ranks_choose_identical_lamp_masks_with_floors(tmp_path):
    """LAMP scores, min_density and min_per_channel floors are deterministic: both ranks keep
    the same weights."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(HERE / "ddp_worker.py"), TINY, str(tmp_path), *CNN, "sparsity.scope=lamp",
               "sparsity.min_density=0.05", "sparsity.min_per_channel=1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    masks = [rank["masks"] for rank in ranks]
    assert all(torch.equal(a, b) for a, b in zip(*masks))
    total = sum(m.numel() for m in masks[0])
    assert total - sum(int(m.count_nonzero()) for m in masks[0]) == round(0.8 * total)
    assert all(m.count_nonzero() >= -(-m.numel() // 20) for m in masks[0])  # 5% of each layer
    assert all(bool((m.reshape(m.shape[0], -1).sum(1) >= 1).all()) for m in masks[0])
    weights = [rank["weights"] for rank in ranks]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
