"""The methods that weigh the tasks, by what they read.

- :class:`LossWeighting`: from the K losses (EW, fixed weights, uncertainty weighting, DWA, RLW, GLS,
  SI, IMTL-L, FAMO, STCH);
- :class:`GramianWeighting`: from the K×K Gramian of the task gradients (MGDA, PCGrad, GradNorm,
  Pareto MTL, EPO, IMTL-G, IMTL, Aligned-MTL, ConFIG, GradVac, CAGrad, UPGrad, DualProj, Nash-MTL,
  FairGrad; MoDo and SDMGrad read a cross-Gramian of two independent batches per step);
- :class:`DirectionMethod`: from the K×P Jacobian itself, with per-task per-parameter state, returning
  the shared update (ExcessMTL, MoCo, DB-MTL, GradDrop).
"""

from __future__ import annotations

import warnings
from typing import Any

from ._base import (
    BatchRoles,
    DirectionMethod,
    DirectionOutput,
    FeatureBatch,
    GramianWeighting,
    Groups,
    HeadWeighting,
    LossOutput,
    LossWeighting,
    Method,
    Update,
    WeightingOutput,
    WeightSum,
)
from .aligned_mtl import AlignedMTL
from .cagrad import CAGrad
from .config import ConFIG
from .db_mtl import DBMTL
from .dualproj import DualProj
from .dwa import DWA
from .epo import EPO, non_uniformity
from .ew import EW
from .excess_mtl import ExcessMTL
from .fairgrad import FairGrad
from .famo import FAMO
from .fixed import FixedWeights
from .gls import GLS
from .graddrop import GradDrop
from .gradnorm import GradNorm
from .gradvac import GradVac
from .imtl import IMTL
from .imtl_g import IMTLG
from .imtl_l import IMTLL
from .mgda import MGDA
from .moco import MoCo
from .modo import MoDo
from .nash_mtl import NashMTL
from .pcgrad import PCGrad
from .pmtl import ParetoMTL, circle_preferences
from .rlw import RLW
from .sdmgrad import SDMGrad
from .si import SI
from .stch import STCH
from .upgrad import UPGrad
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
    "AlignedMTL",
    "BatchRoles",
    "CAGrad",
    "ConFIG",
    "DirectionMethod",
    "DirectionOutput",
    "DualProj",
    "ExcessMTL",
    "FairGrad",
    "FeatureBatch",
    "FixedWeights",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "GramianWeighting",
    "Groups",
    "HeadWeighting",
    "LossOutput",
    "LossWeighting",
    "Method",
    "MoCo",
    "MoDo",
    "NashMTL",
    "PCGrad",
    "ParetoMTL",
    "SDMGrad",
    "UPGrad",
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
    AlignedMTL,
    ConFIG,
    GradVac,
    CAGrad,
    UPGrad,
    DualProj,
    NashMTL,
    FairGrad,
    ExcessMTL,
    MoCo,
    DBMTL,
    GradDrop,
    MoDo,
    SDMGrad,
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
