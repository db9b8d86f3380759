"""Reference-code configs (IST-DASLab/ACDC) convert phase boundary by phase boundary and key by
key; the expected epochs are the reference training loop's, computed here from its rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from acdc_recipe.convert import ConversionError, convert_recipe, convert_text
from acdc_recipe.language.timeline import lower

DATA = Path(__file__).parent / "data"
RESNET50 = DATA / "resnet50_imagenet_s90.yaml"
WRN = DATA / "wrn28_10_cifar100_s90.yaml"


def reference_epochs(schedules, also_skip=()):
    """The epochs the reference loop calls policies at: range(start, end, freq) of each."""
    return sorted({e for start, freq, end in schedules for e in range(start, end, freq)}
                  - set(also_skip))  # fmt: skip


def boundaries(recipe):
    timeline = lower(recipe.schedule)
    sparse = [p.start for p in timeline.phases if p.kind == "sparse"]
    dense = [p.start for p in timeline.phases if p.kind == "dense" and p.start > 0]
    return timeline, sparse, dense


def test_cifar100_wrn_config_prunes_and_restores_at_the_papers_epochs():
    recipe = convert_recipe(WRN, epochs=200, model="wide_resnet28_10").recipe
    timeline, sparse, dense = boundaries(recipe)
    assert sparse == [10, 50, 90, 130, 170] == reference_epochs([(10, 40, 171)])
    assert dense == [30, 70, 110, 150] == reference_epochs([(30, 40, 161)])
    assert timeline.length == 200
    assert timeline.compact() == (
        "D0-9, S10-29, D30-49, S50-69, D70-89, S90-109, D110-129, S130-149, D150-169, S170-199"
    )
    assert recipe.sparsity.target == 0.9 and recipe.sparsity.scope == "global"
    names = [rule.match for rule in recipe.sparsity.rules]
    assert names[0] == "conv1.weight" and names[-2] == "linear.weight" and len(names) == 30
    assert recipe.sparsity.rules[-1].dense and recipe.sparsity.rules[-1].include
    assert not any(rule.include for rule in recipe.sparsity.rules[:-1])  # weight_only: True
    optimizer = recipe.train.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.momentum, optimizer.nesterov) == (
        "sgd", 0.08, 0.9, True
    )  # fmt: skip
    assert optimizer.weight_decay == 0.0005
    # ExponentialLR stepped at the end of epochs 75, 115, 155: the lr falls from the next one.
    assert recipe.train.lr_schedule.name == "multistep"
    assert recipe.train.lr_schedule.milestones == (76, 116, 156)
    assert recipe.train.lr_schedule.gamma == 0.1
    assert recipe.optimizer_state.on_decompress == "reset"


def test_imagenet_resnet50_config_has_the_papers_100_epoch_timeline():
    conversion = convert_recipe(RESNET50, epochs=100)
    timeline, sparse, dense = boundaries(conversion.recipe)
    pruning = reference_epochs([(10, 10, 71), (85, 20, 100)])
    assert sparse == pruning == [10, 20, 30, 40, 50, 60, 70, 85]
    assert dense == reference_epochs([(15, 10, 66), (75, 20, 86)], pruning)
    assert timeline.compact() == (
        "D0-9, S10-14, D15-19, S20-24, D25-29, S30-34, D35-39, S40-44, D45-49, S50-54, "
        "D55-59, S60-64, D65-69, S70-74, D75-84, S85-99"
    )
    assert timeline.sparse_units == 50
    assert "'{{ range(10, 71, 10) | list + [85] }}'" in conversion.text
    assert conversion.recipe.train is None  # no --model
    assert any("--model" in item.text for item in conversion.report.todo)
    approximated = " ".join(item.text for item in conversion.report.approximated)
    assert "one weight fewer than the target count" in approximated
    assert "--reset_momentum_after_recycling" in approximated


def test_cosine_lr_maps_to_acdc_cosine_and_says_it_is_approximate():
    conversion = convert_recipe(RESNET50, epochs=100, model="resnet50")
    schedule = conversion.recipe.train.lr_schedule
    assert (schedule.name, schedule.warmup_epochs, schedule.final_lr) == ("cosine", 5, 0.0)
    assert any("CosineLR" in item.text for item in conversion.report.approximated)


def test_reference_configs_need_the_run_length():
    with pytest.raises(ConversionError, match="give it with --epochs N"):
        convert_recipe(WRN)


def test_a_gradual_pruner_gets_the_references_level_at_each_of_its_epochs():
    text = """\
pruners:
  pruner_1:
    class: UnstructuredMagnitudePruner
    epochs: [1, 3, 40]
    weight_only: True
    initial_sparsity: 0.05
    target_sparsity: 0.90
    modules: [fc1, fc2]
"""
    recipe = convert_text(text, "gmp.yaml", epochs=45).recipe
    timeline = lower(recipe.schedule)
    updates = [(p.start, p.sparsity_at(p.start, recipe.sparsity.target)) for p in timeline.phases
               if p.kind == "sparse"]  # fmt: skip
    # The loop calls it at range(1, 40, 3): the pruner would act at 40 too, but is not called.
    assert [e for e, _ in updates] == list(range(1, 40, 3))
    expected = [0.9 - (0.9 - 0.05) * (1 - (e - 1) / 39) ** 3 for e in range(1, 40, 3)]
    assert [s for _, s in updates] == pytest.approx(expected, abs=1e-12)


def test_a_restore_at_a_pruning_epoch_is_skipped_as_the_loop_skips_it():
    text = """\
