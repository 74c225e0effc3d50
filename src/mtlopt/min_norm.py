r"""Min-norm solvers: the minimum-norm point in the convex hull of K task gradients.

Given the Gramian :math:`G_{ij} = g_i^\top g_j` of K gradients, solve

.. math::

    \alpha^* = \arg\min_{\alpha \in \Delta_K} \alpha^\top G \alpha,
    \qquad \Delta_K = \{\alpha \ge 0,\ \textstyle\sum_t \alpha_t = 1\}.

The optimum :math:`d^* = \sum_t \alpha^*_t g_t` is unique (the weights need not be). It satisfies the
KKT identity :math:`g_t^\top d^* \ge \|d^*\|^2` for every t, with equality wherever
:math:`\alpha^*_t > 0` (Sener & Koltun, NeurIPS 2018, arXiv:1810.04650).

Solvers (all float64, NumPy on the CPU; the Gramian is K×K, so this is one host transfer per step):

``"two-task"``
    Closed form of Algorithm 1 of the paper (K = 2 only).
``"active-set"``
    Wolfe's minimum-norm-point algorithm (Wolfe 1976) run on the Gramian: an active-set method that
    terminates with the exact optimum (to rounding). Default for K > 2. It starts from the affine
    minimizer of all K gradients with the vertices of non-positive weight dropped (a few iterations when
    most tasks are active at the optimum, as with real gradients at K = 40), or, when that start does
    not end on the optimality test, from Wolfe's one-vertex start.
``"frank-wolfe"``
    Algorithm 2 of the paper: start at the uniform weights, move towards the vertex with the smallest
    :math:`(G\alpha)_t` with the two-point line search, stop when the L1 change of α falls below ``tol``
    or after ``max_iter`` iterations.
``"pgd"``
    The official code's solver (``MinNormSolver.find_min_norm_element``): start at the best pair of
    tasks, projected gradient step on the simplex followed by the two-point line search. The official
    loop never increments its iteration counter; here ``max_iter`` applies.

Every solver returns a :class:`MinNormResult` with a convergence report. ``gap`` is the Frank–Wolfe
duality gap :math:`f(\alpha) - \min_t (G\alpha)_t`; it certifies
:math:`f(\alpha) - f^* \le 2\,\mathrm{gap}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ._options import choices

__all__ = ["SOLVERS", "MinNormResult", "min_norm", "two_point_weight"]

Solver = Literal["auto", "two-task", "active-set", "frank-wolfe", "pgd"]
SOLVERS: tuple[str, ...] = choices(Solver)

# Defaults of the official code: STOP_CRIT = 1e-5 on the L1 change, MAX_ITER = 250 (intended).
_ITERATIVE_TOL = 1e-5
_ITERATIVE_MAX_ITER = 250
_ACTIVE_SET_TOL = 1e-12
_ACTIVE_SET_MAX_ITER = 1000


@dataclass(frozen=True)
class MinNormResult:
    """Weights of the min-norm problem and how well they solve it.

    Attributes:
        weights: α, shape (K,), float64, on the simplex.
        objective: :math:`\\alpha^\\top G \\alpha = \\|\\sum_t \\alpha_t g_t\\|^2`.
        gap: Frank–Wolfe gap :math:`f(\\alpha) - \\min_t (G\\alpha)_t` (≥ 0 up to rounding);
            :math:`f(\\alpha) - f^* \\le 2\\,\\mathrm{gap}`.
        kkt_residual: largest violation of the KKT conditions (dual feasibility
            :math:`(G\\alpha)_t \\ge f` and complementarity :math:`\\alpha_t((G\\alpha)_t - f) = 0`),
            divided by :math:`\\max_t G_{tt}`; dimensionless.
        iterations: iterations taken (0 for the closed form).
        converged: whether the stopping rule was met before ``max_iter``.
        solver: the solver that produced the weights.
    """

    weights: Tensor
    objective: float
    gap: float
    kkt_residual: float
    iterations: int
    converged: bool
    solver: str


def two_point_weight(aa: float, ab: float, bb: float, clip: tuple[float, float] = (0.0, 1.0)) -> float:
    """Weight γ on ``a`` minimizing ‖γ a + (1 − γ) b‖² over γ ∈ [0, 1] (Algorithm 1 of the paper).

    Args:
        aa, ab, bb: the inner products aᵀa, aᵀb, bᵀb.
        clip: the weights returned when the optimum is an end of the segment: ``clip[1]`` when it is
            ``a``, ``clip[0]`` when it is ``b``. The paper uses (0, 1); the official code (0.001, 0.999).
            An interior optimum is returned as is, as in both.
    """
    if ab >= aa:
        return clip[1]
    if ab >= bb:
        return clip[0]
    return (bb - ab) / (aa + bb - 2.0 * ab)


def min_norm(
    gramian: Tensor | np.ndarray,
    *,
    solver: Solver = "auto",
    tol: float | None = None,
    max_iter: int | None = None,
    clip: tuple[float, float] = (0.0, 1.0),
) -> MinNormResult:
    """Solve min αᵀGα over the simplex for a K×K Gramian G.

    Args:
        gramian: symmetric positive semi-definite K×K matrix (any float dtype, any device).
        solver: ``"auto"`` (closed form for K = 2, ``"active-set"`` otherwise), ``"two-task"``,
            ``"active-set"``, ``"frank-wolfe"`` (paper) or ``"pgd"`` (official code).
        tol: stopping tolerance. Iterative solvers: L1 change of α (default 1e-5, the official
            code's). Active set: gap relative to the objective (default 1e-12).
        max_iter: iteration cap (default 250 for the iterative solvers, 1000 for the active set).
        clip: end-of-segment weights of the two-point rule (see :func:`two_point_weight`), used by the
            closed form and by the line searches of ``"frank-wolfe"`` and ``"pgd"``.

    Returns:
        The weights and a convergence report.
    """
    G = _as_gramian(gramian)
    K = G.shape[0]
    if solver not in SOLVERS:
        raise ValueError(f"unknown min-norm solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    if not (0.0 <= clip[0] <= clip[1] <= 1.0):
        raise ValueError(f"clip must satisfy 0 <= clip[0] <= clip[1] <= 1, got {clip!r}")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if max_iter is not None and max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    if solver == "auto":
        solver = "two-task" if K == 2 else "active-set"
    if K == 1:
        alpha, iterations, converged = np.ones(1), 0, True
    elif solver == "two-task":
        if K != 2:
            raise ValueError(f"the two-task closed form needs exactly 2 tasks, got {K}")
        gamma = two_point_weight(G[0, 0], G[0, 1], G[1, 1], clip)
        alpha, iterations, converged = np.array([gamma, 1.0 - gamma]), 0, True
    elif solver == "active-set":
        alpha, iterations, converged = _active_set(
            G,
            _ACTIVE_SET_TOL if tol is None else tol,
            _ACTIVE_SET_MAX_ITER if max_iter is None else max_iter,
        )
    elif solver == "frank-wolfe":
        alpha, iterations, converged = _frank_wolfe(
            G,
            _ITERATIVE_TOL if tol is None else tol,
            _ITERATIVE_MAX_ITER if max_iter is None else max_iter,
            clip,
        )
    else:
        alpha, iterations, converged = _pgd(
            G,
            _ITERATIVE_TOL if tol is None else tol,
            _ITERATIVE_MAX_ITER if max_iter is None else max_iter,
            clip,
        )
    return _report(G, alpha, iterations, converged, solver)


def _as_gramian(gramian: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(gramian, Tensor):
        G = gramian.detach().to("cpu", torch.float64).numpy()
    else:
        G = np.asarray(gramian, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != G.shape[1] or G.shape[0] == 0:
        raise ValueError(f"the Gramian must be a non-empty square K×K matrix, got shape {tuple(G.shape)}")
    if not np.isfinite(G).all():
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(G)).ravel()})
        raise ValueError(f"the Gramian has non-finite entries in rows/columns {bad}")
    # Symmetrize: float32 matmuls need not return an exactly symmetric matrix.
    return 0.5 * (G + G.T)


def _report(G: np.ndarray, alpha: np.ndarray, iterations: int, converged: bool, solver: str) -> MinNormResult:
    alpha = np.clip(alpha, 0.0, None)
    alpha = alpha / alpha.sum()
    Ga = G @ alpha
    f = float(alpha @ Ga)
    residual = Ga - f
    scale = float(np.max(np.diag(G)))
    gap = float(-residual.min())
    violation = max(gap, float(np.max(alpha * np.abs(residual))))
    return MinNormResult(
        weights=torch.from_numpy(alpha),
        objective=f,
        gap=gap,
        kkt_residual=violation / scale if scale > 0 else 0.0,
        iterations=iterations,
        converged=converged,
        solver=solver,
    )


def _active_set(G: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, int, bool]:
    """Wolfe's minimum-norm-point algorithm on the Gramian (exact; finite termination).

    Two starting corrals. Wolfe's start, the vertex of smallest norm, adds one vertex per major cycle:
    about |support| cycles (34 at K = 40 on real Gramians, where most tasks are active). The dense start
    (K ≥ 3) takes the affine minimizer of all K vertices and drops the vertices with non-positive weight,
    at most ``_DENSE_START_ROUNDS`` times, until the weights are positive: a valid corral (its point is
    inside it) from which the same cycles reach the optimum in a few iterations when the support is
    large. It is used when it ends on the optimality test; otherwise (no positive corral within the
    rounds, a singular corral, a stall) the solve starts over from Wolfe's start, as before.
    """
    K = G.shape[0]
    scale = float(np.max(np.diag(G)))
    if scale <= 0.0:  # every gradient is zero: any weights are optimal
        return np.full(K, 1.0 / K), 0, True
    G = G / scale
    # Roundoff floor of the gap: entries of G·α carry errors of about K·eps relative to the scale.
    floor = 64.0 * K * np.finfo(np.float64).eps
    if K >= 3:
        corral = _dense_corral(G)
        if corral is not None:
            alpha, iterations, converged, optimal = _wolfe(G, *corral, tol, floor, max_iter)
            if optimal:
                return alpha, iterations, converged
    start = int(np.argmin(np.diag(G)))
    alpha = np.zeros(K)
    alpha[start] = 1.0
    return _wolfe(G, [start], alpha, tol, floor, max_iter)[:3]


_DENSE_START_ROUNDS = 3


def _dense_corral(G: np.ndarray) -> tuple[list[int], np.ndarray] | None:
    """A corral with positive affine-minimizer weights, from all vertices down (None if not found)."""
    support = np.arange(G.shape[0])
    for _ in range(_DENSE_START_ROUNDS):
        mu = _affine_minimizer(G[np.ix_(support, support)])
        if mu is None:
            return None
        if mu.min() > 0.0:
            alpha = np.zeros(G.shape[0])
            alpha[support] = mu
            return support.tolist(), alpha
        support = support[mu > 0.0]
        if support.size == 0:
            return None
    return None


def _wolfe(
    G: np.ndarray, support: list[int], alpha: np.ndarray, tol: float, floor: float, max_iter: int
) -> tuple[np.ndarray, int, bool, bool]:
    """Major and minor cycles of Wolfe's algorithm from a corral with positive weights ``alpha``.

    Returns the weights, the iterations, whether it stopped (converged) and whether it stopped on the
    optimality test (rather than a stall at the rounding floor or a singular corral).
    """
    for iteration in range(1, max_iter + 1):
        Ga = G[:, support] @ alpha[support]
        f = float(alpha[support] @ Ga[support])
        j = int(np.argmin(Ga))
        if f - Ga[j] <= max(tol * f, floor):
            return alpha, iteration - 1, True, True
        if j in support:
            return alpha, iteration - 1, True, False
        support.append(j)
        # Minor cycles: move to the affine minimizer of the support, dropping vertices whose weight
        # would become negative, until the affine minimizer lies inside the support's hull.
        while True:
            index = np.asarray(support)
            mu = _affine_minimizer(G[index[:, None], index])
            if mu is not None and mu.min() > 0.0:
                alpha[support] = mu
                break
            current = alpha[support]
            if mu is None:  # singular corral (rounding): keep the current point, drop the new vertex
                support.pop()
                return alpha, iteration, True, False
            negative = mu <= 0.0
            theta = float(np.min(current[negative] / (current[negative] - mu[negative])))
            moved = current + theta * (mu - current)
            moved[moved <= 1e-15] = 0.0
            keep = moved > 0.0
            if support[-1] == j and not keep[-1] and theta == 0.0:
                # The new vertex cannot enter (its improvement is below rounding): stop here.
                support.pop()
                return alpha, iteration, True, False
            alpha[support] = moved
            support = [s for s, k in zip(support, keep) if k]
            alpha /= alpha.sum()
    return alpha, max_iter, False, False


def _affine_minimizer(G_S: np.ndarray) -> np.ndarray | None:
    """argmin μᵀ G_S μ subject to Σμ = 1 (no sign constraint), from the bordered KKT system."""
    n = G_S.shape[0]
    A = np.empty((n + 1, n + 1))
    A[:n, :n] = G_S
    A[:n, n] = 1.0
    A[n, :n] = 1.0
    A[n, n] = 0.0
    rhs = np.zeros(n + 1)
    rhs[n] = 1.0
    try:
        solution = np.linalg.solve(A, rhs)
    except np.linalg.LinAlgError:
        solution = np.linalg.lstsq(A, rhs, rcond=None)[0]
    mu = solution[:n]
    total = mu.sum()
    if not np.isfinite(total) or abs(total - 1.0) > 1e-6:
        return None
    return mu


def _frank_wolfe(
    G: np.ndarray, tol: float, max_iter: int, clip: tuple[float, float]
) -> tuple[np.ndarray, int, bool]:
    """Algorithm 2 of Sener & Koltun (2018), vectorized with an O(K) update of Gα per iteration."""
    K = G.shape[0]
    alpha = np.full(K, 1.0 / K)
    Ga = G @ alpha
    f = float(alpha @ Ga)
    diag = np.diag(G)
    for iteration in range(1, max_iter + 1):
        t = int(np.argmin(Ga))
        # Line search between the current point (a) and the vertex g_t (b); gamma is the weight on a.
        gamma = two_point_weight(f, float(Ga[t]), float(diag[t]), clip)
        step = 1.0 - gamma
        change = 2.0 * step * (1.0 - alpha[t])  # L1 norm of step * (e_t - alpha)
        if change <= tol:
            return alpha, iteration, True
        f = gamma * gamma * f + 2.0 * gamma * step * float(Ga[t]) + step * step * float(diag[t])
        alpha *= gamma
        alpha[t] += step
        Ga = gamma * Ga + step * G[:, t]
    return alpha, max_iter, False


def _best_pair(G: np.ndarray, clip: tuple[float, float]) -> np.ndarray:
    """Weights of the best two-task solution over all pairs (the official code's initialisation)."""
    K = G.shape[0]
    d = np.diag(G)
    i, j = np.triu_indices(K, k=1)
    aa, bb, ab = d[i], d[j], G[i, j]
    denom = aa + bb - 2.0 * ab
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = np.where(ab >= aa, clip[1], np.where(ab >= bb, clip[0], (bb - ab) / denom))
    cost = gamma * gamma * aa + 2.0 * gamma * (1.0 - gamma) * ab + (1.0 - gamma) ** 2 * bb
    best = int(np.argmin(cost))
    alpha = np.zeros(K)
    alpha[i[best]] = gamma[best]
    alpha[j[best]] = 1.0 - gamma[best]
    return alpha


def _project_simplex(y: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the simplex (sort-based, as the official ``_projection2simplex``)."""
    u = np.sort(y)[::-1]
    css = np.cumsum(u) - 1.0
    index = np.arange(1, y.size + 1)
    positive = u - css / index > 0
    rho = int(np.nonzero(positive)[0][-1])
    return np.maximum(y - css[rho] / (rho + 1.0), 0.0)


def _pgd(G: np.ndarray, tol: float, max_iter: int, clip: tuple[float, float]) -> tuple[np.ndarray, int, bool]:
    """The official code's projected-gradient solver, vectorized, with the iteration cap applied."""
    K = G.shape[0]
    alpha = _best_pair(G, clip)
    for iteration in range(1, max_iter + 1):
        grad = -(G @ alpha)
        proj = grad - grad.sum() / K
        # Step to the first coordinate reaching 0 (or 1), ignoring those already there; as in the
        # official ``_next_point``, the step is 1 only when no coordinate would reach 0.
        with np.errstate(divide="ignore", invalid="ignore"):
            to_zero = -alpha[proj < 0] / proj[proj < 0]
            to_one = (1.0 - alpha[proj > 0]) / proj[proj > 0]
        to_zero, to_one = to_zero[to_zero > 1e-7], to_one[to_one > 1e-7]
        step = float(to_zero.min()) if to_zero.size else 1.0
        if to_one.size:
            step = min(step, float(to_one.min()))
        target = _project_simplex(alpha + step * proj)
        Ga = G @ alpha
        Gt = G @ target
        gamma = two_point_weight(float(alpha @ Ga), float(alpha @ Gt), float(target @ Gt), clip)
        new = gamma * alpha + (1.0 - gamma) * target
        if np.abs(new - alpha).sum() < tol or (tol == 0.0 and np.array_equal(new, alpha)):
            return new, iteration, True
        alpha = new
    return alpha, max_iter, False
