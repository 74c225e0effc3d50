r"""Equal weighting (EW): the plain multi-task baseline.

Every task gets the same weight: :math:`w_t = 1/K` (``reduction="mean"``) or :math:`w_t = 1`
(``reduction="sum"``), i.e. one ordinary backward pass of the mean (or sum) of the task losses.
Called "uniform scaling" by Sener & Koltun (2018) and "EW" in LibMTL and the Nash-MTL/FAMO tables.

Total weight: 1 with the default ``"mean"``, K with ``"sum"``. LibMTL's ``EW`` backpropagates the sum
of the losses: it is ``EW("sum")``, with a K-times larger shared step at one learning rate (TorchJD's
``Mean`` aggregator is ``EW("mean")``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .._options import check_choice
from ._base import LossWeighting, WeightingOutput, WeightSum

__all__ = ["EW"]


Reduction = Literal["mean", "sum"]


class EW(LossWeighting):
    """Equal weights, :math:`1/K` (``"mean"``, default) or 1 (``"sum"``, LibMTL's EW)."""

    def __init__(self, reduction: Reduction = "mean") -> None:
        check_choice("EW", "reduction", reduction, Reduction)
        self.reduction: Reduction = reduction

    @property
    def weight_sum(self) -> WeightSum:  # type: ignore[override]
        return "1" if self.reduction == "mean" else "K"

    def weigh(self, values: Tensor) -> WeightingOutput:
        K = values.shape[0]
        value = 1.0 / K if self.reduction == "mean" else 1.0
        return WeightingOutput(torch.full((K,), value, dtype=torch.float64))

    def __repr__(self) -> str:
        return f"EW(reduction={self.reduction!r})"
