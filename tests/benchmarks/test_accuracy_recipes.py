"""The accuracy benchmark's recipes and harness: every run loads, every comparison is fair
(same epochs, same training setup), and a tiny end-to-end run produces the table, JSON
records and figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from acdc_recipe.language.loading import load_recipe  # noqa: E402
from acdc_recipe.language.timeline import lower  # noqa: E402
from acdc_recipe.models import cnn  # noqa: E402
from benchmarks import accuracy  # noqa: E402


def _load(job: accuracy.Job, mode: accuracy.Mode):
    return load_recipe(
        accuracy.RECIPES / f"{job.method}.yaml", overrides=accuracy.overrides(job, mode)
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode_name", sorted(accuracy.MODES))
def test_every_run_loads_with_the_same_budget_and_training_setup(mode_name: str) -> None:
    mode = accuracy.MODES[mode_name]
    jobs = accuracy.matrix(mode)
    assert len({job.key for job in jobs}) == len(jobs)
    assert {job.method for job in jobs} == set(accuracy.METHODS)
    setups: dict[tuple[str, int], set[str]] = {}
    for job in jobs:
        recipe = _load(job, mode)
        assert lower(recipe.schedule).length == mode.epochs, job.key
        if job.target is not None:
            assert recipe.sparsity.target == job.target
        if not job.extra:  # the study varies lr on purpose
            train = recipe.train.model_dump_json(exclude={"seed"})
            setups.setdefault((job.arch, job.seed), set()).add(train)
            assert recipe.train.seed == job.seed
    assert all(len(variants) == 1 for variants in setups.values()), setups


def test_full_mode_has_three_seeds_for_the_headline_cnn_configs() -> None:
    jobs = accuracy.matrix(accuracy.MODES["full"])
    for config in ("dense", "acdc-global90", "acdc-global95", "gmp90", "gmp95"):
        seeds = {j.seed for j in jobs if j.arch == "cnn" and j.config == config}
        assert seeds == {0, 1, 2}, config


def test_wide_check_runs_the_width_32_cnn_with_the_full_budget() -> None:
    mode = accuracy.MODES["full"]
    jobs = accuracy.wide_matrix()
    configs = {job.config for job in jobs}
    assert configs == {"dense", "acdc-global90", "acdc-global95", "gmp90", "gmp95"}
    assert {job.seed for job in jobs} == {0} and len(configs) == len(jobs)
    setups = set()
    for job in jobs:
        recipe = _load(job, mode)
        assert lower(recipe.schedule).length == mode.epochs, job.key
        assert recipe.train.model.name == "cnn" and recipe.train.model.kwargs["width"] == 32
        setups.add(recipe.train.model_dump_json())
    assert len(setups) == 1  # same model, data, optimizer, lr schedule and seed
    narrow = _load(accuracy.Job("cnn", "acdc", 0, 0.95), mode)
    assert narrow.train.model.kwargs["width"] == 8  # the existing matrix is unchanged
    assert not any(job.arch == accuracy.WIDE_ARCH for job in accuracy.matrix(mode))


def test_lamp_check_compares_the_guard_with_global_and_gmp_at_the_full_budget() -> None:
    mode = accuracy.MODES["full"]
    jobs = accuracy.lamp_matrix()
    assert len({job.key for job in jobs}) == len(jobs)
    three_seeds = ("acdc-lamp95", "acdc-global95", "gmp95", "gmp-lamp95")
    for config in (*three_seeds, "acdc-lamp95-min_per_channel1"):
        assert {j.seed for j in jobs if j.config == config} == {0, 1, 2}, config
    setups = {}
    for job in jobs:
        recipe = _load(job, mode)
        assert lower(recipe.schedule).length == mode.epochs, job.key
        assert recipe.sparsity.scope == job.scope and recipe.sparsity.target == 0.95
        setups.setdefault(job.seed, set()).add(recipe.train.model_dump_json())
        floored = job.config == "acdc-global95-min_density0.02"
        assert recipe.sparsity.min_density == (0.02 if floored else None), job.key
        per_channel = 1 if job.config.endswith("min_per_channel1") else None
        assert recipe.sparsity.min_per_channel == per_channel, job.key
    assert all(len(variants) == 1 for variants in setups.values())
    assert _load(jobs[0], mode).train.model.kwargs["width"] == 8


def test_unknown_subset_name_is_an_attribute_error() -> None:
    assert callable(accuracy.fashion_mnist_train100_val50)
    with pytest.raises(AttributeError):
        accuracy.fashion_mnist_everything  # noqa: B018


@pytest.mark.slow
def test_smoke_run_of_the_harness(tmp_path: Path, fashion_like: Path, monkeypatch) -> None:
    monkeypatch.setenv(accuracy.DATA_ROOT_ENV, str(fashion_like))
    accuracy._fashion_mnist.cache_clear()
    mode = accuracy.MODES["smoke"]
    jobs = [
        accuracy.Job("cnn", "dense", 0),
        accuracy.Job("cnn", "acdc", 0, 0.9),
        accuracy.Job("cnn", "gmp", 0, 0.9),
        accuracy.Job("cnn", "oneshot", 0, 0.95),
    ]
    errors = accuracy.run_matrix(jobs, mode, tmp_path)
    assert errors == {job.key: None for job in jobs}
    assert accuracy.run_matrix(jobs, mode, tmp_path) == {}  # resumable: nothing left to run
    runs = [accuracy.collect(job, mode, tmp_path) for job in jobs]
    dense, acdc, gmp, oneshot = runs
    model = cnn(in_channels=1, num_classes=10, width=8)
    prunable = sum(
        p.numel() for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1
    )
    for run in (acdc, gmp, oneshot):
        assert abs(run["achieved_sparsity"] - run["target"]) * prunable <= 1
        assert run["inference_flops"] < 1.0
        assert len(run["curve"]) == mode.epochs
    assert dense["achieved_sparsity"] == 0 and dense["training_flops"] == 1.0
    assert dense["remasks"] == [] and dense["dense_twin_top1"] == dense["top1"]
    assert acdc["dense_twin_top1"] is not None and oneshot["dense_twin_top1"] is None
    assert [m["epoch"] for m in acdc["remasks"]] == [1.0, 3.0]  # D0 S1 D2 S3
    assert acdc["remasks"][0]["changed"] is None and 0 <= acdc["remasks"][1]["changed"] <= 0.2
    assert "acdc.yaml" in acdc["command"] and "--set sparsity=0.9" in acdc["command"]
    for remask in acdc["remasks"] + gmp["remasks"]:
        layers = remask["per_layer_sparsity"]
        assert set(layers) == {"0.weight", "4.weight", "8.weight", "13.weight"}
        assert remask["emptied"] == sorted(k for k, v in layers.items() if v == 1.0)
    emptied = accuracy.emptied_table(runs)
    assert "acdc-global90" in emptied and "oneshot95" in emptied and "dense" not in emptied
    rows = accuracy.aggregate(runs)
    assert [r["config"] for r in rows] == ["dense", "acdc-global90", "gmp90", "oneshot95"]
    assert rows[1]["mask_changed"] == [acdc["remasks"][1]["changed"]]
    text = accuracy.table(rows)
    assert all(r["config"] in text for r in rows)
    assert "acdc-global90" in accuracy.mask_table(rows)
    assert "gmp90" not in accuracy.mask_table(rows)
    from benchmarks.accuracy_plots import write_figures

    payload = {"runs": runs}
    written = {p.name for p in write_figures(payload, tmp_path / "plots")}
    assert written == {"accuracy_cnn_90.svg", "mask_change_cnn.svg"}
    assert (tmp_path / "plots" / "accuracy_cnn_90.svg").read_text().startswith("<svg")
