"""The methods that weigh the tasks, by what they read.

- :class:`LossWeighting`: from the K losses (EW, fixed weights, uncertainty weighting, DWA, RLW, GLS,
  SI, IMTL-L, FAMO, STCH);
- :class:`GramianWeighting`: from the K×K Gramian of the task gradients (MGDA, PCGrad, GradNorm,
  Pareto MTL, EPO, IMTL-G, IMTL);
- :class:`DirectionMethod`: from the K×P Jacobian itself, with per-task per-parameter state, returning
  the shared update (ExcessMTL, MoCo, DB-MTL, GradDrop).
"""

from __future__ import annotations

import warnings
from typing import Any

from ._base import (
    DirectionMethod,
    DirectionOutput,
    FeatureBatch,
    GramianWeighting,
    HeadWeighting,
    LossOutput,
    LossWeighting,
    Method,
    Update,
    WeightingOutput,
    WeightSum,
)
from .db_mtl import DBMTL
from .dwa import DWA
from .epo import EPO, non_uniformity
from .ew import EW
from .excess_mtl import ExcessMTL
from .famo import FAMO
from .fixed import FixedWeights
from .gls import GLS
from .graddrop import GradDrop
from .gradnorm import GradNorm
from .imtl import IMTL
from .imtl_g import IMTLG
from .imtl_l import IMTLL
from .mgda import MGDA
from .moco import MoCo
from .pcgrad import PCGrad
from .pmtl import ParetoMTL, circle_preferences
from .rlw import RLW
from .si import SI
from .stch import STCH
from .uw import UncertaintyWeighting

__all__ = [
    "DBMTL",
    "DWA",
    "EPO",
    "EW",
    "FAMO",
    "GLS",
    "IMTL",
    "IMTLG",
    "IMTLL",
    "MGDA",
    "RLW",
    "SI",
    "STCH",
    "DirectionMethod",
    "DirectionOutput",
    "ExcessMTL",
    "FeatureBatch",
    "FixedWeights",
    "GradDrop",
    "GradNorm",
    "GramianWeighting",
    "HeadWeighting",
    "LossOutput",
    "LossWeighting",
    "Method",
    "MoCo",
    "PCGrad",
    "ParetoMTL",
    "UncertaintyWeighting",
    "Update",
    "WeightSum",
    "WeightingOutput",
    "circle_preferences",
    "non_uniformity",
]

# Every method exported here, for `mtlopt list`, the contract tests and the docs table.
METHODS: tuple[type[Method], ...] = (
    EW,
    FixedWeights,
    UncertaintyWeighting,
    MGDA,
    PCGrad,
    GradNorm,
    ParetoMTL,
    EPO,
    DWA,
    RLW,
    GLS,
    SI,
    IMTLL,
    FAMO,
    STCH,
    IMTLG,
    IMTL,
    ExcessMTL,
    MoCo,
    DBMTL,
    GradDrop,
)


def __getattr__(name: str) -> Any:
    if name == "Weighting":  # the 0.1 interface, importable for one more release
        warnings.warn(
            "mtlopt.Weighting is deprecated since 0.2: it is mtlopt.Method, the base of mtlopt.LossWeighting "
            "and mtlopt.GramianWeighting",
            DeprecationWarning,
            stacklevel=2,
        )
        return Method
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
