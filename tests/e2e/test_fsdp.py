"""`acdc run` sharded with FSDP2 on two gloo ranks: the quickstart trains, a run killed while
checkpointing resumes mid-sparse-phase and ends bitwise equal, other world sizes are refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acdc_recipe.formats.checkpoint import load_safetensors

ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(Path(__file__).parent),
}  # sitecustomize.py
ENV.pop("ACDC_TRACEBACK", None)
# D0-3 S4-5 D6-7 S8-11; 12 steps per epoch on two ranks; a checkpoint at every epoch's end
QUICKSTART = ["quickstart", "--set", "epochs=12", "--set", "train.distributed=fsdp"]


def acdc_run(out, *args, env=ENV, processes=2):
    command = [sys.executable, "-m", "acdc_recipe.cli.main", "run", *QUICKSTART, "--out",
               str(out), "--device", "cpu", "--nproc-per-node", str(processes), *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    result = acdc_run(out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_quickstart_trains_sharded_and_writes_full_models_once(uninterrupted):
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 144
    assert summary["sparse_top1"] > 0.9 and summary["dense_top1"] > 0.9
    sparse = load_safetensors(uninterrupted / "sparse.safetensors")
    assert sparse["1.weight"].shape == (256, 64)  # gathered: the full tensors
    weights = [sparse[name] for name in summary["per_layer_sparsity"]]
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.9 * total)
    newest = sorted(uninterrupted.glob("checkpoint-*"))[-1]
    names = {p.name for p in newest.iterdir()}
    assert {"SHA256SUMS", ".metadata", "rank-00000.pt", "rank-00001.pt"} <= names


def test_a_kill_while_checkpointing_resumes_mid_sparse_phase_bitwise_equal(uninterrupted, tmp_path):
    stop = {"ACDC_TEST_STOP_AT": r"before_rename:^checkpoint-\d+$:7"}  # dies at step 84
    crashed = acdc_run(tmp_path, env={**ENV, **stop})
    assert crashed.returncode == 1 and "exited with code 17" in crashed.stderr
    folders = sorted(tmp_path.glob("checkpoint-*"))
    assert [f.name for f in folders] == ["checkpoint-000000060", "checkpoint-000000072"]
    assert (tmp_path / ".checkpoint-000000084.tmp").is_dir()  # never renamed into place
    shard = folders[1] / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-8])  # and the newest one is damaged
    resumed = acdc_run(tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at step 60" in resumed.stdout  # sparse phase S4-5: steps 48-72
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert any("checkpoint-000000072/__1_0.distcp is damaged" in n for n in summary["notes"])
    assert not (tmp_path / ".checkpoint-000000084.tmp").exists()
    for name in ("sparse.safetensors", "dense.safetensors"):
        reference = load_safetensors(uninterrupted / name)
        again = load_safetensors(tmp_path / name)
        assert reference.keys() == again.keys()
        assert all(torch.equal(reference[k], again[k]) for k in reference)


def test_resuming_in_one_unsharded_process_is_refused_naming_the_world_size(uninterrupted):
    before = sorted(p.name for p in uninterrupted.iterdir())
    result = acdc_run(uninterrupted, "--resume", processes=1)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "written by 2 processes" in result.stderr and "--nproc-per-node 2" in result.stderr
    assert sorted(p.name for p in uninterrupted.iterdir()) == before


def test_the_sharded_run_exports_with_the_masks_its_rank_files_hold(uninterrupted, tmp_path):
    from compressed_tensors.utils import unpack_bitmasks
    from safetensors.torch import load_file

    from acdc_recipe.exporter import ExportError, export

    exported = export(uninterrupted, tmp_path / "compressed")
    packed = load_file(str(exported.path / "model.safetensors"))
    sparse = load_safetensors(uninterrupted / "sparse.safetensors")
    kept = total = 0
    for name in exported.manifest["pruned"]:
        layer = name.removesuffix(".weight")  # compressed-tensors names the layer
        mask = unpack_bitmasks(packed[f"{layer}.bitmask"], packed[f"{layer}.shape"].tolist())
        decoded = torch.zeros(mask.shape)
        decoded[mask] = packed[f"{layer}.compressed"]
        assert torch.equal(decoded, sparse[name])
        kept, total = kept + int(mask.sum()), total + mask.numel()
    assert total - kept == round(0.9 * total)  # the whole masks, joined from both ranks
    newest = sorted(uninterrupted.glob("checkpoint-*"))[-1]
    with pytest.raises(ExportError, match="checkpoint folder of a sharded"):
        export(newest, tmp_path / "folder")


def test_checkpoint_metadata_is_read_by_an_unpickler_that_knows_only_its_classes(uninterrupted):
    import io
    import pickle

    from acdc_recipe.trainer.sharded_checkpoint import _MetadataOnly

    newest = sorted(uninterrupted.glob("checkpoint-*"))[-1]
    with (newest / ".metadata").open("rb") as handle:
        metadata = _MetadataOnly(handle).load()
    assert "model.1.weight" in metadata.state_dict_metadata

    class Hostile:
        def __reduce__(self):
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        _MetadataOnly(io.BytesIO(pickle.dumps(Hostile()))).load()


def test_resuming_an_unsharded_run_sharded_is_refused_naming_the_world_size(tmp_path):
    assert acdc_run(tmp_path, processes=1).returncode == 0  # fsdp on one process: unsharded
    before = sorted(p.name for p in tmp_path.iterdir())
    result = acdc_run(tmp_path, "--resume", processes=2)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "written by one unsharded process" in result.stderr
    assert "--nproc-per-node 1" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
