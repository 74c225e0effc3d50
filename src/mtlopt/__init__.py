"""mtlopt: optimization methods for multi-task learning, for your own PyTorch training loop."""

from importlib.metadata import PackageNotFoundError, version

from .alternating import AlternatingStepResult, AlternatingSteps
from .backward import BackwardResult, backward
from .errors import NonFiniteError
from .gradients import feature_jacobian, gramian, jacobian
from .mao import MAO
from .min_norm import MinNormResult, min_norm
from .weighting import EW, MGDA, FixedWeights, Weighting, WeightingOutput

try:
    __version__ = version("mtlopt")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "EW",
    "MAO",
    "MGDA",
    "AlternatingStepResult",
    "AlternatingSteps",
    "BackwardResult",
    "FixedWeights",
    "MinNormResult",
    "NonFiniteError",
    "Weighting",
    "WeightingOutput",
    "__version__",
    "backward",
    "feature_jacobian",
    "gramian",
    "jacobian",
    "min_norm",
]
