"""Layer-adaptive magnitude scores (LAMP; Lee, Park, Mo, Ahn and Shin, ICLR 2021).

A weight's score is its square divided by the sum of the squares of the weights of its layer
that are at least as large (itself and its ties included). Within a layer the order is the
magnitude order; across layers the scores are comparable whatever each layer's scale, which
batch norm makes arbitrary. The largest weight of a layer scores 1 (or 1/k for k tied
largest weights), so one threshold over all scores prunes every layer in proportion to how
its magnitude is spread instead of emptying the layers with small weights first.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def lamp_scores(weight: Tensor) -> Tensor:
    """LAMP scores of one layer's weights, shaped like `weight`, as float32.

    Squares and sums are in float64 (exact squares of float32 weights), one sort of the layer;
    a layer of zeros scores 0 everywhere. Deterministic: equal weights give equal scores, and
    the result does not depend on the sort's order among ties.
    """
    squares = weight.detach().reshape(-1).to(torch.float64).square()
    ascending = torch.sort(squares).values
    at_least = ascending.flip(0).cumsum(0).flip(0)  # at_least[j]: sum of ascending[j:]
    first_tie = torch.searchsorted(ascending, squares, side="left").clamp_(max=len(squares) - 1)
    denominator = at_least[first_tie]
    # A zero denominator holds only zeros (score 0); NaN or inf weights give NaN scores, which
    # the selection refuses like non-finite weights.
    scores = torch.where(denominator > 0, squares / denominator, squares)
    return scores.to(torch.float32).reshape(weight.shape)
