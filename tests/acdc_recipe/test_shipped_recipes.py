"""Every shipped recipe loads, says what it reproduces, and has the paper's schedule."""

import pytest

from acdc_recipe.loading import load_recipe, shipped_recipes
from acdc_recipe.timeline import lower

SHIPPED = sorted(shipped_recipes())


@pytest.mark.parametrize("name", SHIPPED)
def test_loads_and_documents_itself(name):
    recipe = load_recipe(name)
    assert shipped_recipes()[name].startswith("#"), "each recipe starts with a comment"
    timeline = lower(recipe.schedule)
    assert timeline.length > 0 and not timeline.warnings()
    assert recipe.train is not None, "shipped recipes are runnable"


def test_the_paper_experiments_are_all_there():
    expected = {
        *(f"resnet50_imagenet_acdc{s}" for s in (80, 90, 95, 98)),
        *(f"resnet50_imagenet_uniform{s}{x}" for s in (90, 95) for x in ("", "_2x")),
        "mobilenetv1_imagenet_acdc75", "mobilenetv1_imagenet_acdc90",
        "wideresnet28_10_cifar100_acdc90", "resnet20_cifar10_acdc90", "resnet50_imagenet_2to4",
        "resnet50_imagenet_dense", "resnet50_imagenet_gmp90", "resnet50_imagenet_oneshot90",
        "quickstart",
    }  # fmt: skip
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", [f"resnet50_imagenet_acdc{s}" for s in (80, 90, 95, 98)])
def test_imagenet_global_recipes_match_the_reference(name):
    recipe = load_recipe(name)
    assert recipe.sparsity.scope == "global"
    assert round(recipe.sparsity.target * 100) == int(name[-2:])
    timeline = lower(recipe.schedule)
    assert timeline.sparse_units == 50 and timeline.length == 100
    train = recipe.train
    assert (train.optimizer.lr, train.optimizer.momentum) == (0.256, 0.875)
    assert train.optimizer.weight_decay == 1 / 32768 and train.batch_size == 256


def test_uniform_recipes_keep_first_and_last_layer_dense():
    for name in ("resnet50_imagenet_uniform90", "resnet50_imagenet_uniform95_2x"):
        recipe = load_recipe(name)
        assert recipe.sparsity.scope == "uniform"
        assert {(r.match, r.dense) for r in recipe.sparsity.rules} == {
            ("conv1", True),
            ("fc", True),
        }
    assert lower(load_recipe("resnet50_imagenet_uniform90_2x").schedule).phases[-1].start == 185


def test_cifar_recipes_use_twenty_epoch_blocks_and_reference_hyper_parameters():
    wrn = load_recipe("wideresnet28_10_cifar100_acdc90")
    assert [p.start for p in lower(wrn.schedule).phases] == [
        0,
        10,
        30,
        50,
        70,
        90,
        110,
        130,
        150,
        170,
    ]
    assert wrn.train.optimizer.nesterov and wrn.train.lr_schedule.milestones == (75, 115, 155)
    r20 = load_recipe("resnet20_cifar10_acdc90")
    assert r20.train.lr_schedule.milestones == (65, 125, 185) and r20.train.optimizer.lr == 0.1


def test_sparsity_variable_overrides_the_name_and_target():
    recipe = load_recipe("resnet50_imagenet_acdc90", sparsity=0.95)
    assert recipe.name == "resnet50-imagenet-acdc95" and recipe.sparsity.target == 0.95
