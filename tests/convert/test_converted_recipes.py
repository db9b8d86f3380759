"""Converted recipes compile against the named model and run: `acdc run` recomputes the masks
at exactly the source's epochs and drops them at exactly its restore epochs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml
from torch import nn

from acdc_recipe import compile
from acdc_recipe.cli.main import main
from acdc_recipe.compiler import CompileError
from acdc_recipe.convert import convert_recipe, convert_text
from acdc_recipe.formats.records import RunStarted, read_records
from acdc_recipe.language.loading import load_recipe_text
from acdc_recipe.models import compile_recipe_model
from acdc_recipe.runtime.events import MasksComputed, PhaseStarted
from acdc_recipe.trainer.loop import train
from acdc_recipe.trainer.optim import lr_factor

DATA = Path(__file__).parent / "data"
# The digits MLP (Flatten, Linear "1", ReLU, Linear "3"): 7 epochs of 3 steps.
SMALL_RUN = {"train.batch_size": 512, "train.device": "cpu", "train.data.source": "digits"}
REFERENCE = """\
pruners:
  pruner_1: {class: UnstructuredMagnitudePruner, epochs: [1, 2, 6], weight_only: True,
             initial_sparsity: 0.8, target_sparsity: 0.8, modules: ["1", "3"]}
recyclers:
  recycler_1: {class: RestoreWeights, epochs: [2, 2, 5], weight_only: True, modules: ["1", "3"]}
trainers:
  default_trainer:
    optimizer: {class: SGD, lr: 0.05, momentum: 0.9, weight_decay: 0.0001}
    lr_scheduler: {class: ExponentialLR, gamma: 0.5, epochs: [3, 1, 6]}
"""
SPARSEML = """\
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 7}
  - !SetLearningRateModifier {start_epoch: 0, learning_rate: 0.05}
  - !ACDCPruningModifier
    compression_sparsity: 0.8
    start_epoch: 0
    end_epoch: 6
    update_frequency: 1
    params: __ALL_PRUNABLE__
