"""`train()` on a seconds-long recipe: outputs, exact sparsity, dense twin, FLOPs, resume."""

import json
from pathlib import Path

import pytest
import torch

from acdc_recipe.errors import UserError
from acdc_recipe.formats.checkpoint import load_safetensors
from acdc_recipe.formats.records import (
    EpochEnded,
    read_records,
)
from acdc_recipe.formats.run_dir import RunDir
from acdc_recipe.language.loading import load_recipe
from acdc_recipe.runtime.events import MasksComputed
from acdc_recipe.trainer.loop import close, fit, prepare, train
from acdc_recipe.trainer.session import TrainingSetupError

TINY = Path(__file__).parents[1] / "e2e" / "data" / "tiny.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    torch.set_num_threads(1)
    return train(load_recipe(TINY), out, device="cpu"), out


def test_run_directory_holds_every_output(finished):
    summary, out = finished
    names = {p.name for p in out.iterdir()}
    assert {"recipe.yaml", "metrics.jsonl", "summary.json", "dense.safetensors",
            "sparse.safetensors"} <= names  # fmt: skip
    assert len(RunDir(out).checkpoint_files()) == 2
    assert load_recipe(out / "recipe.yaml") == load_recipe(TINY)
    assert json.loads((out / "summary.json").read_text()) == json.loads(
        json.dumps(summary.to_dict())
    )
    epochs = [r for r in read_records(out / "metrics.jsonl") if isinstance(r, EpochEnded)]
    assert [r.epoch for r in epochs] == list(range(6))
    assert [r.phase for r in epochs] == ["dense", "dense", "sparse", "dense", "sparse", "sparse"]
    assert summary.sparse_top1 > 0.8 and summary.dense_top1 > 0.8


def test_sparse_model_has_exactly_the_target_count_of_zeros(finished):
    summary, out = finished
    weights = load_safetensors(out / "sparse.safetensors")
    prunable = [
        weights["0.weight"] if "0.weight" in weights else None,
        weights["1.weight"],
        weights["3.weight"],
    ]
    prunable = [w for w in prunable if w is not None]
    total = sum(w.numel() for w in prunable)
    zeros = sum(int((w == 0).sum()) for w in prunable)
    assert zeros == round(0.8 * total)
    assert summary.achieved_sparsity == zeros / total
    assert set(summary.per_layer_sparsity) == {"1.weight", "3.weight"}


def test_dense_twin_is_the_model_at_the_end_of_the_last_dense_phase(finished):
    summary, out = finished
    epochs = [r for r in read_records(out / "metrics.jsonl") if isinstance(r, EpochEnded)]
    assert summary.dense_top1 == epochs[3].top1  # epoch 3 is the last dense one
    assert summary.sparse_top1 == epochs[-1].top1
    dense = load_safetensors(out / "dense.safetensors")
    assert float((dense["1.weight"] == 0).float().mean()) < 0.5


def test_flops_multipliers_follow_the_schedule(finished, tmp_path):
    summary, _ = finished
    session = prepare(load_recipe(TINY), tmp_path / "fresh", device="cpu")
    close(session)
    flops = {p.name: p.dense_flops for p in session.compiled.params}
    total = session.compiled.dense_forward_flops
    fixed = total - sum(flops.values())
    sparse = fixed + sum(f * (1 - summary.per_layer_sparsity[n]) for n, f in flops.items())
    assert summary.inference_flops_multiplier == pytest.approx(sparse / total)
    assert summary.training_flops_multiplier == pytest.approx(
        (3 * total + 3 * sparse) / (6 * total)
    )


class Crash(Exception):
    pass


def test_resume_after_a_crash_at_a_phase_switch_is_bitwise_equal(finished, tmp_path):
    summary, reference = finished
    session = prepare(load_recipe(TINY), tmp_path, device="cpu")

    def crash(event):
        if isinstance(event, MasksComputed) and event.step == 48:
            raise Crash

    session.runtime.add_listener(crash)
    with pytest.raises(Crash):
        fit(session)
    close(session)
    assert not (tmp_path / "sparse.safetensors").exists()
    resumed = train(load_recipe(TINY), tmp_path, resume=True, device="cpu")
    assert resumed.resumed_from == 48  # the epoch-end checkpoint just before the switch
    for name in ("dense.safetensors", "sparse.safetensors"):
        first, second = load_safetensors(reference / name), load_safetensors(tmp_path / name)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)
    assert (resumed.dense_top1, resumed.sparse_top1) == (summary.dense_top1, summary.sparse_top1)
    assert resumed.training_flops_multiplier == summary.training_flops_multiplier

    def epochs(folder):
        records = read_records(folder / "metrics.jsonl")
        return [
            (r.epoch, r.train_loss, r.val_loss, r.top1)
            for r in records
            if isinstance(r, EpochEnded)
        ]

    assert epochs(tmp_path) == epochs(reference)


def test_a_previous_run_is_kept_unless_overwrite_is_asked(tmp_path):
    recipe = load_recipe(TINY, {"train.checkpoint_every_steps": 100})
    (tmp_path / "checkpoint-000000999.pt").write_bytes(b"old")
    with pytest.raises(UserError, match="already holds a run"):
        train(recipe, tmp_path, device="cpu")
    assert (tmp_path / "checkpoint-000000999.pt").read_bytes() == b"old"
    train(recipe, tmp_path, device="cpu", overwrite=True)
    assert [p.name for p in RunDir(tmp_path).checkpoint_files()] == [
        "checkpoint-000000072.pt", "checkpoint-000000060.pt"]  # fmt: skip


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train.model.kwargs.in_features": 100}, "in_features"),
        ({"train.model.kwargs.num_classes": 5}, "num_classes: 10"),
    ],
)
def test_a_model_that_does_not_fit_the_data_is_a_recipe_error(tmp_path, override, message):
    with pytest.raises(TrainingSetupError, match=message):
        prepare(load_recipe(TINY, override), tmp_path, device="cpu")


def test_a_recipe_without_train_section_is_refused(tmp_path):
    recipe = load_recipe(TINY).model_copy(update={"train": None})
    with pytest.raises(TrainingSetupError, match="no `train` section"):
        train(recipe, tmp_path)


@pytest.mark.slow
def test_dense_twin_with_batch_norm_is_exactly_the_last_dense_epoch(tmp_path):
    cnn = {"train.model.name": "cnn", "train.model.kwargs": {"in_channels": 1, "width": 4}}
    summary = train(load_recipe(TINY, cnn), tmp_path, device="cpu")
    epochs = [r for r in read_records(tmp_path / "metrics.jsonl") if isinstance(r, EpochEnded)]
    assert (summary.dense_top1, summary.dense_loss) == (epochs[3].top1, epochs[3].val_loss)
