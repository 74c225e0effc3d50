"""mtlopt: optimization methods for multi-task learning, for your own PyTorch training loop."""

from importlib.metadata import PackageNotFoundError, version

from .alternating import AlternatingStepResult, AlternatingSteps
from .backward import BackwardResult, backward
from .errors import NonFiniteError
from .gradients import feature_jacobian, gramian, jacobian
from .hypervolume import hypervolume, non_dominated
from .mao import MAO
from .min_norm import MinNormResult, min_norm
from .population import Population, PopulationStepResult, Transfer, transfer_matrix
from .preferences import check_preferences, das_dennis, preference_vectors
from .scalarization import IdealPoint
from .set_learners import COSMOS, PHN, PaMaL, ParetoHypernetwork, PreferenceInput, WeightEnsemble
from .weighting import (
    DBMTL,
    DWA,
    EPO,
    EW,
    FAMO,
    GLS,
    IMTL,
    IMTLG,
    IMTLL,
    MGDA,
    RLW,
    SI,
    STCH,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DirectionMethod,
    DirectionOutput,
    DualProj,
    ExcessMTL,
    FairGrad,
    FixedWeights,
    GradDrop,
    GradNorm,
    GradVac,
    GramianWeighting,
    LossOutput,
    LossWeighting,
    Method,
    MoCo,
    MoDo,
    NashMTL,
    ParetoMTL,
    PCGrad,
    SDMGrad,
    UncertaintyWeighting,
    UPGrad,
    WeightingOutput,
    circle_preferences,
    non_uniformity,
)


def __getattr__(name: str) -> object:
    if name == "Weighting":  # deprecated alias (see mtlopt.weighting)
        from . import weighting

        return weighting.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    __version__ = version("mtlopt")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "COSMOS",
    "DBMTL",
    "DWA",
    "EPO",
    "EW",
    "FAMO",
    "GLS",
    "IMTL",
    "IMTLG",
    "IMTLL",
    "MAO",
    "MGDA",
    "PHN",
    "RLW",
    "SI",
    "STCH",
    "AlignedMTL",
    "AlternatingStepResult",
    "AlternatingSteps",
    "BackwardResult",
    "CAGrad",
    "ConFIG",
    "DirectionMethod",
    "DirectionOutput",
    "DualProj",
    "ExcessMTL",
    "FairGrad",
    "FixedWeights",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "GramianWeighting",
    "IdealPoint",
    "LossOutput",
    "LossWeighting",
    "Method",
    "MinNormResult",
    "MoCo",
    "MoDo",
    "NashMTL",
    "NonFiniteError",
    "PCGrad",
    "PaMaL",
    "ParetoHypernetwork",
    "ParetoMTL",
    "Population",
    "PopulationStepResult",
    "PreferenceInput",
    "SDMGrad",
    "Transfer",
    "UPGrad",
    "UncertaintyWeighting",
    "WeightEnsemble",
    "WeightingOutput",
    "__version__",
    "backward",
    "check_preferences",
    "circle_preferences",
    "das_dennis",
    "feature_jacobian",
    "gramian",
    "hypervolume",
    "jacobian",
    "min_norm",
    "non_dominated",
    "non_uniformity",
    "preference_vectors",
    "transfer_matrix",
]
