"""Weightings: task weights from the Gramian of the task gradients (and the losses)."""

from ._base import Weighting, WeightingOutput
from .ew import EW
from .fixed import FixedWeights
from .mgda import MGDA

__all__ = ["EW", "MGDA", "FixedWeights", "Weighting", "WeightingOutput"]
