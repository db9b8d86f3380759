"""Mutated SparseML recipes and reference configs: each converts to a recipe that loads, or
raises ConversionError (one paragraph); never another exception, never a hang."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acdc_recipe.convert import ConversionError, convert_text
from acdc_recipe.language.loading import load_recipe_text

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
MODIFIERS = [
    ("EpochRangeModifier", {"start_epoch": 0, "end_epoch": 30}),
    ("LearningRateFunctionModifier",
     {"start_epoch": 0, "end_epoch": 30, "lr_func": "cosine", "init_lr": 0.1, "final_lr": 0.0}),
    ("ACDCPruningModifier",
     {"compression_sparsity": "eval(sparsity)", "start_epoch": 2, "end_epoch": 22,
      "update_frequency": 4, "params": ["re:.*weight"], "global_sparsity": True}),
    ("GMPruningModifier",
     {"init_sparsity": 0.9, "final_sparsity": 0.9, "start_epoch": 22, "end_epoch": 30,
      "update_frequency": 1, "params": ["re:.*weight"], "global_sparsity": True}),
]  # fmt: skip
REFERENCE = {
    "pruners": {"pruner_1": {"class": "UnstructuredMagnitudePruner", "epochs": [2, 4, 19],
                             "initial_sparsity": 0.9, "target_sparsity": 0.9,
                             "weight_only": True, "modules": ["fc1", "fc2"]}},
    "recyclers": {"recycler_1": {"class": "RestoreWeights", "epochs": [4, 4, 17],
                                 "weight_only": True, "modules": ["fc1", "fc2"]}},
    "trainers": {"default_trainer": {
        "optimizer": {"class": "SGD", "lr": 0.1, "momentum": 0.9},
        "lr_scheduler": {"class": "ExponentialLR", "gamma": 0.1, "epochs": [5, 5, 15]}}},
}  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**7), 10**7),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(
        ["eval(sparsity)", "eval(sparsity * 2)", "eval(nope)", "eval(", "eval(1/0)",
         "__ALL_PRUNABLE__", "__ALL__", "re:(", "block4", "2:4", "cubic", "cosine", "linear",
         "MultiStepLR", "MagnitudeNMPruner", "RestoreWeights", "eval(10**400)"]
    ),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=5,
)  # fmt: skip


def sparseml_text(modifiers, sparsity):
    lines = [f"sparsity: {json.dumps(sparsity)}", "modifiers:"]
    lines += [f"  - !{kind} {json.dumps(fields)}" for kind, fields in modifiers]
    return "\n".join(lines) + "\n"


def converts_or_explains(text, source, **options):
    try:
        conversion = convert_text(text, source, **options)
    except ConversionError as error:
        assert str(error) and "Traceback" not in str(error)
        return
    assert load_recipe_text(conversion.text) == conversion.recipe


@pytest.mark.slow
@FUZZ
@given(
    index=st.integers(0, len(MODIFIERS) - 1),
    key=st.sampled_from(sorted({k for _, f in MODIFIERS for k in f} | {"mask_type", "extra"})),
    value=values,
    sparsity=scalars,
    drop=st.booleans(),
)
def test_mutated_sparseml_recipes_convert_or_raise_conversion_error(
    index, key, value, sparsity, drop
):
    modifiers = [(kind, dict(fields)) for kind, fields in MODIFIERS]
    if drop:
        modifiers[index][1].pop(key, None)
    else:
        modifiers[index][1][key] = value
    try:
        text = sparseml_text(modifiers, sparsity)
    except ValueError:  # NaN/inf have no JSON form
        return
    converts_or_explains(text, "fuzz.yaml", model="mlp")


@pytest.mark.slow
@FUZZ
@given(
    section=st.sampled_from(["pruners", "recyclers", "trainers"]),
    key=st.sampled_from(["class", "epochs", "modules", "initial_sparsity", "target_sparsity",
                         "weight_only", "optimizer", "lr_scheduler", "N", "M", "gamma"]),
    value=values,
    epochs=st.integers(1, 40),
)  # fmt: skip
def test_mutated_reference_configs_convert_or_raise_conversion_error(section, key, value, epochs):
    config = json.loads(json.dumps(REFERENCE))
    entry = next(iter(config[section].values()))
    if section == "trainers":
        entry = entry["lr_scheduler"] if key == "gamma" else entry
    entry[key] = value
    converts_or_explains(yaml.safe_dump(config), "fuzz.yaml", epochs=epochs, model="mlp")


@FUZZ
@given(text=st.text(max_size=200))
def test_arbitrary_text_converts_or_raises_conversion_error(text):
    converts_or_explains(text, "fuzz.yaml", epochs=10)


NON_FINITE = [
    ("ACDCPruningModifier", "end_epoch", ".inf"),
    ("ACDCPruningModifier", "end_epoch", ".nan"),
    ("ACDCPruningModifier", "start_epoch", "-.inf"),
    ("GMPruningModifier", "start_epoch", ".nan"),
    ("GMPruningModifier", "end_epoch", "1" + "0" * 400),
    ("ACDCPruningModifier", "compression_sparsity", "'eval((-8)**0.5 // 2)'"),
    ("ACDCPruningModifier", "compression_sparsity", "'eval((-8)**0.5 % 2)'"),
]


def test_non_finite_and_complex_numbers_are_conversion_errors():
    for kind, key, text in NON_FINITE:
        lines = ["sparsity: 0.9", "modifiers:"]
        for name, fields in MODIFIERS:
            body = ", ".join(
                f"{k}: {text if (name, k) == (kind, key) else json.dumps(v)}"
                for k, v in fields.items()
            )
            lines.append(f"  - !{name} {{{body}}}")
        try:
            convert_text("\n".join(lines) + "\n", "recipe.yaml")
        except ConversionError as error:
            assert key in str(error) or "finite" in str(error), (text, str(error))
        else:
            raise AssertionError(f"{kind}.{key}: {text} converted")
