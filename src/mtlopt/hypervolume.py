r"""Hypervolume and non-dominated filtering for minimization, computed by ``moocore``.

The hypervolume of points P with respect to a reference point r is the measure of the union of the boxes
:math:`[p, r]` over the points :math:`p \le r`; points that do not dominate r contribute nothing.
It grows with the number of points: report the number of points beside it.

``moocore`` is an optional dependency (``pip install "mtlopt[pareto]"``, also part of ``mtlopt[bench]``);
without it these functions raise an ImportError that says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np
from torch import Tensor

from ._optional import require

__all__ = ["hypervolume", "non_dominated"]


def _moocore() -> ModuleType:
    return require("moocore", extra="pareto", needed_by="the hypervolume (and non_dominated)")


def _as_points(points: Tensor | np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    array = (
        points.detach().cpu().double().numpy()
        if isinstance(points, Tensor)
        else np.asarray(points, dtype=np.float64)
    )
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"points must have shape (N, m) with N >= 1, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("points contain NaN or inf")
    return array


def hypervolume(points: Tensor | np.ndarray | Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Hypervolume of ``points`` (N, m), minimization, w.r.t. ``reference`` (m,)."""
    array = _as_points(points)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape != (array.shape[1],):
        raise ValueError(
            f"the reference point has {ref.size} entries, the points {array.shape[1]} objectives"
        )
    inside = np.all(array <= ref, axis=1)
    if not inside.any():
        return 0.0
    return float(_moocore().hypervolume(array[inside], ref=ref))


def non_dominated(points: Tensor | np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Boolean mask of the points no other point dominates (minimization); of identical points only
    the first is kept."""
    return np.asarray(_moocore().is_nondominated(_as_points(points)), dtype=bool)
