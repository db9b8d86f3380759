"""LAMP scores: the definition element by element, scale invariance, the top of every layer."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acdc_recipe.runtime.lamp import lamp_scores


def reference_scores(weight: torch.Tensor) -> list[float]:
    """w^2 / (sum of v^2 over the layer's v with |v| >= |w|), one weight at a time."""
    values = [float(v) for v in weight.reshape(-1).double()]
    scores = []
    for w in values:
        below = sum(v * v for v in values if abs(v) >= abs(w))
        scores.append(w * w / below if below > 0 else 0.0)
    return scores


layers = st.lists(
    st.sampled_from([0.0, 0.5, -0.5, 1.0, -2.0, 3.0, 1e-3, -7.25, 0.125]), min_size=1, max_size=40
)


@settings(max_examples=150, deadline=None)
@given(values=layers, rows=st.integers(1, 3))
def test_scores_follow_the_definition_ties_and_zeros_included(values, rows):
    weight = torch.tensor(values * rows, dtype=torch.float32).reshape(rows, -1)
    scores = lamp_scores(weight)
    assert scores.shape == weight.shape and scores.dtype == torch.float32
    expected = torch.tensor(reference_scores(weight), dtype=torch.float32).reshape(weight.shape)
    assert torch.allclose(scores, expected, rtol=1e-6, atol=0)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), exponent=st.integers(-20, 20))
def test_scaling_a_layer_leaves_its_scores_unchanged(seed, exponent):
    weight = torch.randn(6, 9, generator=torch.Generator().manual_seed(seed))
    scaled = weight * 2.0**exponent  # exact, as batch norm makes a conv's scale irrelevant
    assert torch.equal(lamp_scores(scaled), lamp_scores(weight))


def test_the_largest_weight_scores_one_and_k_tied_largest_score_one_over_k():
    assert lamp_scores(torch.tensor([0.1, -4.0, 2.0]))[1] == 1.0
    tied = lamp_scores(torch.tensor([3.0, -3.0, 3.0, 1.0]))
    assert torch.allclose(tied[:3], torch.full((3,), 1 / 3))
    assert math.isclose(float(tied[3]), 1 / 28, rel_tol=1e-6)


def test_a_layer_of_zeros_scores_zero_and_non_finite_weights_score_nan():
    assert torch.equal(lamp_scores(torch.zeros(2, 3)), torch.zeros(2, 3))
    assert lamp_scores(torch.tensor([1.0, float("nan"), 2.0])).isnan().any()
    assert lamp_scores(torch.tensor([1.0, float("inf"), 2.0])).isnan().any()