pruners:
  pruner_1: {class: UnstructuredMagnitudePruner, epochs: [2, 4, 11], weight_only: True,
             initial_sparsity: 0.5, target_sparsity: 0.5, modules: [fc1]}
recyclers:
  recycler_1: {class: RestoreWeights, epochs: [4, 2, 9], weight_only: True, modules: [fc1]}
"""
    recipe = convert_text(text, "x.yaml", epochs=12).recipe
    assert recipe.schedule.transitions.sparse_at == (2, 6, 10)
    assert recipe.schedule.transitions.dense_at == (4, 8)  # 6 is a pruning epoch


def test_an_nm_pruner_becomes_an_nm_pattern():
    text = """\
pruners:
  pruner_1: {class: MagnitudeNMPruner, epochs: [2, 4, 7], N: 2, M: 4, weight_only: True,
             modules: [fc1]}
recyclers:
  recycler_1: {class: RestoreWeights, epochs: [4, 4, 5], weight_only: True, modules: [fc1]}
"""
    recipe = convert_text(text, "nm.yaml", epochs=10).recipe
    assert recipe.sparsity.pattern == "2:4" and recipe.sparsity.target == 0.5
    assert recipe.sparsity.scope == "uniform"
    assert lower(recipe.schedule).compact() == "D0-1, S2-3, D4-5, S6-9"


def test_weight_only_false_prunes_biases_too():
    text = """\
pruners:
  pruner_1: {class: MagnitudePruner, epochs: [0, 2, 3], weight_only: False,
             initial_sparsity: 0.5, target_sparsity: 0.5, modules: [fc1]}
"""
    recipe = convert_text(text, "uniform.yaml", epochs=4).recipe
    assert recipe.sparsity.scope == "uniform"
    assert recipe.sparsity.rules[0].include


def test_unknown_classes_and_keys_are_reported():
    text = """\
pruners:
  pruner_1: {class: UnstructuredMagnitudePruner, epochs: [0, 2, 3], weight_only: True,
             initial_sparsity: 0.5, target_sparsity: 0.5, modules: [fc1], shiny: 1}
  pruner_2: {class: FisherPruner, epochs: [0, 2, 3]}
regularizers:
  reg_1: {class: L2}
"""
    report = convert_text(text, "x.yaml", epochs=4).report
    missing = " ".join(item.render() for item in report.no_equivalent)
    assert "pruners.pruner_2: class FisherPruner has no equivalent" in missing
    assert "pruners.pruner_1: key `shiny` has no equivalent" in missing
    assert "regularizers: this section has no equivalent" in missing


def test_pruners_over_different_modules_are_an_error():
    text = """\
pruners:
  pruner_1: {class: UnstructuredMagnitudePruner, epochs: [0, 4, 3], weight_only: True,
             initial_sparsity: 0.5, target_sparsity: 0.5, modules: [fc1]}
  pruner_2: {class: UnstructuredMagnitudePruner, epochs: [4, 4, 7], weight_only: True,
             initial_sparsity: 0.5, target_sparsity: 0.5, modules: [fc2]}
