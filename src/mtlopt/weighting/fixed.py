r"""Fixed task weights (linear scalarization): the update of :math:`\sum_t c_t L_t` for given c.

The "grid search" baseline of Sener & Koltun (2018) trains one model per weight vector of a grid;
each of those models uses this weighting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._base import LossWeighting, WeightingOutput, WeightSum

__all__ = ["FixedWeights"]


class FixedWeights(LossWeighting):
    """Constant weights :math:`c_1, \\dots, c_K` (finite, non-negative, not all zero); total :math:`\\sum_t c_t`."""

    weight_sum: WeightSum = "sum of the weights"

    def __init__(self, weights: Sequence[float]) -> None:
        values = [float(w) for w in weights]
        if not values:
            raise ValueError("FixedWeights needs at least one weight")
        for i, w in enumerate(values):
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"FixedWeights: weight {i} is {w}; expected a finite value >= 0")
        if sum(values) == 0:
            raise ValueError("FixedWeights: all weights are 0")
        self.weights = values
        self.num_tasks = len(values)

    def weigh(self, values: Tensor) -> WeightingOutput:
        return WeightingOutput(torch.tensor(self.weights, dtype=torch.float64))

    def __repr__(self) -> str:
        return f"FixedWeights({self.weights})"
