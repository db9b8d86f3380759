"""The kernel benchmarks' whole-run recipes: the three variants train the same length on the
same data and differ only where they should."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from acdc_recipe.language.timeline import lower  # noqa: E402
from benchmarks import sparse_training  # noqa: E402


def test_whole_run_variants_share_length_data_and_training_setup():
    recipes = {
        name: sparse_training.run_recipe(schedule, kernels, seed=0)
        for name, (schedule, kernels) in sparse_training.run_variants(20).items()
    }
    assert {lower(r.schedule).length for r in recipes.values()} == {20}
    assert recipes["acdc, kernels auto"].train.sparse_kernels == "auto"
    assert recipes["acdc, kernels off"].train.sparse_kernels == "off"
    trains = [r.train.model_dump(exclude={"sparse_kernels"}) for r in recipes.values()]
    assert trains[0] == trains[1] == trains[2]


def test_synthetic_data_is_fashion_mnist_shaped():
    train, val = sparse_training.synthetic_blobs()
    assert len(train) == 12800 and len(val) == 2000
    assert tuple(train[0][0].shape) == (1, 28, 28)


def test_whole_run_data_choices_name_callables_that_resolve():
    import importlib

    for data, (target, _) in sparse_training.RUN_DATA.items():
        recipe = sparse_training.run_recipe("phases: [{dense: 2}]", "off", seed=0, data=data)
        assert recipe.train.data.callable == target
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: it would measure")
def test_the_2_4_benchmark_without_a_gpu_says_so_and_measures_nothing(capsys, monkeypatch):
    from benchmarks import semi_structured

    monkeypatch.setattr(semi_structured, "RESULTS", Path("/nonexistent/never-written.json"))
    assert semi_structured.main(["--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run on CUDA devices only" in err[0]
