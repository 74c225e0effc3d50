"""The 0.1 ``Weighting`` interface, kept importable for one release (deprecated).

``mtlopt.Weighting`` is now :class:`~mtlopt.Method`, the base of every method (so ``isinstance(m,
mtlopt.Weighting)`` still holds). A 0.1 subclass sets ``needs_gramian`` and implements
``compute(gramian, losses)``; :func:`as_method` adapts it to the protocol :func:`mtlopt.backward` reads.
Migrate by subclassing :class:`~mtlopt.LossWeighting` (``needs_gramian = False``: implement
``weigh(values)``) or :class:`~mtlopt.GramianWeighting` (implement ``weigh(gramian, losses)``).
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor

from ._base import DirectionMethod, GramianWeighting, LossOutput, LossWeighting, Method, WeightingOutput

__all__ = ["as_method"]


class _LossAdapter(LossWeighting):
    """A 0.1 ``needs_gramian = False`` weighting seen as a loss weighting."""

    def __init__(self, legacy: Any) -> None:
        self.legacy = legacy
        self.num_tasks = legacy.num_tasks
        self.head_weighting = legacy.head_weighting

    def weigh(self, values: Tensor) -> WeightingOutput:
        return self.legacy.compute(None, values)

    def objective(self, losses: Tensor, output: WeightingOutput) -> Tensor:
        objective = getattr(self.legacy, "objective", None)
        return super().objective(losses, output) if objective is None else objective(losses, output)

    def __call__(self, losses: Tensor, values: Tensor | None = None) -> LossOutput:
        prepare = getattr(self.legacy, "prepare", None)
        if prepare is not None:
            prepare(list(losses.unbind()))
        return super().__call__(losses, values)


class _GramianAdapter(GramianWeighting):
    """A 0.1 weighting of the Gramian."""

    def __init__(self, legacy: Any) -> None:
        self.legacy = legacy
        self.num_tasks = legacy.num_tasks
        self.head_weighting = legacy.head_weighting
        self.feature_batch = getattr(legacy, "feature_batch", "flatten")

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        return self.legacy.compute(gramian, losses)


def as_method(method: Any) -> LossWeighting | GramianWeighting | DirectionMethod:
    """The method as :func:`mtlopt.backward` reads it (a 0.1 ``Weighting`` subclass adapted)."""
    if isinstance(method, (LossWeighting, GramianWeighting, DirectionMethod)):
        return method
    if isinstance(method, Method) and callable(getattr(method, "compute", None)):
        warnings.warn(
            f"{type(method).__name__} implements the 0.1 Weighting interface (compute, needs_gramian), which "
            "is deprecated: subclass mtlopt.LossWeighting or mtlopt.GramianWeighting",
            DeprecationWarning,
            stacklevel=3,
        )
        if getattr(method, "needs_gramian", True):
            return _GramianAdapter(method)
        return _LossAdapter(method)
    raise TypeError(
        "the method must be an mtlopt method (a LossWeighting or a GramianWeighting, e.g. mtlopt.EW(), "
        f"mtlopt.MGDA()), got {type(method).__name__}"
    )
