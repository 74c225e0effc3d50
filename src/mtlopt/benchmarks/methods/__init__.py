"""Methods as the benchmark trainer runs them.

A method is a :class:`MethodRunner`: it builds its model(s) and optimizer(s), takes one training step
on a batch, predicts every task's output, and saves/restores its whole state. The trainer knows only
this interface, so a new method plugs in by registering a runner (``@register``) with its name, a
one-line description and the command-line options it accepts.

The runners are grouped by family: :mod:`.weightings` (one model, one weighting), :mod:`.losses`
(one model, a loss-level peer method with its loop hooks), :mod:`.gradients` (one model, a
Gramian peer method: CAGrad, UPGrad, DualProj, Nash-MTL, FairGrad, IMTL-G, IMTL, Aligned-MTL, ConFIG,
GradVac), :mod:`.optimizers`
(methods that schedule their own optimizer steps) and :mod:`.population` (one model per trade-off);
the interface and the registry are in :mod:`._base`.
"""

# The import order is the registration order: the order of `mtlopt list`.
# isort: off
from ._base import METHODS, MethodRunner, OptimizerSettings, Option, get_method, method_options, register
from .weightings import (
    EWRunner,
    GradNormRunner,
    GridRunner,
    MGDARunner,
    MGDAUBRunner,
    PCGradRunner,
    SingleModelRunner,
    UWRunner,
    last_weight_layer,
)
from .losses import (
    DWARunner,
    EpochRunner,
    FAMORunner,
    GLSRunner,
    IMTLLRunner,
    RLWRunner,
    SIRunner,
    STCHRunner,
)
from .gradients import (
    AlignedMTLRunner,
    AlignedMTLUBRunner,
    CAGradRunner,
    ConFIGRunner,
    DualProjRunner,
    FairGradRunner,
    GradientRunner,
    GradVacRunner,
    IMTLGRunner,
    IMTLRunner,
    NashMTLRunner,
    UPGradRunner,
)
from .optimizers import ADAPTIVE_LR_WARNING, AlternatingRunner, MAORunner, STLRunner
from .population import (
    EPORunner,
    LSSweepRunner,
    MTGDRunner,
    ParetoMTLRunner,
    PopulationRunner,
    RaySetRunner,
)
from .set_learners import COSMOSRunner, PaMaLRunner, PHNEPORunner, PHNLSRunner, PHNRunner
# isort: on

__all__ = [
    "ADAPTIVE_LR_WARNING",
    "METHODS",
    "AlignedMTLRunner",
    "AlignedMTLUBRunner",
    "AlternatingRunner",
    "CAGradRunner",
    "COSMOSRunner",
    "ConFIGRunner",
    "DWARunner",
    "DualProjRunner",
    "EPORunner",
    "EWRunner",
    "EpochRunner",
    "FAMORunner",
    "FairGradRunner",
    "GLSRunner",
    "GradNormRunner",
    "GradVacRunner",
    "GradientRunner",
    "GridRunner",
    "IMTLGRunner",
    "IMTLLRunner",
    "IMTLRunner",
    "LSSweepRunner",
    "MAORunner",
    "MGDARunner",
    "MGDAUBRunner",
    "MTGDRunner",
    "MethodRunner",
    "NashMTLRunner",
    "OptimizerSettings",
    "Option",
    "PCGradRunner",
    "PHNEPORunner",
    "PHNLSRunner",
    "PHNRunner",
    "PaMaLRunner",
    "ParetoMTLRunner",
    "PopulationRunner",
    "RLWRunner",
    "RaySetRunner",
    "SIRunner",
    "STCHRunner",
    "STLRunner",
    "SingleModelRunner",
    "UPGradRunner",
    "UWRunner",
    "get_method",
    "last_weight_layer",
    "method_options",
    "register",
]
