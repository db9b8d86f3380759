"""Every shipped recipe loads, says what it reproduces, and has the paper's schedule."""

import pytest

from acdc_recipe.language.loading import load_recipe, shipped_recipes
from acdc_recipe.language.timeline import lower

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


RESNET50_IMAGENET = [name for name in SHIPPED if name.startswith("resnet50_imagenet")]


@pytest.mark.parametrize("name", RESNET50_IMAGENET)
def test_resnet50_recipes_use_the_reference_training_setup(name):
    """SGD 0.256 / 0.875 / 1/32768, batch 256, 5-epoch warm-up then cosine, bf16, no smoothing."""
    train = load_recipe(name).train
    optimizer, lr_schedule = train.optimizer, train.lr_schedule
    assert (optimizer.name, optimizer.lr, optimizer.momentum, optimizer.nesterov) == (
        "sgd",
        0.256,
        0.875,
        False,
    )
    assert optimizer.weight_decay == 3.0517578125e-05 and train.batch_size == 256
    assert (lr_schedule.name, lr_schedule.warmup_epochs, lr_schedule.final_lr) == ("cosine", 5, 0)
    assert train.precision == "bf16" and train.label_smoothing == 0
    assert train.model.name == "resnet50"


@pytest.mark.parametrize("name", ["mobilenetv1_imagenet_acdc75", "mobilenetv1_imagenet_acdc90"])
def test_mobilenet_recipes_use_the_imagenet_schedule(name):
    recipe = load_recipe(name)
    timeline = lower(recipe.schedule)
    assert timeline.length == 100 and timeline.sparse_units == 50
    assert recipe.sparsity.scope == "global" and recipe.train.model.name == "mobilenet_v1"


def test_cifar_recipes_match_the_reference_hyper_parameters():
    wrn = load_recipe("wideresnet28_10_cifar100_acdc90").train
    assert (wrn.model.name, wrn.model.kwargs) == (
        "wide_resnet28_10",
        {"num_classes": 100, "dropout": 0.3},
    )
    r20 = load_recipe("resnet20_cifar10_acdc90").train
    assert r20.model.name == "resnet20"
    for train, lr, nesterov in ((wrn, 0.08, True), (r20, 0.1, False)):
        optimizer = train.optimizer
        assert (optimizer.name, optimizer.lr, optimizer.nesterov) == ("sgd", lr, nesterov)
        assert (optimizer.momentum, optimizer.weight_decay, train.batch_size) == (0.9, 5e-4, 128)
        assert (train.lr_schedule.name, train.lr_schedule.gamma) == ("multistep", 0.1)
    for name in ("wideresnet28_10_cifar100_acdc90", "resnet20_cifar10_acdc90"):
        phases = lower(load_recipe(name).schedule).phases
        assert phases[-1].start == 170 and phases[-1].end == 200 and phases[-1].kind == "sparse"
