"""A run's life in its directory: resume, restart, divergence, overwrite, damaged checkpoints."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acdc_recipe.cli.main import main
from acdc_recipe.formats import checkpoint as ckpt
from acdc_recipe.formats.records import (
    EpochEnded,
    Note,
    RunDiverged,
    RunStarted,
    read_records,
    record_to_dict,
)
from acdc_recipe.formats.run_dir import RunDir
from acdc_recipe.language.loading import dump_recipe, load_recipe

from .shell import ENV, TINY, acdc, one_line

# A quickstart whose learning rate jumps 1e12-fold at epoch 3: it diverges in epoch 3.
DIVERGES = ["--set", "epochs=12", "--set", "train.lr_schedule.name=multistep",
            "--set", "train.lr_schedule.milestones=[3]", "--set", "train.lr_schedule.gamma=1e12"]  # fmt: skip


@pytest.mark.parametrize("state", ["does not exist", "is empty"])
def test_resume_of_a_missing_or_empty_folder_is_an_error(tmp_path, capfd, state):
    folder = tmp_path / "run"
    if state == "is empty":
        folder.mkdir()
    assert main(["run", str(TINY), "--out", str(folder), "--resume"]) == 2
    err = one_line(capfd.readouterr().err)
    assert f"nothing to resume: {folder} {state}" in err and "checkpoint-*.pt" in err
    assert "Traceback" not in err
    assert not folder.exists() if state == "does not exist" else not any(folder.iterdir())


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path, capfd):
    recipe = load_recipe(TINY)
    (tmp_path / "recipe.yaml").write_text(dump_recipe(recipe))
    started = RunStarted(0, "tiny", 6, 12, 72, "cpu", 1, 1, None, [], [])
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record_to_dict(started)) + "\n")
    assert main(["run", str(TINY), "--out", str(tmp_path), "--resume", "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from"] is None and summary["steps"] == 72
    assert any("started again from step 0" in note for note in summary["notes"])


def test_a_diverging_run_stops_at_that_step_and_keeps_only_finite_checkpoints(tmp_path):
    out = tmp_path / "run"
    result = acdc("run", "quickstart", *DIVERGES, "--out", out, "--device", "cpu")
    err = one_line(result.stderr)
    assert result.returncode == 1 and "Traceback" not in err
    step = int(re.search(r"the training loss at step (\d+) \(epoch 3\) is nan", err)[1])
    assert 69 <= step < 92  # epoch 3 of 23 steps
    assert "the newest checkpoint, checkpoint-000000069.pt" in err
    assert "--set train.optimizer.lr=0.005 --out" in err and "--resume" in err
    assert result.stdout.count("loss nan") == 0  # no epoch of NaN losses before it stops
    records = read_records(out / "metrics.jsonl")
    assert isinstance(records[-1], RunDiverged) and records[-1].step == step
    recipe_hash = _hash_of(out)
    for path in RunDir(out).checkpoint_files():
        state = ckpt.read_checkpoint(path, recipe_hash)
        assert all(torch.isfinite(t).all() for t in state["model"].values())
    # The advice works: a resume may change the learning rate and its schedule.
    fixed = [*DIVERGES, "--set", "train.lr_schedule.gamma=0.1"]
    resumed = acdc("run", "quickstart", *fixed, "--out", out, "--device", "cpu", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == 69 and summary["sparse_top1"] > 0.5
    assert "from step 69: train.lr_schedule.gamma 1000000000000.0 -> 0.1" in summary["notes"]
    assert load_recipe(out / "recipe.yaml").train.lr_schedule.gamma == 0.1
    notes = [r.text for r in read_records(out / "metrics.jsonl") if isinstance(r, Note)]
    assert "from step 69: train.lr_schedule.gamma 1000000000000.0 -> 0.1" in notes


def _hash_of(run_dir: Path) -> str:
    from acdc_recipe.language.schema import recipe_hash

    return recipe_hash(load_recipe(run_dir / "recipe.yaml"))


def test_a_resume_that_changes_the_schedule_names_the_keys(tmp_path, capfd):
    args = ["run", str(TINY), "--out", str(tmp_path), "--device", "cpu"]
    assert main([*args, "--set", "train.checkpoint_every_steps=100"]) == 0
    capfd.readouterr()
    assert main([*args, "--resume", "--set", "sparsity.target=0.5"]) == 2
    err = one_line(capfd.readouterr().err)
    assert "with a different sparsity.target" in err
    assert "may change only train.optimizer.lr, train.lr_schedule, train.grad_clip" in err


def test_a_closed_stdout_does_not_end_the_run(tmp_path):
    command = [sys.executable, "-m", "acdc_recipe.cli.main", "run", str(TINY), "--out",
               str(tmp_path), "--device", "cpu", "--log-every", "0"]  # fmt: skip
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline()  # like `| head -1`: read one line, then go away
    process.stdout.close()
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    assert stderr == b""
    assert (tmp_path / "sparse.safetensors").exists() and (tmp_path / "summary.json").exists()


def test_overwrite_removes_every_output_of_the_earlier_run(tmp_path, capfd):
    args = ["run", str(TINY), "--out", str(tmp_path), "--device", "cpu"]
    assert main(args) == 0
    assert main(["report", str(tmp_path)]) == 0
    (tmp_path / "tensorboard").mkdir(exist_ok=True)
    (tmp_path / "checkpoint-000000999.pt").write_bytes(b"an old one")
    assert main([*args, "--overwrite", "--set", "train.checkpoint_every_steps=100"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert "report.html" not in names and "tensorboard" not in names
    assert "checkpoint-000000999.pt" not in names
    records = read_records(tmp_path / "metrics.jsonl")
    started = [r for r in records if isinstance(r, RunStarted)]
    assert len(started) == 1 and not hasattr(started[0], "refused_checkpoints")
    notes = [r.text for r in records if isinstance(r, Note)]
    assert any(n.startswith("started fresh (--overwrite): removed") for n in notes)


def test_a_damaged_checkpoint_is_refused_in_our_own_words(tmp_path, capfd):
    args = ["run", str(TINY), "--out", str(tmp_path), "--device", "cpu"]
    assert main([*args, "--set", "train.checkpoint_every_steps=100"]) == 0
    for path in RunDir(tmp_path).checkpoint_files():
        path.write_bytes(path.read_bytes()[:100])
    capfd.readouterr()
    assert main([*args, "--resume", "--set", "train.checkpoint_every_steps=100"]) == 2
    err = one_line(capfd.readouterr().err)
    assert "no usable checkpoint" in err and "is damaged" in err
    assert "weights_only" not in err and "Traceback" not in err


def test_epoch_records_use_the_schedule_numbering(tmp_path):
    assert main(["run", str(TINY), "--out", str(tmp_path), "--device", "cpu"]) == 0
    epochs = [r for r in read_records(tmp_path / "metrics.jsonl") if isinstance(r, EpochEnded)]
    assert [r.epoch for r in epochs] == list(range(6))
