"""FlopsMeter: the paper's FLOPs accounting, step by step, on hand-computed numbers."""

import pytest
import torch

from acdc_recipe.runtime.run_summary import FlopsMeter


def test_training_and_inference_multipliers_follow_the_paper_accounting():
    # Two prunable layers (100 and 300 FLOPs per sample) and 100 FLOPs never pruned.
    meter = FlopsMeter((100, 300), fixed_flops=100)
    for _ in range(3):  # dense steps: 3 x 500 each
        meter.count_step()
    masks = [torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])]
    meter.set_masks(masks)  # densities 0.25 and 0.4: forward 100 + 25 + 120 = 245
    assert meter.forward_flops() == 245
    for _ in range(2):  # sparse steps: forward and backward both at the sparse cost
        meter.count_step()
    assert meter.training_multiplier() == pytest.approx((3 * 500 + 2 * 245) / (5 * 500))
    assert meter.inference_multiplier() == pytest.approx(245 / 500)
    meter.set_masks(None)
    assert meter.inference_multiplier() == 1.0
