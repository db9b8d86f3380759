"""The regime benchmark: every run loads with the paper's 100-epoch timelines and one training
setup per model, the GMP baseline is the paper's own config converted, the queue puts the
headline comparisons first, and a small run of the harness writes its table and figures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from acdc_recipe.convert import convert_text  # noqa: E402
from acdc_recipe.language.loading import load_recipe  # noqa: E402
from acdc_recipe.language.timeline import lower  # noqa: E402
from benchmarks import accuracy, accuracy_regime  # noqa: E402

# The pruner section of the reference's configs/neurips/imagenet_resnet50_gmp_sp90.yaml (its
# 54 ResNet-50 modules shortened to one).
PAPER_GMP = """\
pruners:
  pruner_1:
    class: UnstructuredMagnitudePruner
    epochs: [1,5,40]
    weight_only: True
    initial_sparsity: 0.05
    target_sparsity: 0.90
    modules: [fc]
    keep_pruned: False
"""


def _load(job: accuracy_regime.Job):
    return load_recipe(accuracy.RECIPES / f"{job.recipe}.yaml", overrides=job.variables())


def _sparsity_by_epoch(recipe) -> list[float]:
    timeline = lower(recipe.schedule)
    target = recipe.sparsity.target if recipe.sparsity else 0.0
    return [timeline.phase_at(e).sparsity_at(e, target) if timeline.phase_at(e).kind != "dense"
            else 0.0 for e in range(timeline.length)]  # fmt: skip


def test_every_run_loads_with_100_epochs_and_one_training_setup_per_model_and_seed() -> None:
    jobs = accuracy_regime.matrix()
    assert len({job.key for job in jobs}) == len(jobs)
    setups: dict[tuple[str, int], set[str]] = {}
    for job in jobs:
        recipe = _load(job)
        assert lower(recipe.schedule).length == 100, job.key
        if job.target is not None:
            assert recipe.sparsity.target == job.target and recipe.sparsity.scope == job.scope
            assert recipe.sparsity.pattern == job.pattern
            assert recipe.sparsity.min_per_channel == job.min_per_channel
        assert recipe.train.seed == job.seed
        setups.setdefault((job.arch, job.seed), set()).add(recipe.train.model_dump_json())
    assert all(len(variants) == 1 for variants in setups.values()), setups
    train = _load(accuracy_regime.Job("mlp", "dense")).train
    assert train.optimizer.nesterov and train.lr_schedule.name == "cosine"
    assert train.lr_schedule.warmup_epochs > 0
    assert train.data.callable == "benchmarks.accuracy:fashion_mnist_train60000_val10000"


def test_acdc_is_the_shipped_paper_timeline() -> None:
    paper = load_recipe("resnet50_imagenet_acdc90")
    regime = _load(accuracy_regime.Job("mlp", "acdc", 0, 0.9))
    assert lower(regime.schedule) == lower(paper.schedule)
    assert lower(regime.schedule).compact().startswith("D0-9, S10-14, D15-19")
    assert lower(regime.schedule).compact().endswith("S70-74, D75-84, S85-99")


def test_gmp_is_the_papers_config_converted() -> None:
    converted = convert_text(PAPER_GMP, "imagenet_resnet50_gmp_sp90.yaml", epochs=100).recipe
    regime = _load(accuracy_regime.Job("mlp", "gmp", 0, 0.9))
    assert _sparsity_by_epoch(regime) == _sparsity_by_epoch(converted)
    timeline = lower(regime.schedule)
    starts = [p.start for p in timeline.phases if p.kind == "sparse"]
    assert starts == list(range(1, 40, 5))  # from epoch 1 every 5 epochs to 36, then held
    assert _sparsity_by_epoch(regime)[1] == pytest.approx(0.05)
    assert _sparsity_by_epoch(regime)[99] == pytest.approx(0.9 - 0.85 * (4 / 39) ** 3)


def test_oneshot_prunes_once_at_epoch_50() -> None:
    timeline = lower(_load(accuracy_regime.Job("mlp", "oneshot", 0, 0.95)).schedule)
    assert timeline.compact() == "D0-49, S50-99"


def test_the_queue_trains_the_headline_comparisons_first() -> None:
    jobs = accuracy_regime.matrix()
    first = jobs[:21]
    assert {j.arch for j in first} == {"mlp"} and {j.method for j in first} == {
        "dense",
        "acdc",
        "gmp",
    }
    assert {(j.target, j.seed) for j in first if j.method == "acdc"} == {
        (t, s) for t in (0.9, 0.95, 0.98) for s in (0, 1, 2)
    }
    cnn = jobs[21:24] + jobs[30:36]
    assert {j.arch for j in cnn} == {accuracy_regime.CNN_ARCH}
    assert {j.target for j in cnn if j.target} == {0.95}
    assert [j.config for j in cnn[:3]] == ["dense", "acdc95", "gmp95"]
    assert {j.seed for j in cnn[:3]} == {0} and {j.seed for j in cnn[3:]} == {1, 2}
    assert {j.arch for j in jobs[24:30]} == {"gpt2"}
    assert {j.config for j in jobs if j.arch == "gpt2"} >= {"acdc-2:4", "gmp50", "gmp-lamp75"}
    assert jobs[-1].key == f"{accuracy_regime.CNN_ARCH}/acdc-lamp95-min_per_channel1/seed0"


def test_a_small_run_writes_the_table_and_figures_and_stops_on_request(
    tmp_path: Path, fashion_like: Path, monkeypatch
) -> None:
    monkeypatch.setenv(accuracy.DATA_ROOT_ENV, str(fashion_like))
    accuracy._fashion_mnist.cache_clear()
    small = (("train_size", 256), ("val_size", 128))
    jobs = [
        accuracy_regime.Job("mlp", "dense", 0, extra=small),
        accuracy_regime.Job("mlp", "acdc", 0, 0.9, extra=small),
    ]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / accuracy_regime.STOP_FILE).touch()
    assert accuracy_regime.run_queue(jobs, tmp_path / "out", 1) == {}  # nothing started
    (tmp_path / "out" / accuracy_regime.STOP_FILE).unlink()
    (tmp_path / "out" / f"{accuracy_regime.STOP_FILE}.{os.getpid()}").touch()  # this runner
    assert accuracy_regime.run_queue(jobs, tmp_path / "out", 1) == {}
    (tmp_path / "out" / f"{accuracy_regime.STOP_FILE}.{os.getpid()}").unlink()
    results, plots = tmp_path / "regime.json", tmp_path / "plots"
    payload = accuracy_regime.benchmark(jobs, tmp_path / "out", 1, results, plots)
    assert payload["failed"] == {} and payload["missing"] == []
    dense, acdc = payload["runs"]
    assert dense["dense_twin_top1"] == dense["top1"] and dense["loss"] is not None
    assert acdc["achieved_sparsity"] == pytest.approx(0.9, abs=1e-5)
    assert len(acdc["mask_changed"]) == 7  # 8 sparse phases: 7 re-prunings after the first
    assert "--set sparsity=0.9" in acdc["command"] and "regime/acdc.yaml" in acdc["command"]
    text = accuracy_regime.table(payload["configs"])
    assert "acdc90" in text and "dense" in text
    assert "acdc90" in accuracy_regime.mask_table(payload["configs"])
    rows = accuracy_regime.markdown(payload["configs"]).splitlines()
    assert len(rows) == 4 and "--set seed=S --set sparsity=0.9" in rows[3]
    assert "--out" not in rows[3] and rows[3].count("|") == 13
    assert {p.name for p in plots.iterdir()} == {"regime_mlp_90.svg", "regime_mask_change_mlp.svg"}
    assert results.exists()


def test_a_run_claimed_by_a_live_runner_is_left_to_it(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / accuracy_regime.CLAIM_FILE).write_text(str(os.getppid()))
    assert not accuracy_regime._claim(folder)  # the parent process is alive
    (folder / accuracy_regime.CLAIM_FILE).write_text("999999999")  # no such process
    assert accuracy_regime._claim(folder)
    assert (folder / accuracy_regime.CLAIM_FILE).read_text() == str(os.getpid())
