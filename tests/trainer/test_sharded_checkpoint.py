"""Checkpoint folders of sharded runs, read without a process group: the manifest is checked
file by file, the world size by the rank files, and nested state splits and merges back."""

import pytest
import torch

from acdc_recipe.formats.checkpoint import CheckpointError
from acdc_recipe.trainer.distributed import DistContext
from acdc_recipe.trainer.sharded_checkpoint import (
    WorldSizeError,
    merge_dtensors,
    read_checkpoint,
    split_dtensors,
    write_manifest,
    write_rank_file,
)


@pytest.fixture
def folder(tmp_path):
    """A two-rank checkpoint folder with one data file beside the rank files."""
    path = tmp_path / "checkpoint-000000012"
    path.mkdir()
    (path / "__0_0.distcp").write_bytes(b"shard bytes")
    for rank in range(2):
        write_rank_file(path, rank, {"recipe_hash": "abc", "step": 12, "rank_value": rank})
    write_manifest(path)
    return path


def test_each_rank_reads_its_own_verified_file(folder):
    for rank in range(2):
        state = read_checkpoint(folder, "abc", DistContext(rank, 2))
        assert state["rank_value"] == rank and state["step"] == 12


def test_another_world_size_is_refused_with_the_one_that_wrote_it(folder):
    with pytest.raises(WorldSizeError, match="written by 2 processes and this run has 3"):
        read_checkpoint(folder, "abc", DistContext(0, 3))


def test_a_damaged_shard_is_refused_by_name(folder):
    (folder / "__0_0.distcp").write_bytes(b"shard bytez")
    with pytest.raises(CheckpointError, match="__0_0.distcp is damaged"):
        read_checkpoint(folder, "abc", DistContext(0, 2))


def test_missing_or_unlisted_files_and_a_missing_manifest_are_refused(folder):
    (folder / "stray.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not listed: stray.bin"):
        read_checkpoint(folder, "abc", DistContext(0, 2))
    (folder / "stray.bin").unlink()
    (folder / "rank-00001.pt").unlink()
    with pytest.raises(CheckpointError, match="missing: rank-00001.pt"):
        read_checkpoint(folder, "abc", DistContext(0, 2))
    (folder / "SHA256SUMS").unlink()
    with pytest.raises(CheckpointError, match="no readable SHA256SUMS"):
        read_checkpoint(folder, "abc", DistContext(0, 2))


def test_another_recipe_is_refused(folder):
    with pytest.raises(CheckpointError, match="different recipe"):
        read_checkpoint(folder, "other", DistContext(1, 2))


def test_state_without_dtensors_stays_whole_and_merges_back():
    state = {"model": {"w": torch.ones(2)}, "optimizer": {"state": {0: {}}, "param_groups": [{}]}}
    sharded, rest = split_dtensors(state)
    assert sharded == {"model": {}, "optimizer": {"state": {0: {}}}}
    merged = merge_dtensors(rest, sharded)
    assert merged.keys() == state.keys() and torch.equal(merged["model"]["w"], torch.ones(2))
    assert merged["optimizer"] == state["optimizer"]
