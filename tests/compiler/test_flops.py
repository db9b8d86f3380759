"""FLOPs: dense totals agree with torch's FlopCounterMode; schedule multipliers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from acdc_recipe.compiler import FlopsMeter, MaskUpdate, scheduled_multipliers
from acdc_recipe.compiler.distribution import mask_groups
from acdc_recipe.compiler.flops import forward_multiplier, planned_densities

from .conftest import AttentionNet, BranchyNet, compile, make_recipe, vision_model

WEIGHT_OPS = {"convolution", "addmm", "mm", "_convolution"}


def counter_flops(model, x: torch.Tensor) -> int:
    """FLOPs torch counts for conv and linear (matrix-multiply) ops, excluding attention bmm/sdpa."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    return sum(
        v for op, v in counter.get_flop_counts()["Global"].items() if op.__name__ in WEIGHT_OPS
    )


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), [("resnet18", 64), ("vit_b_16", 224)])
def test_dense_flops_match_flop_counter(name: str, size: int) -> None:
    model = vision_model(name)
    compiled = compile(model, make_recipe((3, size, size)))
    assert compiled.dense_forward_flops == counter_flops(model, torch.zeros(1, 3, size, size))
    assert sum(p.dense_flops for p in compiled.params) == compiled.dense_forward_flops


def test_attention_and_functional_flops_match() -> None:
    model = AttentionNet()
    compiled = compile(model, make_recipe((6, 16)))
    assert compiled.dense_forward_flops == counter_flops(model, torch.zeros(1, 6, 16))
    by_name = {p.name: p.dense_flops for p in compiled.params}
    assert by_name["proj_weight"] == 2 * 6 * 16 * 16
    assert by_name["attn.in_proj_weight"] == 2 * 6 * 16 * 48
    assert by_name["attn.out_proj.weight"] == 2 * 6 * 16 * 16


def test_flops_are_per_sample() -> None:
    model = AttentionNet()
    one = compile(model, make_recipe((6, 16))).dense_forward_flops
    four = compile(model, make_recipe(), example_inputs=torch.zeros(4, 6, 16)).dense_forward_flops
    assert one == four


def test_fallback_flops_run_for_real() -> None:
    compiled = compile(BranchyNet(), make_recipe((3, 8, 8)))
    assert not compiled.traced
    assert compiled.weight_flops == {"conv.weight": 2 * 8 * 8 * 8 * 27, "fc.weight": 2 * 8 * 4}


def test_acdc_multipliers_from_the_schedule(small_cnn) -> None:
    compiled = compile(small_cnn, make_recipe((3, 8, 8)))
    total = sum(p.numel for p in compiled.params)
    density = 1 - round(0.9 * total) / total
    multipliers = scheduled_multipliers(compiled)
    # 18 epochs: 8 dense, 10 sparse (3 blocks of 2 and a final 4).
    assert multipliers.inference == pytest.approx(density)
    assert multipliers.training == pytest.approx((8 + 10 * density) / 18)


def test_meter_multipliers_from_measured_densities(small_cnn) -> None:
    compiled = compile(small_cnn, make_recipe((3, 8, 8)))
    meter = FlopsMeter(compiled.weight_flops)
    meter.count()
    meter.set_densities({p.name: 0.5 for p in compiled.params})
    meter.count()
    result = meter.multipliers()
    assert result.training == pytest.approx(0.75) and result.inference == pytest.approx(0.5)
    only_fc = {"fc.weight": 0.0}
    share = compiled.weight_flops["fc.weight"] / compiled.dense_forward_flops
    assert forward_multiplier(compiled.weight_flops, only_fc) == pytest.approx(1 - share)


def test_meter_follows_the_paper_accounting_step_by_step() -> None:
    # Two prunable weights (100 and 300 FLOPs per sample) and 100 FLOPs never pruned.
    meter = FlopsMeter({"a": 100, "b": 300, "fixed": 100})
    meter.count(3)  # dense steps: 500 each
    meter.set_densities({"a": 0.25, "b": 0.4})  # forward 25 + 120 + 100 = 245
    meter.count(2)
    result = meter.multipliers()
    assert result.training == pytest.approx((3 * 500 + 2 * 245) / (5 * 500))
    assert result.inference == pytest.approx(245 / 500)
    restored = FlopsMeter({"a": 100, "b": 300, "fixed": 100})
    restored.load_state_dict(meter.state_dict())
    assert restored.multipliers() == result
    meter.set_densities({})
    assert meter.multipliers().inference == 1.0


def test_planned_densities_follow_groups(small_cnn) -> None:
    recipe = make_recipe((3, 8, 8), scope="uniform", rules=[{"match": "fc", "dense": True}])
    compiled = compile(small_cnn, recipe)
    update = MaskUpdate(0.5, mask_groups(compiled.params, 0.5, 0.9))
    densities = planned_densities(compiled.plan, update)
    assert [p.name for p in compiled.params] == ["conv1.weight", "conv2.weight"]
    assert list(densities.values()) == pytest.approx([0.5, 0.5], abs=0.01)
    fc_share = compiled.weight_flops["fc.weight"] / compiled.dense_forward_flops
    assert forward_multiplier(compiled.weight_flops, densities) == pytest.approx(
        0.5 + 0.5 * fc_share, abs=0.01
    )
