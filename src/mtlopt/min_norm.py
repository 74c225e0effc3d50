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
    terminates with the exact optimum. Default for K > 2. It starts from the affine minimizer of all K
    gradients with the vertices of non-positive weight dropped (a few iterations when most tasks are
    active at the optimum, as with real gradients at K = 40), or, when that start does not end on the
    optimality test, from Wolfe's one-vertex start. "Exact" holds relative to the solution, whatever
    the spread of the gradient norms: it stops when the gap is below ``tol`` (1e-12) times the
    objective, or below the rounding error of the products it compares (relative to the solution's own
    terms, so 0 for an exactly zero optimum), never at a fraction of the longest gradient; the affine
    minimizers are solved in the basis of unit-norm gradients, so that norms 1e8 apart (and more) cost
    no accuracy; a zero gradient is returned as the optimum it is. A Gramian that is PSD only to its
    round-off (rank-deficient, computed in float32) can make the problem slightly non-convex and the
    test unreachable; it is then solved as its nearest PSD matrix in that basis (negative eigenvalues
    set to 0). ``converged`` is True only when the optimality test was met
    (``tests/test_min_norm_ill_scaled.py``: norms up to 1e8 apart, K ≤ 64, the objective within 1e-6
    of an independent QP solver's, relative, and the KKT conditions of every task).
``"frank-wolfe"``
    Algorithm 2 of the paper: start at the uniform weights, move towards the vertex with the smallest
    :math:`(G\alpha)_t` with the two-point line search, stop when the L1 change of α falls below ``tol``
    or after ``max_iter`` iterations.
``"pgd"``
    The official code's solver (``MinNormSolver.find_min_norm_element``), step for step: the weights of
    the best pair of tasks (returned as they are for K = 2), then a projected gradient step on the
    simplex followed by the two-point line search, until the L1 change falls below ``tol``; it returns
    the point before that last change, as the official code does. With ``clip=(0.001, 0.999)`` it
    reproduces the official weights (to rounding: golden values against a transcription of the official
    code in the tests). What differs, and why:

    =========================  ==================================  ==================================
    step                       official code                       ``solver="pgd"``
    =========================  ==================================  ==================================
    end-of-segment weights     0.001 / 0.999, always               ``clip``: (0, 1) by default (the
                                                                   paper); (0.001, 0.999) official
    iteration cap              none: ``MAX_ITER = 250`` is never   ``max_iter`` (default 250, the
                               reached (the counter is never       intended cap); ``converged`` says
                               incremented)                        whether it stopped before
    best-pair search           the first pair whose cost is below  the first pair of smallest cost
                               ``dmin = 1e8``: fails (``sol``      (same costs, same order): no
                               unassigned) when every pair's       bound
                               squared min norm is ≥ 1e8
    K = 1                      fails (no pair)                     weight 1
    arithmetic                 inner products as float32 torch     float64 matrix products: the same
                               scalars, summed pair by pair in     steps, equal to rounding
                               Python (O(K²) per iteration)
    =========================  ==================================  ==================================

Every solver returns a :class:`MinNormResult` with a convergence report. ``gap`` is the Frank–Wolfe
duality gap :math:`f(\alpha) - \min_t (G\alpha)_t`; it certifies
:math:`f(\alpha) - f^* \le 2\,\mathrm{gap}`.

The Gramian must be symmetric positive semi-definite up to round-off: an asymmetry or a negative
eigenvalue beyond ``0.1`` × its largest diagonal entry is refused with a ``ValueError``. The tolerance
is that wide because a Gramian computed in low precision is PSD only to its round-off, and the library
computes Gramians in the gradients' dtype: rank-deficient ones whose products are rounded to bfloat16
reach about −1e-2 × the largest diagonal entry at K = 64 (``tests/test_min_norm_gramian_check.py``).
A matrix that is not a Gramian (a negated one, a hand-written indefinite one, the product of two
different Jacobians) is typically far outside it.
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
# Asymmetry and negative eigenvalues allowed, relative to the largest diagonal entry (the round-off of
# Gramians computed in low precision; see the module docstring).
_PSD_TOLERANCE = 0.1


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
            divided by :math:`\\max_t G_{tt}`; dimensionless. Relative to the longest gradient, so it
            is small for any point when the min-norm point is far shorter; ``converged`` (active set)
            is the certificate that holds relative to the solution.
        iterations: iterations taken (0 for the closed form).
        converged: whether the stopping rule was met before ``max_iter``. Active set: the optimality
            test (gap ≤ ``tol`` × objective, or at the rounding floor of the solution's own terms), so
            True certifies the optimum. ``"frank-wolfe"`` and ``"pgd"``: their L1-change rule, which
            certifies nothing (see ``gap``).
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
        gramian: symmetric positive semi-definite K×K matrix (any float dtype, any device); an
            asymmetry or a negative eigenvalue beyond 0.1 × its largest diagonal entry is refused.
        solver: ``"auto"`` (closed form for K = 2, ``"active-set"`` otherwise), ``"two-task"``,
            ``"active-set"``, ``"frank-wolfe"`` (paper) or ``"pgd"`` (official code).
        tol: stopping tolerance. Iterative solvers: L1 change of α (default 1e-5, the official
            code's). Active set: gap relative to the objective (default 1e-12), with a floor at the
            rounding error of the solution's own terms.
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
    scale = float(np.max(np.abs(np.diag(G))))
    allowed = _PSD_TOLERANCE * scale
    asymmetry = np.abs(G - G.T)
    if float(asymmetry.max()) > allowed:
        i, j = (int(k) for k in np.unravel_index(int(np.argmax(asymmetry)), G.shape))
        raise ValueError(
            f"the Gramian must be symmetric: G[{i},{j}] = {G[i, j]:.6g} but G[{j},{i}] = {G[j, i]:.6g}; "
            f"expected a difference <= {allowed:.6g} (round-off: {_PSD_TOLERANCE:g} x the largest "
            f"diagonal entry, {scale:.6g})"
        )
    # Symmetrize: float32 matmuls need not return an exactly symmetric matrix.
    G = 0.5 * (G + G.T)
    if G.shape[0] <= 2:  # the smallest eigenvalue in closed form
        a, c = float(G[0, 0]), float(G[-1, -1])
        b = float(G[0, -1]) if G.shape[0] == 2 else 0.0
        lowest = 0.5 * (a + c) - float(np.hypot(0.5 * (a - c), b)) if G.shape[0] == 2 else a
    else:
        try:
            np.linalg.cholesky(G + allowed * np.eye(G.shape[0]) if allowed > 0 else G)
            return G
        except np.linalg.LinAlgError:
            lowest = float(np.linalg.eigvalsh(G)[0])
    if lowest >= -allowed and (allowed > 0 or lowest >= 0.0):
        return G
    raise ValueError(
        f"the Gramian must be positive semi-definite: its most negative eigenvalue is {lowest:.6g}; "
        f"expected >= {0.0 - allowed:.6g} (round-off: {_PSD_TOLERANCE:g} x the largest diagonal entry, "
        f"{scale:.6g})"
    )


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
    rounds, a singular corral, a stall) the solve starts over from Wolfe's start.

    Every tolerance is relative to the solution, never to the longest gradient, so that a min-norm point
    many orders of magnitude shorter than the longest gradient is found as accurately as any other
    (see :class:`_Problem` and :func:`_wolfe`).

    Returns the weights, the iterations and whether the solve ended on the optimality test.
    """
    K = G.shape[0]
    diagonal = np.diag(G)
    if float(diagonal.max()) <= 0.0:  # every gradient is zero: any weights are optimal
        return np.full(K, 1.0 / K), 0, True
    if float(diagonal.min()) <= 0.0:  # a zero gradient: its vertex is the min-norm point, 0, exactly
        alpha = np.zeros(K)
        alpha[int(np.argmin(diagonal))] = 1.0
        return alpha, 0, True
    result = _solve(_Problem.of(G), tol, max_iter)
    if not result[2] and K >= 3 and result[1] < max_iter:
        # A Gramian that is PSD only to its round-off makes the problem slightly non-convex, and the
        # optimality test may not be met. Solve the nearest PSD matrix instead (negative eigenvalues of
        # the unit-norm Gramian set to 0: a change of the round-off's size, relative to every entry).
        repaired = _Problem.psd_part(G)
        if repaired is not None:
            retry = _solve(repaired, tol, max_iter - result[1])
            if retry[2]:
                return retry[0], result[1] + retry[1], True
    return result


def _solve(problem: _Problem, tol: float, max_iter: int) -> tuple[np.ndarray, int, bool]:
    """The dense start, then (unless it ends on the optimality test) Wolfe's one-vertex start."""
    G = problem.G
    K = G.shape[0]
    dense: tuple[np.ndarray, int, bool] | None = None
    if K >= 3:
        corral = _dense_corral(problem)
        if corral is not None:
            dense = _wolfe(problem, *corral, tol, max_iter)
            if dense[2]:
                return dense
    start = int(np.argmin(np.diag(G)))
    alpha = np.zeros(K)
    alpha[start] = 1.0
    cold = _wolfe(problem, [start], alpha, tol, max_iter)
    if dense is not None and not cold[2] and _objective(G, dense[0]) < _objective(G, cold[0]):
        return dense
    return cold


_DENSE_START_ROUNDS = 3
# Rounding of the optimality test: (Gα)_j and αᵀGα, sums of at most K products, are exact to
# _ROUNDING · (K + 2) · eps times the same sums of absolute values, (|G|α)_j and αᵀ|G|α.
_ROUNDING = 4.0
_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class _Problem:
    """The Gramian G (divided by its largest diagonal entry) and the same problem in the basis of
    unit-norm gradients: N = D G D with D = diag(1/‖g_t‖), and w = min‖g‖/‖g‖ (≤ 1).

    The affine minimizers are solved in that basis (unit diagonal, constraint entries ≤ 1), so that
    gradient norms far apart (1e8 and more) leave the systems as well conditioned as the angles between
    the gradients allow, and a short gradient's weight stays exact relative to its own size.
    """

    G: np.ndarray
    abs_G: np.ndarray
    N: np.ndarray
    w: np.ndarray
    norms: np.ndarray

    @classmethod
    def of(cls, G: np.ndarray) -> _Problem:
        G = G / float(np.max(np.diag(G)))
        norms = np.sqrt(np.diag(G))
        return cls(G, np.abs(G), G / np.outer(norms, norms), norms.min() / norms, norms)

    @classmethod
    def psd_part(cls, G: np.ndarray) -> _Problem | None:
        """The problem of G with the negative eigenvalues of N set to 0 (None if there are none)."""
        problem = cls.of(G)
        values, vectors = np.linalg.eigh(problem.N)
        if values[0] >= 0.0:
            return None
        N = (vectors * np.clip(values, 0.0, None)) @ vectors.T
        unit = 1.0 / np.sqrt(np.diag(N))  # back to a unit diagonal, PSD kept
        N = N * np.outer(unit, unit)
        return cls.of(0.5 * (N + N.T) * np.outer(problem.norms, problem.norms))


def _objective(G: np.ndarray, alpha: np.ndarray) -> float:
    return float(alpha @ G @ alpha)


def _dense_corral(problem: _Problem) -> tuple[list[int], np.ndarray] | None:
    """A corral with positive affine-minimizer weights, from all vertices down (None if not found)."""
    K = problem.G.shape[0]
    support = np.arange(K)
    for _ in range(_DENSE_START_ROUNDS):
        mu = _affine_minimizer(problem, support)
        if mu is None:
            return None
        if mu.min() > 0.0:
            alpha = np.zeros(K)
            alpha[support] = mu
            return support.tolist(), alpha
        support = support[mu > 0.0]
        if support.size == 0:
            return None
    return None


def _wolfe(
    problem: _Problem, support: list[int], alpha: np.ndarray, tol: float, max_iter: int
) -> tuple[np.ndarray, int, bool]:
    r"""Major and minor cycles of Wolfe's algorithm from a corral with positive weights ``alpha``.

    Optimality test (major cycle): the most violated vertex j outside the support, the smallest
    :math:`(G\alpha)_j`, must satisfy :math:`f - (G\alpha)_j \le \max(\mathrm{tol}\cdot f,\
    \mathrm{floor})` with :math:`f = \alpha^\top G\alpha`. Both sides are relative to the solution: the
    floor is the rounding error of the two sums compared, :math:`4(|S| + 2)\,\varepsilon\,(\alpha^\top
    |G|\alpha + (|G|\alpha)_j)`, which is 0 for an exactly zero optimum and never a fixed fraction of
    the longest gradient. (Inside the support :math:`(G\alpha)_t = f` up to the accuracy of the affine
    solve, so the support is left out of the test, as it is in exact arithmetic.)

    Returns the weights, the iterations and whether it stopped on the optimality test (rather than at
    ``max_iter``, on a singular corral or on a vertex that cannot enter).
    """
    G, norms = problem.G, problem.norms
    K = G.shape[0]
    for iteration in range(1, max_iter + 1):
        if len(support) == K:  # every vertex in the corral: its affine minimizer is the optimum
            return alpha, iteration - 1, True
        weights = alpha[support]
        Ga = G[:, support] @ weights
        f = float(weights @ Ga[support])
        masked = Ga.copy()
        masked[support] = np.inf
        j = int(np.argmin(masked))
        gap = f - float(Ga[j])
        if gap <= tol * max(f, 0.0):
            return alpha, iteration - 1, True
        # The rounding floor, with |G|α only when the gap is within its bound: αᵀ|G|α ≤ (Σα‖g‖)²
        # and (|G|α)_j ≤ ‖g_j‖ Σα‖g‖ (Cauchy–Schwarz).
        rounding = _ROUNDING * (len(support) + 2) * _EPS
        spread = float(weights @ norms[support])
        if gap <= rounding * spread * (spread + norms[j]):
            magnitude = problem.abs_G[:, support] @ weights
            if gap <= rounding * (float(weights @ magnitude[support]) + magnitude[j]):
                return alpha, iteration - 1, True
        support.append(j)
        # Minor cycles: move to the affine minimizer of the support, dropping vertices whose weight
        # would become negative, until the affine minimizer lies inside the support's hull.
        while True:
            mu = _affine_minimizer(problem, np.asarray(support))
            if mu is not None and mu.min() > 0.0:
                alpha[support] = mu
                break
            if mu is None:  # singular corral (rounding): keep the current point, drop the new vertex
                support.pop()
                return alpha, iteration, False
            current = alpha[support]
            negative = np.flatnonzero(mu <= 0.0)
            ratios = current[negative] / (current[negative] - mu[negative])
            theta = float(ratios.min())
            moved = current + theta * (mu - current)
            # The blocking vertex leaves exactly, and any other whose weight is at the rounding level
            # of its own terms (not an absolute level: a long gradient's weight can be 1e-12 and exact).
            moved[negative[np.argmin(ratios)]] = 0.0
            moved[moved <= 8.0 * _EPS * (current + theta * np.abs(mu - current))] = 0.0
            keep = moved > 0.0
            if support[-1] == j and not keep[-1] and theta == 0.0:
                # The new vertex cannot enter (its improvement is below rounding): stop here.
                support.pop()
                return alpha, iteration, False
            alpha[support] = moved
            support = [s for s, k in zip(support, keep) if k]
            alpha /= alpha.sum()
    return alpha, max_iter, False


def _affine_minimizer(problem: _Problem, support: np.ndarray) -> np.ndarray | None:
    """argmin μᵀ G_S μ subject to Σμ = 1 (no sign constraint) over the vertices ``support``.

    From the bordered KKT system in the unit-norm basis: ν = μ‖g‖/min‖g‖ solves
    [[N_S, w_S], [w_Sᵀ, 0]] [ν; λ] = [0; 1], with w_S divided by its largest entry (a common factor
    that the final normalization removes).
    """
    n = support.size
    w = problem.w[support]
    w = w / w.max()
    A = np.empty((n + 1, n + 1))
    A[:n, :n] = problem.N[support[:, None], support]
    A[:n, n] = w
    A[n, :n] = w
    A[n, n] = 0.0
    rhs = np.zeros(n + 1)
    rhs[n] = 1.0
    try:
        solution = np.linalg.solve(A, rhs)
    except np.linalg.LinAlgError:
        solution = np.linalg.lstsq(A, rhs, rcond=None)[0]
    mu = solution[:n] * w  # μ_t ∝ ν_t/‖g_t‖ ∝ ν_t w_t, and Σ_t ν_t w_t = 1
    total = mu.sum()
    if not np.isfinite(total) or abs(total - 1.0) > 1e-6:
        return None
    return mu / total


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
    """Weights of the best two-task solution over all pairs (the official ``_min_norm_2d``).

    As in the official code, a pair is ranked by the cost of the *unclipped* end of the segment when
    the optimum is an end (``aᵀa`` or ``bᵀb``, not the cost at ``clip``), by ``bᵀb + γ(aᵀb − bᵀb)``
    otherwise, and the first pair in (i, j) order wins a tie; its weights are the clipped ones.
    """
    K = G.shape[0]
    d = np.diag(G)
    i, j = np.triu_indices(K, k=1)
    aa, bb, ab = d[i], d[j], G[i, j]
    with np.errstate(divide="ignore", invalid="ignore"):
        interior = (bb - ab) / (aa + bb - 2.0 * ab)
        cost = np.where(ab >= aa, aa, np.where(ab >= bb, bb, bb + interior * (ab - bb)))
    gamma = np.where(ab >= aa, clip[1], np.where(ab >= bb, clip[0], interior))
    best = int(np.argmin(cost))
    alpha = np.zeros(K)
    alpha[i[best]] = gamma[best]
    alpha[j[best]] = 1.0 - gamma[best]
    return alpha


def _project_simplex(y: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the simplex, with the official ``_projection2simplex``'s rule.

    The threshold is (the sum of the i + 1 largest entries − 1) / (i + 1) at the first i where it
    exceeds the next largest entry, else (Σy − 1)/K.
    """
    m = y.size
    ordered = np.sort(y)[::-1]
    thresholds = (np.cumsum(ordered[:-1]) - 1.0) / np.arange(1.0, m)
    above = np.flatnonzero(thresholds > ordered[1:])
    threshold = thresholds[above[0]] if above.size else (np.sum(y) - 1.0) / m
    return np.maximum(y - threshold, 0.0)


def _pgd(G: np.ndarray, tol: float, max_iter: int, clip: tuple[float, float]) -> tuple[np.ndarray, int, bool]:
    """The official code's projected-gradient solver, step for step, vectorized, with a cap.

    ``MinNormSolver.find_min_norm_element``: the best pair's weights (returned at once for two tasks);
    then, per iteration, a step along the gradient projected on Σα = 1 to the first coordinate that
    reaches 0 or 1 (ignoring those within 1e-7, as the official ``_next_point``; a step of 1 when none
    does), projected on the simplex, followed by the two-point line search between the current point
    and that one; stop when the L1 change is below ``tol``, returning the point *before* that last
    change, as the official code does. The differences are listed in the module docstring.
    """
    K = G.shape[0]
    alpha = _best_pair(G, clip)
    if K < 3:
        return alpha, 0, True
    for iteration in range(1, max_iter + 1):
        grad = -(G @ alpha)
        proj = grad - np.sum(grad) / K
        with np.errstate(divide="ignore", invalid="ignore"):
            to_zero = -alpha[proj < 0] / proj[proj < 0]
            to_one = (1.0 - alpha[proj > 0]) / proj[proj > 0]
        to_zero, to_one = to_zero[to_zero > 1e-7], to_one[to_one > 1e-7]
        step = float(to_zero.min()) if to_zero.size else 1.0
        if to_one.size:
            step = min(step, float(to_one.min()))
        target = _project_simplex(proj * step + alpha)
        Ga = G @ alpha
        Gt = G @ target
        gamma = two_point_weight(float(alpha @ Ga), float(alpha @ Gt), float(target @ Gt), clip)
        new = gamma * alpha + (1.0 - gamma) * target
        change = float(np.sum(np.abs(new - alpha)))
        if change < tol or (tol == 0.0 and change == 0.0):
            return alpha, iteration, True
        alpha = new
    return alpha, max_iter, False
