"""Optional dependencies of the core: imported where they are used, refused with an install hint.

The core needs torch and numpy only. A method or function that needs more (EPO: scipy's LP solver;
the hypervolume: moocore) calls :func:`require` when it is constructed (or, for a function, called),
so that a missing package is reported at once, with the command that installs it, and not at the
first training step.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingOptionalDependency", "require"]


class MissingOptionalDependency(ImportError):
    """An optional package that a method or function of mtlopt needs is not installed.

    ``name`` is the package's import name; the message says which extra installs it.
    """


def require(module: str, *, extra: str, needed_by: str, purpose: str = "") -> ModuleType:
    """Import ``module``, or raise :class:`MissingOptionalDependency` with an install hint.

    ``extra``: the mtlopt extra that declares the package; ``needed_by``: what needs it (the message's
    subject); ``purpose``: what it is used for, e.g. ``" to solve its linear programs"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.partition(".")[0]
        raise MissingOptionalDependency(
            f"{needed_by} needs {package}{purpose}, but {package} is not installed (or does not "
            f'import: {error}); install it with `pip install "mtlopt[{extra}]"` (or `pip install '
            f"{package}`)",
            name=package,
        ) from error
