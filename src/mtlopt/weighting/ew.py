r"""Equal weighting (EW): the plain multi-task baseline.

Every task gets the same weight: :math:`w_t = 1/K` (``reduction="mean"``) or :math:`w_t = 1`
(``reduction="sum"``), i.e. one ordinary backward pass of the mean (or sum) of the task losses.
Called "uniform scaling" by Sener & Koltun (2018) and "EW" in LibMTL and the Nash-MTL/FAMO tables.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ._base import Weighting, WeightingOutput

__all__ = ["EW"]


class EW(Weighting):
    """Equal weights, :math:`1/K` (``"mean"``, default) or 1 (``"sum"``)."""

    needs_gramian = False

    def __init__(self, reduction: Literal["mean", "sum"] = "mean") -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"EW reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def compute(self, gramian: Tensor | None, losses: Tensor) -> WeightingOutput:
        K = losses.shape[0]
        value = 1.0 / K if self.reduction == "mean" else 1.0
        return WeightingOutput(torch.full((K,), value, dtype=torch.float64))

    def __repr__(self) -> str:
        return f"EW(reduction={self.reduction!r})"
