"""One objective for classifiers and language models: cross-entropy per labelled position."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from acdc_recipe.models.objective import correct_and_count, cross_entropy, fits, logits_of


def test_a_classifier_gets_the_plain_cross_entropy() -> None:
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert torch.equal(
        cross_entropy(logits, labels, 0.1), F.cross_entropy(logits, labels, label_smoothing=0.1)
    )
    right, count = correct_and_count(logits, labels)
    assert int(right) == int((logits.argmax(1) == labels).sum()) and int(count) == 8


def test_a_language_model_is_scored_at_every_token_and_padding_is_ignored() -> None:
    logits, labels = torch.randn(2, 6, 11), torch.randint(0, 11, (2, 6))
    labels[1, 4:] = -100
    expected = F.cross_entropy(logits.reshape(12, 11), labels.reshape(12), ignore_index=-100)
    output = SimpleNamespace(logits=logits)  # a transformers ModelOutput has .logits
    assert torch.equal(cross_entropy(output, labels), expected)
    assert int(correct_and_count(output, labels)[1]) == 10


def test_outputs_that_hold_no_logits_and_shapes_that_do_not_fit_are_named() -> None:
    assert logits_of((torch.ones(2, 3), "extra")).shape == (2, 3)
    with pytest.raises(TypeError, match="needs logits"):
        logits_of({"scores": 1})
    assert "one score vector per label" in fits(
        torch.ones(1, 8), torch.zeros(1, 4, dtype=torch.long), None
    )
    assert "scores 8 classes per position, the data has 256" in fits(
        torch.ones(1, 4, 8), torch.zeros(1, 4, dtype=torch.long), 256
    )
    assert fits(torch.ones(1, 4, 256), torch.zeros(1, 4, dtype=torch.long), 256) is None
