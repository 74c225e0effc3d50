"""mtlopt: optimization methods for multi-task learning, for your own PyTorch training loop."""

from importlib.metadata import PackageNotFoundError, version

from .errors import NonFiniteError
from .min_norm import MinNormResult, min_norm

try:
    __version__ = version("mtlopt")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["MinNormResult", "NonFiniteError", "__version__", "min_norm"]
