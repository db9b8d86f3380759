"""The training objective of `acdc run`: cross-entropy of the logits' last axis against one
label per leading position.

Which positions carry labels is the data source's choice, so one objective serves both tasks
without a special case: an image classifier's logits are ``(batch, classes)`` with one label
per sample; a language model's are ``(batch, tokens, vocabulary)`` with the next token as the
label of every position. Labels of -100 are ignored (padding). A model may return its logits
as a tensor, as the first element of a tuple, or as the ``logits`` of an output object
(transformers' ``ModelOutput``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

IGNORED = -100


def logits_of(output: Any) -> Tensor:
    """The logits a model returned (a tensor, ``output.logits`` or ``output[0]``)."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"the model returned a {type(output).__name__}; acdc run needs logits: a tensor, a "
        "tuple starting with one, or an object with a .logits tensor"
    )


def cross_entropy(
    output: Any, labels: Tensor, label_smoothing: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy over every labelled position (in float32 whatever the logits' dtype)."""
    logits = logits_of(output).float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        label_smoothing=label_smoothing,
        reduction=reduction,
        ignore_index=IGNORED,
    )


def correct_and_count(output: Any, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positions whose top logit is the label, labelled positions), as 0-dim tensors."""
    predicted = logits_of(output).argmax(dim=-1)
    labelled = labels != IGNORED
    return (predicted.eq(labels) & labelled).sum(), labelled.sum()


def fits(output: Any, labels: Tensor, classes: int | None) -> str | None:
    """Why the logits cannot be scored against these labels, or None when they can."""
    logits = logits_of(output)
    if tuple(logits.shape[:-1]) != tuple(labels.shape):
        return (
            f"its logits have shape {tuple(logits.shape)}, which does not hold one score vector "
            f"per label of shape {tuple(labels.shape)}"
        )
    if classes is not None and logits.shape[-1] < classes:
        return f"it scores {logits.shape[-1]} classes per position, the data has {classes}"
    return None


def summed_loss(output: Any, labels: Tensor) -> Tensor:
    """The summed (not averaged) loss, for evaluation totals."""
    return cross_entropy(output, labels, reduction="sum").to(torch.float64)
