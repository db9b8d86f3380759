"""Rule resolution: match forms, first match wins, errors with near misses."""

from __future__ import annotations

import pytest

from acdc_recipe.compiler.discovery import discover
from acdc_recipe.compiler.errors import CompileError
from acdc_recipe.compiler.kinds import LAYER_KINDS
from acdc_recipe.compiler.rules import resolve_rules
from acdc_recipe.compiler.tracing import trace
from acdc_recipe.language.schema import Rule

from .conftest import AttentionNet, vision_model


def resolve(model, *rules: dict, prunable=tuple(LAYER_KINDS)):
    candidates = discover(trace(model)).candidates
    return resolve_rules([Rule.model_validate(r) for r in rules], candidates, prunable)


@pytest.fixture(scope="module")
def resnet18():
    return vision_model("resnet18")


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ("conv1", {"conv1.weight"}),
        ("fc.weight", {"fc.weight"}),
        ("layer4.*.conv2", {"layer4.0.conv2.weight", "layer4.1.conv2.weight"}),
        ("re:layer4\\..*conv2", {"layer4.0.conv2.weight", "layer4.1.conv2.weight"}),
        ("type:Linear", {"fc.weight"}),
    ],
)
def test_match_forms(resnet18, match: str, expected: set[str]) -> None:
    resolution = resolve(resnet18, {"match": match, "target": 0.5})
    assert {n for n, rule in resolution.pruned.items() if rule == 0} == expected
    assert len(resolution.pruned) == 21  # every weight is still pruned, the rest by default


def test_dense_rule_and_first_match_wins(resnet18) -> None:
    resolution = resolve(
        resnet18,
        {"match": "conv1", "dense": True},
        {"match": "re:.*conv1", "target": 0.8},
        {"match": "type:Conv2d", "target": 0.95},
    )
    assert resolution.dense == {"conv1.weight": 0}
    assert "conv1.weight" not in resolution.pruned
    assert resolution.pruned["layer1.0.conv1.weight"] == 1
    assert resolution.pruned["layer1.0.conv2.weight"] == 2
    assert resolution.pruned["fc.weight"] is None


def test_prunable_types_filter(resnet18) -> None:
    resolution = resolve(resnet18, prunable=("Linear",))
    assert list(resolution.pruned) == ["fc.weight"]


def test_include_adds_a_norm_weight(resnet18) -> None:
    resolution = resolve(resnet18, {"match": "bn1.weight", "include": True})
    assert resolution.pruned["bn1.weight"] == 0
    assert "bn1.bias" not in resolution.pruned


def test_attention_type_rules() -> None:
    resolution = resolve(AttentionNet(), {"match": "type:MultiheadAttention", "target": 0.5})
    claimed = {n for n, r in resolution.pruned.items() if r == 0}
    assert claimed == {"attn.in_proj_weight", "attn.out_proj.weight"}


def test_rule_matching_nothing_names_near_misses(resnet18) -> None:
    with pytest.raises(CompileError) as info:
        resolve(
            resnet18, {"match": "conv1", "dense": True}, {"match": "layer4.0.conv3", "target": 0.9}
        )
    message = str(info.value)
    assert info.value.path == ("sparsity", "rules", 1, "match")
    assert "rule 1 (match 'layer4.0.conv3')" in message
    assert "sparsity.rules[1].match" in message
    assert "'layer4.0.conv2'" in message and "'layer4.0.conv1'" in message
    assert "\n" not in message


def test_every_rule_that_claims_nothing_is_reported(resnet18) -> None:
    with pytest.raises(CompileError) as info:
        resolve(
            resnet18,
            {"match": "conv1", "dense": True},
            {"match": "layer4.0.conv3", "target": 0.9},
            {"match": "type:Conv2d", "target": 0.8},
            {"match": "fc.wieght", "dense": True},
        )
    lines = str(info.value).splitlines()
    assert lines[0] == "the recipe has 2 problems with this model:"
    assert lines[1].startswith("  - recipe key `sparsity.rules[1].match`: rule 1 ")
    assert lines[2].startswith("  - recipe key `sparsity.rules[3].match`: rule 3 ")
    assert "'fc.weight'" in lines[2] and info.value.path == ("sparsity", "rules", 1, "match")


def test_unknown_type_lists_types(resnet18) -> None:
    with pytest.raises(CompileError, match="Closest types: .*Conv2d"):
        resolve(resnet18, {"match": "type:Conv3d", "target": 0.5})


def test_shadowed_rule_is_an_error(resnet18) -> None:
    with pytest.raises(CompileError, match="claimed by rule 0"):
        resolve(
            resnet18, {"match": "type:Conv2d", "target": 0.8}, {"match": "conv1", "dense": True}
        )


def test_rule_on_a_norm_without_include(resnet18) -> None:
    with pytest.raises(CompileError, match="not pruned by default: bn1.weight .*include: true"):
        resolve(resnet18, {"match": "bn1", "target": 0.5})


def test_invalid_regex_is_refused_when_the_recipe_is_validated() -> None:
    with pytest.raises(ValueError, match="invalid regular expression 'layer\\('"):
        Rule(match="re:layer(", target=0.5)
