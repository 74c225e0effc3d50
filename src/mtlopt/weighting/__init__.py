"""Weightings: task weights from the Gramian of the task gradients (and the losses)."""

from ._base import Weighting, WeightingOutput
from .epo import EPO, non_uniformity
from .ew import EW
from .fixed import FixedWeights
from .gradnorm import GradNorm
from .mgda import MGDA
from .pcgrad import PCGrad
from .pmtl import ParetoMTL, circle_preferences
from .uw import UncertaintyWeighting

__all__ = [
    "EPO",
    "EW",
    "MGDA",
    "FixedWeights",
    "GradNorm",
    "PCGrad",
    "ParetoMTL",
    "UncertaintyWeighting",
    "Weighting",
    "WeightingOutput",
    "circle_preferences",
    "non_uniformity",
]
