"""Checkpoints: atomic writes, keep-last-two, digests, refusal of damaged and foreign files."""

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acdc_recipe.formats import checkpoint as ckpt
from acdc_recipe.formats.run_dir import RunDir


def state(value):
    return {
        "model": {"w": torch.full((3,), float(value))},
        "rng": ckpt.rng_state(),
        "note": [1, "a"],
    }


def test_save_keeps_the_newest_two_and_loads_the_newest(tmp_path):
    for step in (10, 20, 30):
        ckpt.save_checkpoint(RunDir(tmp_path), step, state(step), "hash-a")
    assert [p.name for p in RunDir(tmp_path).checkpoint_files()] == [
        "checkpoint-000000030.pt", "checkpoint-000000020.pt"]  # fmt: skip
    loaded = ckpt.load_latest(RunDir(tmp_path), "hash-a")
    assert loaded.state["step"] == 30 and loaded.refused == ()
    assert torch.equal(loaded.state["model"]["w"], torch.full((3,), 30.0))
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_truncated_newest_falls_back_to_the_previous(tmp_path):
    ckpt.save_checkpoint(RunDir(tmp_path), 1, state(1), "h")
    newest = ckpt.save_checkpoint(RunDir(tmp_path), 2, state(2), "h")
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    loaded = ckpt.load_latest(RunDir(tmp_path), "h")
    assert loaded.state["step"] == 1
    assert "checkpoint-000000002.pt is damaged" in loaded.refused[0]


@pytest.mark.parametrize("where", [0.25, 0.5, 0.75])
def test_bytes_overwritten_in_the_middle_are_refused_by_the_digest(tmp_path, where):
    ckpt.save_checkpoint(RunDir(tmp_path), 1, state(1), "h")
    newest = ckpt.save_checkpoint(RunDir(tmp_path), 2, state(2), "h")
    data = bytearray(newest.read_bytes())
    at = int(len(data) * where)
    data[at : at + 8] = bytes(b ^ 0xFF for b in data[at : at + 8])
    newest.write_bytes(bytes(data))  # same size: torch.load alone would not notice
    loaded = ckpt.load_latest(RunDir(tmp_path), "h")
    assert loaded.state["step"] == 1 and "is damaged" in loaded.refused[0]


def test_the_digest_file_is_sha256sum_format(tmp_path):
    path = ckpt.save_checkpoint(RunDir(tmp_path), 3, state(3), "h")
    digest, name = ckpt.digest_path(path).read_text().split()
    assert name == path.name and digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_foreign_files_and_other_recipes_are_refused(tmp_path):
    ckpt.save_checkpoint(RunDir(tmp_path), 5, state(5), "other-recipe")
    torch.save({"weights": torch.ones(2)}, tmp_path / "checkpoint-000000009.pt")
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.load_latest(RunDir(tmp_path), "mine")
    message = str(error.value)
    assert "checkpoint-000000009.pt has no readable digest file" in message
    assert "checkpoint-000000005.pt was written for a different recipe" in message
    assert "weights_only" not in message
    assert ckpt.load_latest(RunDir(tmp_path / "empty"), "mine") is None


def test_pickled_code_is_not_executed_even_with_a_matching_digest(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "checkpoint-000000001.pt"
    torch.save({"format": ckpt.FORMAT, "x": Evil()}, path)
    with pytest.raises(ckpt.CheckpointError, match="cannot be verified"):
        ckpt.load_latest(RunDir(tmp_path), "h")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    ckpt.digest_path(path).write_text(f"{digest}  {path.name}\n")
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.load_latest(RunDir(tmp_path), "h")
    assert "is not an acdc-recipe checkpoint" in str(error.value)
    assert "weights_only" not in str(error.value) and not (tmp_path / "pwned").exists()


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    ckpt.save_checkpoint(RunDir(tmp_path), 1, {"rng": ckpt.rng_state()}, "h")
    expected = (torch.rand(3), random.random())
    ckpt.restore_rng_state(ckpt.load_latest(RunDir(tmp_path), "h").state["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def save_two_checkpoints_stopping_at(folder: Path, stop: str) -> RunDir:
    """Save checkpoints of steps 1 and 2 in a process that dies at `stop` (sitecustomize.py
    beside the end-to-end tests: `moment:file name regex:n`)."""
    code = (
        "import sys, torch\nfrom pathlib import Path\nfrom acdc_recipe.formats import checkpoint as c\n"
        "from acdc_recipe.formats.run_dir import RunDir\n"
        "folder = RunDir(Path(sys.argv[1]))\n"
        "for step in (1, 2):\n    c.save_checkpoint(folder, step, {'w': torch.full((2,), step)}, 'h')\n"
    )
    hooks = str(Path(__file__).parents[1] / "e2e")
    env = {**os.environ, "PYTHONPATH": hooks, "ACDC_TEST_STOP_AT": stop}
    result = subprocess.run([sys.executable, "-c", code, str(folder)], env=env, timeout=120)
    assert result.returncode == 17
    return RunDir(folder)


@pytest.mark.slow
def test_the_digest_is_written_before_the_checkpoint(tmp_path):
    """A stop between the two leaves a digest without a checkpoint (an unfinished write the
    run directory removes), never a checkpoint that cannot be verified."""
    run = save_two_checkpoints_stopping_at(tmp_path, r"after_rename:\.sha256$:2")
    assert run.checkpoint_files() == [run.checkpoint_file(1)]
    assert run.unfinished_checkpoints() == [run.checkpoint_file(2)]
    assert run.leftovers() == [ckpt.digest_path(run.checkpoint_file(2))]
    assert ckpt.load_latest(run, "h").state["step"] == 1


@pytest.mark.slow
def test_a_crash_before_the_rename_leaves_the_old_checkpoint(tmp_path):
    run = save_two_checkpoints_stopping_at(tmp_path, r"before_rename:\.pt$:2")
    assert [p.name for p in run.checkpoint_files()] == ["checkpoint-000000001.pt"]
    assert ckpt.load_latest(run, "h").state["step"] == 1


@pytest.mark.slow
def test_equal_models_give_byte_identical_safetensors_in_separate_processes(tmp_path):
    code = (
        "import sys, torch\nfrom pathlib import Path\n"
        "from acdc_recipe.formats import checkpoint as c\n"
        "tensors = {n: torch.arange(6.0) * i for i, n in enumerate('zyxwvu')}\n"
        "meta = {k: k * 3 for k in 'abcdefghij'}\n"
        "c.save_safetensors(Path(sys.argv[1]), tensors, meta)\n"
    )
    for name in ("a", "b", "c"):
        env = {**os.environ, "PYTHONHASHSEED": str(ord(name))}
        target = str(tmp_path / f"{name}.safetensors")
        subprocess.run([sys.executable, "-c", code, target], env=env, check=True, timeout=120)
    files = [(tmp_path / f"{name}.safetensors").read_bytes() for name in "abc"]
    assert files[0] == files[1] == files[2]


def test_safetensors_round_trip_with_shared_storage(tmp_path):
    weight = torch.randn(4, 4)
    tensors = {"a": weight, "b": weight[:2]}  # views of one storage
    ckpt.save_safetensors(tmp_path / "m.safetensors", tensors, {"recipe": "x"})
    loaded = ckpt.load_safetensors(tmp_path / "m.safetensors")
    assert torch.equal(loaded["a"], weight) and torch.equal(loaded["b"], weight[:2])