"""
    with pytest.raises(ConversionError, match="list different modules"):
        convert_text(text, "x.yaml", epochs=8)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", "the file is a YAML list, not a mapping"),
        ("", "the file is empty"),
        ("lr: 0.1\nbatch: 3\n", "its top-level keys are lr, batch"),
        ("name: x\nschedule: {acdc: {epochs: 9}}\n", "already an acdc recipe"),
        ("a: [1\n", "invalid YAML"),
    ],
)
def test_a_file_that_is_neither_format_says_what_it_is(text, message):
    with pytest.raises(ConversionError, match=message):
        convert_text(text, "x.yaml", epochs=3)


def test_a_format_given_that_does_not_match_is_an_error():
    with pytest.raises(ConversionError, match="is not a SparseML recipe"):
        convert_recipe(WRN, "sparseml", epochs=200)


def resnet50_config(edit=None) -> str:
    """The ResNet-50 config as YAML text, after `edit(config)` changes the parsed mapping."""
    config = yaml.safe_load(RESNET50.read_text())
    if edit is not None:
        edit(config)
    return yaml.safe_dump(config)


def without_conv1_fc_in_pruners(config):
    """The paper's `iht_imagenet_resnet50_insta_cosinelr_s90_ep100_no_conv1_fc.yaml`: its
    pruners and first recycler leave conv1 and fc out, its second recycler lists them."""
    for section, name in (("pruners", "pruner_1"), ("pruners", "pruner_2"),
                          ("recyclers", "recycler_1")):  # fmt: skip
        config[section][name]["modules"].remove("conv1")
        config[section][name]["modules"].remove("fc")


def test_a_recycler_listing_modules_no_pruner_prunes_ignores_them_and_says_so():
    """RestoreWeights.on_epoch_begin (policies/recyclers.py) sets an all-ones mask and zeroes
    what the mask held at zero: for a layer no pruner pruned, nothing."""
    conversion = convert_text(resnet50_config(without_conv1_fc_in_pruners), "no_conv1_fc.yaml",
                              epochs=100)  # fmt: skip
    recipe = conversion.recipe
    matches = [rule.match for rule in recipe.sparsity.rules]
    assert "conv1.weight" not in matches and "fc.weight" not in matches and len(matches) == 53
    assert lower(recipe.schedule).compact().endswith("S70-74, D75-84, S85-99")
    mapped = " ".join(item.render() for item in conversion.report.mapped)
    assert "recyclers.recycler_2: also lists ['conv1', 'fc'], which no pruner prunes" in mapped


def test_a_recycler_that_leaves_out_a_pruned_module_is_an_error():
    def edit(config):
        config["recyclers"]["recycler_2"]["modules"].remove("layer1.0.conv1")

    with pytest.raises(ConversionError, match="recycler_2. does not restore layer1.0.conv1"):
        convert_text(resnet50_config(edit), "x.yaml", epochs=100)


def test_layers_kept_dense_leave_the_rules_and_are_reported():
    conversion = convert_recipe(RESNET50, epochs=100, keep_dense={"conv1": "3 input channels"})
    matches = [rule.match for rule in conversion.recipe.sparsity.rules]
    assert "conv1.weight" not in matches and "fc.weight" in matches
    approximated = [item.render() for item in conversion.report.approximated]
    assert any(line.startswith("conv1: kept dense: 3 input channels;") for line in approximated)


MOBILENET = """\
pruners:
  pruner_1: {class: UnstructuredMagnitudePruner, epochs: [10, 10, 71], initial_sparsity: 0.9,
             target_sparsity: 0.9, weight_only: True,
             modules: [model.0.0, model.1.0, model.1.3, model.13.0, model.13.3, fc]}
recyclers:
  recycler_1: {class: RestoreWeights, weight_only: True, epochs: [15, 10, 66],
               modules: [model.0.0, model.1.0, model.1.3, model.13.0, model.13.3, fc]}
"""


def test_reference_mobilenet_names_map_to_the_builtin_mobilenet_v1():
    recipe = convert_text(MOBILENET, "mobilenet.yaml", epochs=100, model="mobilenet_v1").recipe
    assert [rule.match for rule in recipe.sparsity.rules][:-1] == [
        "features.0.0.weight", "features.1.0.weight", "features.2.0.weight",
        "features.25.0.weight", "features.26.0.weight", "fc.weight",
    ]  # fmt: skip
    todo = convert_text(MOBILENET, "mobilenet.yaml", epochs=100).report.todo
    assert any("--model mobilenet_v1" in item.text for item in todo)


def cosine_config(end_epoch=100, epochs=(0, 1, 100)):
    def edit(config):
        config["trainers"]["default_trainer"]["lr_scheduler"].update(
            end_epoch=end_epoch, epochs=list(epochs)
        )

    return resnet50_config(edit)


def test_cosine_lr_ending_with_the_run_is_the_same_curve_with_its_largest_gap_stated():
    conversion = convert_text(cosine_config(), "r50.yaml", epochs=100, model="resnet50")
    schedule = conversion.recipe.train.lr_schedule
    assert (schedule.name, schedule.warmup_epochs, schedule.final_lr) == ("cosine", 5, 0.0)
    approximated = " ".join(item.text for item in conversion.report.approximated)
    # In the warm-up the reference's epoch e runs at (e + 1) / 5 of the peak from its first
    # step, acdc rises to it step by step: 20% apart at most.
    assert "at most 20.0% of the peak apart (epoch 0)" in approximated


@pytest.mark.parametrize(
    "end_epoch, epochs, run",
    [(100, (0, 1, 100), 80), (120, (0, 1, 120), 100), (100, (0, 2, 100), 100)],
)
def test_cosine_lr_that_does_not_end_with_the_run_needs_allow_approximate_lr(
    end_epoch, epochs, run
):
    text = cosine_config(end_epoch, epochs)
    with pytest.raises(ConversionError, match="--allow-approximate-lr"):
        convert_text(text, "r50.yaml", epochs=run, model="resnet50")
    conversion = convert_text(text, "r50.yaml", epochs=run, model="resnet50",
                              allow_approximate_lr=True)  # fmt: skip
    assert conversion.recipe.train.lr_schedule.name == "cosine"
    assert "of the peak apart" in " ".join(i.text for i in conversion.report.approximated)


def test_a_config_whose_pruners_are_all_left_out_is_refused_unless_dense_is_allowed():
    text = """\
pruners:
  pruner_1: {class: FisherPruner, epochs: [0, 2, 10], modules: [fc1]}
"""
    with pytest.raises(ConversionError, match="pruners.pruner_1: class FisherPruner"):
        convert_text(text, "fisher.yaml", epochs=12)
    assert convert_text(text, "fisher.yaml", epochs=12, allow_dense=True).recipe.sparsity is None
