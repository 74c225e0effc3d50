"""Weightings: task weights from the Gramian of the task gradients (and the losses)."""

from ._base import Weighting, WeightingOutput
from .ew import EW
from .fixed import FixedWeights
from .gradnorm import GradNorm
from .mgda import MGDA
from .pcgrad import PCGrad
from .uw import UncertaintyWeighting

__all__ = [
    "EW",
    "MGDA",
    "FixedWeights",
    "GradNorm",
    "PCGrad",
    "UncertaintyWeighting",
    "Weighting",
    "WeightingOutput",
]
