"""Converted recipes compile against the named model and run: `acdc run` recomputes the masks
at exactly the source's epochs and drops them at exactly its restore epochs."""

from __future__ import annotations

from pathlib import Path

import pytest

from acdc_recipe.compiler import CompileError
from acdc_recipe.convert import convert_recipe, convert_text
from acdc_recipe.formats.records import RunStarted, read_records
from acdc_recipe.language.loading import load_recipe_text
from acdc_recipe.models import compile_recipe_model
from acdc_recipe.runtime.events import MasksComputed, PhaseStarted
from acdc_recipe.trainer.loop import train

DATA = Path(__file__).parents[1] / "acdc_recipe" / "convert" / "data"
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
    # Phases of one epoch from 0, dense first; end_epoch 6 moves back to 5, a sparse phase
    # SparseML holds to the end of the run.
    assert masks == [1, 3, 5]
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