"""


def run_converted(text, source, tmp_path, **options):
    conversion = convert_text(text, source, model="mlp", **options)
    recipe = load_recipe_text(conversion.text, source, SMALL_RUN)
    train(recipe, tmp_path, device="cpu")
    records = read_records(tmp_path / "metrics.jsonl")
    (started,) = [r for r in records if isinstance(r, RunStarted)]
    per_epoch = started.steps_per_epoch
    masks = [r.step / per_epoch for r in records if isinstance(r, MasksComputed)]
    dense = [r.step / per_epoch for r in records
             if isinstance(r, PhaseStarted) and r.kind == "dense" and r.step > 0]  # fmt: skip
    achieved = [r.achieved_sparsity for r in records if isinstance(r, MasksComputed)]
    return masks, dense, achieved


def test_a_converted_reference_config_runs_its_prune_and_restore_epochs(tmp_path):
    masks, dense, achieved = run_converted(REFERENCE, "tiny_reference.yaml", tmp_path, epochs=7)
    assert masks == [e for e in range(1, 6, 2)] == [1, 3, 5]  # range(start, end, freq)
    assert dense == [2, 4]
    assert achieved == pytest.approx([0.8] * 3, abs=1e-3)


def test_a_converted_sparseml_recipe_runs_sparsemls_epochs(tmp_path):
    masks, dense, _ = run_converted(SPARSEML, "tiny_sparseml.yaml", tmp_path)
    # Phases of one epoch from 0, dense first; from end_epoch - 1 = 5 every update is
    # compressed, and the mask SparseML chooses at end_epoch 6 is held to the end of the run.
    assert masks == [1, 3, 5, 6]
    assert dense == [2, 4]


def test_the_converted_imagenet_config_compiles_against_resnet50():
    text = convert_recipe(DATA / "resnet50_imagenet_s90.yaml", epochs=100, model="resnet50").text
    compiled = compile_recipe_model(load_recipe_text(text))
    assert len(compiled.plan.params) == 54
    assert compiled.plan.timeline.compact().endswith("S70-74, D75-84, S85-99")


def test_modules_left_out_of_the_reference_list_are_kept_dense():
    text = (DATA / "resnet50_imagenet_s90.yaml").read_text()
    text = text.replace("[conv1, ", "[").replace(", fc]", "]")
    recipe = load_recipe_text(
        convert_text(text, "no_conv1_fc.yaml", epochs=100, model="resnet50").text
    )
    compiled = compile_recipe_model(recipe)
    assert len(compiled.plan.params) == 52
    assert sorted(p.name for p in compiled.dense) == ["conv1.weight", "fc.weight"]


def test_module_names_the_model_lacks_are_a_compile_error_naming_them():
    text = convert_recipe(
        DATA / "wrn28_10_cifar100_s90.yaml", epochs=200, model="wide_resnet28_10"
    ).text
    with pytest.raises(
        CompileError, match=r"rule 1 \(match .layer1.0.conv1.weight.\) matches no layer"
    ):
        compile_recipe_model(load_recipe_text(text))


def sparseml_selects(model, params):
    """SparseML's pruned set: `get_named_layers_and_params_by_regex` with
    `any_str_or_regex_matches_param_name` (sparseml/pytorch/utils/helpers.py): a parameter
    whose full name equals an entry, or that `re.match`es a `re:` entry."""

    def matches(name):
        return any(re.match(p[3:], name) if p.startswith("re:") else name == p for p in params)

    return {name for name, _ in model.named_parameters() if matches(name)}


class InvertedResiduals(nn.Module):
    """MobileNetV2-style names: `features.N.conv.M.weight` and `features.N.conv.M.K.weight`."""

    def __init__(self):
        super().__init__()
        block = lambda: nn.Module()  # noqa: E731
        self.features = nn.Sequential(*[block() for _ in range(3)])
        for stage in self.features:
            stage.conv = nn.Sequential(
                nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)),
                nn.Conv2d(8, 8, 1, bias=False),
                nn.BatchNorm2d(8),
            )
        self.classifier = nn.Linear(8, 4)

    def forward(self, x):
        for stage in self.features:
            x = stage.conv(x)
        return self.classifier(x.mean((2, 3)))


def test_overlapping_and_repeated_sparseml_params_prune_the_set_sparseml_prunes():
    params = ["re:features.*.conv.*.weight", "re:features.*.conv.*.*.weight",
              "classifier.weight", "classifier.weight"]  # fmt: skip
    text = SPARSEML.replace("params: __ALL_PRUNABLE__", f"params: {params}")
    recipe = convert_text(text, "overlap.yaml").recipe
    model = InvertedResiduals()
    compiled = compile(model, recipe)
    pruned = {p.name for p in compiled.plan.params}
    # BatchNorm weights match the patterns too, and SparseML prunes them as well.
    assert pruned == sparseml_selects(model, params)
    assert "features.0.conv.0.1.weight" in pruned and "features.0.conv.2.weight" in pruned


def test_a_reference_2_4_config_compiles_with_the_stem_kept_dense(tmp_path, capsys):
    """The paper's iht_imagenet_resnet50_cosinelr_sp_2_4_ep100.yaml: MagnitudeNMPruner 2:4 on
    every conv and fc of ResNet-50, conv1 (3 input channels) included."""
    config = yaml.safe_load((DATA / "resnet50_imagenet_s90.yaml").read_text())
    for pruner in config["pruners"].values():
        for key in ("initial_sparsity", "target_sparsity", "keep_pruned"):
            pruner.pop(key)
        pruner.update({"class": "MagnitudeNMPruner", "N": 2, "M": 4})
    source, out = tmp_path / "sp_2_4.yaml", tmp_path / "out.yaml"
    source.write_text(yaml.safe_dump(config))
    assert main(["convert", str(source), "--epochs", "100", "--model", "resnet50",
                 "-o", str(out)]) == 0  # fmt: skip
    assert "conv1: kept dense: layer 'conv1' (Conv2d, weight [64, 3, 7, 7]) has 3 input" in (
        " ".join(capsys.readouterr().out.split())
    )
    compiled = compile_recipe_model(load_recipe_text(out.read_text()))
    assert {p.pattern for p in compiled.plan.params} == {"2:4"}
    listed = {f"{m}.weight" for m in config["pruners"]["pruner_1"]["modules"]}
    assert {p.name for p in compiled.plan.params} == listed - {"conv1.weight"}
    assert compiled.plan.timeline.compact().endswith("S70-74, D75-84, S85-99")


def test_sparseml_block4_on_all_prunable_keeps_untileable_layers_dense(tmp_path, capsys):
    source, out = tmp_path / "block4.yaml", tmp_path / "out.yaml"
    source.write_text(SPARSEML + "    mask_type: block4\n")
    assert main(["convert", str(source), "--model", "mobilenet_v1", "-o", str(out)]) == 0
    compiled = compile_recipe_model(load_recipe_text(out.read_text()))
    dense = {p.name for p in compiled.dense}
    # The 3-channel stem ([32, 27] view) and the 13 depthwise convs ([C, 9]) do not tile.
    assert dense == {"features.0.0.weight"} | {f"features.{2 * i - 1}.0.weight"
                                               for i in range(1, 14)}  # fmt: skip
    assert len(compiled.plan.params) == 14  # 13 pointwise convs and fc, in 1x4 blocks
    report = " ".join(capsys.readouterr().out.split())
    assert report.count("kept dense: layer") == 14 and "FourBlockMaskCreator" in report


def sparseml_lr(epoch):
    """DOC_LR's learning rate at a (fractional) epoch, as SparseML's
    LearningRateFunctionModifier computes it every step: linear from init_lr to final_lr
    over [0, 5), then `final + (init - final) * (1 + cos(pi * x)) / 2` over [5, 20)."""
    if epoch < 5:
        return 0.0 + (0.256 - 0.0) * epoch / 5
    x = (epoch - 5) / (20 - 5)
    return 0.0 + 0.5 * (0.256 - 0.0) * (1 + math.cos(math.pi * x))


DOC_LR = SPARSEML.replace("end_epoch: 7}", "end_epoch: 20}").replace(
    "  - !SetLearningRateModifier {start_epoch: 0, learning_rate: 0.05}\n",
    "  - !LearningRateFunctionModifier {start_epoch: 0, end_epoch: 5, lr_func: linear,\n"
    "     init_lr: 0.0, final_lr: 0.256}\n"
    "  - !LearningRateFunctionModifier {start_epoch: 5, end_epoch: 20, lr_func: cosine,\n"
    "     init_lr: 0.256, final_lr: 0.0}\n",
)


def test_sparseml_warmup_and_cosine_give_sparsemls_learning_rate_step_by_step():
    train = convert_text(DOC_LR, "lr.yaml", model="mlp").recipe.train
    per_epoch, total = 7, 20 * 7
    for step in range(total):
        ours = train.optimizer.lr * lr_factor(step, train.lr_schedule, per_epoch, total,
                                              train.optimizer.lr)  # fmt: skip
        theirs = sparseml_lr(step / per_epoch)
        # acdc's warm-up counts the step being taken: one step (0.256 / 35) ahead.
        tolerance = 0.256 / 35 + 1e-12 if step < 35 else 1e-12
        assert abs(ours - theirs) <= tolerance, step


def reference_cosine_lr(epoch, base=0.256, warmup=5, end=100):
    """The reference's CosineLR (optimization/lr_schedulers.py) during `epoch`, stepped once
    when built and after every epoch of `epochs: [0, 1, 100]` (TrainingPolicy.on_epoch_end)."""
    if epoch < warmup:
        return base * (epoch + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (end - warmup))) * base


def test_reference_cosine_lr_stays_within_the_gap_the_report_states():
    conversion = convert_recipe(DATA / "resnet50_imagenet_s90.yaml", epochs=100,
                                model="resnet50")  # fmt: skip
    train = conversion.recipe.train
    stated = next(i.text for i in conversion.report.approximated if "CosineLR" in i.text)
    bound = float(re.search(r"at most ([0-9.]+)% of the peak", stated)[1]) / 100
    per_epoch, total = 50, 100 * 50
    worst = 0.0
    for step in range(total):
        ours = train.optimizer.lr * lr_factor(step, train.lr_schedule, per_epoch, total,
                                              train.optimizer.lr)  # fmt: skip
        worst = max(worst, abs(ours - reference_cosine_lr(step // per_epoch)) / 0.256)
    assert 0.19 < worst <= bound + 1e-9  # the warm-up's first step: 1/5 apart at most
