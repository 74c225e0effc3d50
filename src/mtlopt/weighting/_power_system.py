r"""The positive solution of :math:`G w = w^{-1/a}` (elementwise), shared by Nash-MTL (a = 1) and FairGrad.

The system is the stationarity condition of the strictly convex

.. math::

    F(w) = \tfrac12 w^\top G w - \sum_t h(w_t), \qquad h'(w) = w^{-1/a}
    \quad (h = \log \text{ at } a = 1,\ h(w) = w^{1-1/a} / (1 - 1/a) \text{ otherwise}),

on :math:`w > 0`, solved by Newton's method (Hessian :math:`G + \tfrac1a \operatorname{diag}(w^{-1-1/a})`)
with a line search for the minimum of F along each Newton direction inside the positive orthant, after
dividing out the scale (per task for a = 1, where it is exact, globally otherwise), from the solution
for orthogonal gradients. Every quantity is float64 (numpy; Python floats for two tasks).

Degenerate Gramians: a task whose gradient is exactly zero (:math:`G_{tt} = 0`) has no finite solution
(:math:`w_t \to \infty`); it is left out and gets weight 0. When the remaining gradients admit a
non-negative combination equal to 0 (a Pareto-stationary point), F is unbounded below (or has no
minimizer) and the weights grow without bound: once they pass the scale :math:`\varepsilon^{-a/(1+a)}`
(normalized weights, of order 1 for well-conditioned G), the system is solved again with the ridge
:math:`G + \varepsilon \operatorname{diag}(G)` (``ridge`` = ε > 0), which makes F coercive, so a finite
solution always exists. The residual is reported on the unridged G, and whether the ridge applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PowerSolution", "solve_power_system"]

_EPS = float(np.finfo(float).eps)


@dataclass(frozen=True)
class PowerSolution:
    """The weights (0 on zero-gradient tasks) and the solver's convergence."""

    weights: np.ndarray
    iterations: int
    converged: bool
    residual: float  # max_t |w_t^{1/a} (G w)_t - 1| over the tasks with a nonzero gradient, unridged G
    zero_tasks: list[int]
    ridged: bool  # whether the ridge was needed (a degenerate or nearly degenerate G)


def _objective(G: np.ndarray, w: np.ndarray, a: float) -> float:
    if a == 1.0:
        h = np.log(w).sum()
    else:
        e = 1.0 - 1.0 / a
        h = (w**e).sum() / e
    return float(0.5 * w @ (G @ w) - h)


def solve_power_system(
    gramian: np.ndarray, a: float, *, ridge: float, tol: float, max_iter: int, per_task_scaling: bool
) -> PowerSolution:
    """Solve :math:`G w = w^{-1/a}` for w > 0 (see the module docstring).

    ``per_task_scaling`` (exact for a = 1 only: w = D u with D = diag(G)^{-1/2} maps the system onto the
    unit-diagonal one) conditions the problem per task; otherwise one global scale is divided out.
    """
    G = 0.5 * (gramian + gramian.T)
    K = G.shape[0]
    diag = np.diag(G).copy()
    active = np.flatnonzero(diag > 0)
    zero = np.flatnonzero(~(diag > 0)).tolist()
    weights = np.zeros(K)
    if active.size == 0:
        return PowerSolution(weights, 0, True, 0.0, zero, False)
    A = G[np.ix_(active, active)] if active.size < K else G
    d = diag[active]
    # w = scale * u with A_hat u = u^{-1/a}: divide the scale out (per task for a = 1, globally otherwise).
    if per_task_scaling:
        s = 1.0 / np.sqrt(d)
        A_hat = A * np.outer(s, s)
        np.fill_diagonal(A_hat, 1.0)
        scale = s
    else:
        m = float(d.mean())
        A_hat = A / m
        A_hat[np.diag_indices_from(A_hat)] = d / m
        scale = np.full(active.size, m ** (-a / (1.0 + a)))
    # First without the ridge; if the weights grow past the ridge's scale (G is, or is nearly,
    # degenerate) or Newton fails, again with it.
    u, iterations, converged, ridged = _newton(A_hat, a, tol, max_iter, ridge)
    w = scale * u
    weights[active] = w
    Gw = A @ w
    residual = float(np.max(np.abs(w ** (1.0 / a) * Gw - 1.0)))
    return PowerSolution(weights, iterations, converged, residual, zero, ridged)


def _newton(
    A: np.ndarray, a: float, tol: float, max_iter: int, ridge: float
) -> tuple[np.ndarray, int, bool, bool]:
    """Newton without the ridge, then (when the weights pass its scale or Newton fails) with it."""
    u0 = _start(A, a)
    # The scale of the ridged solution, from the orthogonal-gradient weights (before any rescaling).
    limit = float(np.max(np.diag(A) ** (-a / (1.0 + a)))) * ridge ** (-a / (1.0 + a))
    u, iterations, converged = _newton_from(A, u0, a, tol, max_iter, limit, 4.0)
    if converged and float(np.max(u)) <= limit:
        return u, iterations, True, False
    A = A + ridge * np.diag(np.diag(A))
    u, more, converged = _newton_from(A, _start(A, a), a, tol, max_iter, math.inf, 256.0)
    return u, iterations + more, converged, True


def _start(A: np.ndarray, a: float) -> np.ndarray:
    """The solution for orthogonal gradients, rescaled to minimize F along it."""
    inv_a = 1.0 / a
    u = np.diag(A) ** (-a / (1.0 + a))
    quad = float(u @ (A @ u))
    c = (float((u ** (1.0 - inv_a)).sum()) / quad) ** (a / (1.0 + a)) if quad > 0 else 1.0
    return c * u


def _newton_from(
    A: np.ndarray, u: np.ndarray, a: float, tol: float, max_iter: int, limit: float, slack: float
) -> tuple[np.ndarray, int, bool]:
    """Newton from u; ``slack`` scales the rounding level n·eps·max_t (|A|u)_t u_t^{1/a} below which the
    residual counts as converged."""
    n = A.shape[0]
    inv_a = 1.0 / a
    if n == 2 and a == 1.0 and A[0, 0] == A[1, 1]:
        # Unit diagonal (per-task scaling): the symmetric solution u_1 = u_2 = 1/sqrt(A_11 + A_12) is the
        # unique one (F is strictly convex and symmetric under swapping the tasks).
        total = float(A[0, 0] + A[0, 1])
        if total > 0 and 1.0 / math.sqrt(total) <= limit:
            u = np.full(2, 1.0 / math.sqrt(total))
            return u, 0, True
    if n == 2:
        u2, iterations, converged = _newton_two(
            float(A[0, 0]),
            float(A[0, 1]),
            float(A[1, 1]),
            float(u[0]),
            float(u[1]),
            a,
            tol,
            max_iter,
            limit,
            slack,
        )
        return np.array(u2), iterations, converged
    absA = np.abs(A)
    best, best_u, stalled = math.inf, u, 0
    for iteration in range(max_iter + 1):
        Au = A @ u
        power = u**-inv_a
        # Converged: the relative residual is below tol, or below what rounding in A u can resolve (a
        # degenerate G, where u is large and A u cancels), or it stopped decreasing near that level.
        rounding = slack * n * _EPS * float(((absA @ u) / power).max())
        residual = float(np.abs(Au / power - 1.0).max())
        if residual <= tol + rounding:
            return u, iteration, True
        if residual < 0.5 * best:
            best, best_u, stalled = residual, u, 0
        else:
            stalled += 1
            if stalled >= 5 and best <= 100 * (tol + rounding):
                return best_u, iteration, True
        if iteration == max_iter:
            break
        r = Au - power
        H = A + np.diag(inv_a * power / u)
        try:
            p = np.linalg.solve(H, -r)
        except np.linalg.LinAlgError:  # H ≻ 0 in exact arithmetic; guard against overflow
            p = -r / np.diag(H)
        u = u + _line_search(A, u, p, float(p @ r), inv_a, limit) * p
        if float(u.max()) > limit:
            return u, iteration + 1, False
    return u, max_iter, False


def _line_search(
    A: np.ndarray, u: np.ndarray, p: np.ndarray, slope0: float, inv_a: float, limit: float
) -> float:
    """The exact minimizer of the convex φ(t) = F(u + t p) on the positive orthant: safeguarded Newton
    on φ'(t) = t pᵀAp + uᵀAp − Σ p_i (u_i + t p_i)^{-1/a}, bracketed by φ'(0) < 0 and a t with φ' > 0.
    Far steps matter on degenerate G, where u grows along a null direction (a damped step would
    only double it); the search stops once |φ'| is below 0.1 |φ'(0)| or u passes ``limit``."""
    Ap = A @ p
    q = max(float(p @ Ap), 0.0)
    b = float(u @ Ap)

    def slope(t: float, curvature: bool = True) -> tuple[float, float]:
        x = u + t * p
        power = x**-inv_a
        d1 = t * q + b - float(p @ power)
        return d1, (q + inv_a * float((p * p) @ (power / x))) if curvature else 0.0

    negative = p < 0
    t_max = float((-u[negative] / p[negative]).min()) if negative.any() else math.inf
    lo, hi = 0.0, t_max
    t = 1.0 if t_max > 1.0 else 0.5 * t_max
    enough = 0.1 * abs(slope0)  # φ'(0) = pᵀ(Au − u^{-1/a})
    p_max = float(p.max())
    for _ in range(60):  # the bracket's right end: expand until φ' > 0
        d1, _ = slope(t, False)
        if abs(d1) <= enough or t * p_max > limit:
            return t
        if d1 >= 0:
            hi = t
            break
        lo = t
        if math.isinf(hi):
            t *= 4.0
        else:
            t = 0.5 * (t + hi)
    for _ in range(30):
        d1, d2 = slope(t)
        if abs(d1) <= enough:
            return t
        if d1 > 0:
            hi = t
        else:
            lo = t
        step = t - d1 / d2 if d2 > 0 else math.nan
        if not lo < step < hi:
            step = 0.5 * (lo + hi) if not math.isinf(hi) else 2 * t
        if abs(step - t) <= 1e-12 * t:
            return step
        t = step
    return t


def _newton_two(
    a11: float,
    a12: float,
    a22: float,
    u1: float,
    u2: float,
    a: float,
    tol: float,
    max_iter: int,
    limit: float,
    slack: float,
) -> tuple[tuple[float, float], int, bool]:
    """:func:`_newton` for two tasks in Python floats (the same steps, no array overhead)."""
    inv_a = 1.0 / a
    eps = 2 * slack * np.finfo(float).eps
    best, best_u, stalled = math.inf, (u1, u2), 0
    for iteration in range(max_iter + 1):
        g1, g2 = a11 * u1 + a12 * u2, a12 * u1 + a22 * u2
        p1, p2 = u1**-inv_a, u2**-inv_a
        rounding = eps * max((abs(a11) * u1 + abs(a12) * u2) / p1, (abs(a12) * u1 + abs(a22) * u2) / p2)
        residual = max(abs(g1 / p1 - 1.0), abs(g2 / p2 - 1.0))
        if residual <= tol + rounding:
            return (u1, u2), iteration, True
        if residual < 0.5 * best:
            best, best_u, stalled = residual, (u1, u2), 0
        else:
            stalled += 1
            if stalled >= 5 and best <= 100 * (tol + rounding):
                return best_u, iteration, True
        if iteration == max_iter:
            break
        r1, r2 = g1 - p1, g2 - p2
        h11, h22 = a11 + inv_a * p1 / u1, a22 + inv_a * p2 / u2
        det = h11 * h22 - a12 * a12
        if not det > 0:
            return (u1, u2), iteration, False
        d1, d2 = -(h22 * r1 - a12 * r2) / det, -(h11 * r2 - a12 * r1) / det
        # Exact line search on φ(t) = F(u + t d), as in _line_search.
        q = max(d1 * (a11 * d1 + a12 * d2) + d2 * (a12 * d1 + a22 * d2), 0.0)
        b = u1 * (a11 * d1 + a12 * d2) + u2 * (a12 * d1 + a22 * d2)
        t_max = min(-u1 / d1 if d1 < 0 else math.inf, -u2 / d2 if d2 < 0 else math.inf)
        lo, hi = 0.0, t_max
        t = 1.0 if t_max > 1.0 else 0.5 * t_max
        enough = 0.1 * abs(b - d1 * p1 - d2 * p2)
        searching = True
        for _ in range(60):
            x1, x2 = u1 + t * d1, u2 + t * d2
            slope = t * q + b - d1 * x1**-inv_a - d2 * x2**-inv_a
            if abs(slope) <= enough or t * max(d1, d2) > limit:
                searching = False
                break
            if slope >= 0:
                hi = t
                break
            lo = t
            t = t * 4.0 if math.isinf(hi) else 0.5 * (t + hi)
        for _ in range(30 if searching else 0):
            x1, x2 = u1 + t * d1, u2 + t * d2
            y1, y2 = x1**-inv_a, x2**-inv_a
            slope = t * q + b - d1 * y1 - d2 * y2
            if abs(slope) <= enough:
                break
            if slope > 0:
                hi = t
            else:
                lo = t
            curvature = q + inv_a * (d1 * d1 * y1 / x1 + d2 * d2 * y2 / x2)
            step = t - slope / curvature if curvature > 0 else math.nan
            if not lo < step < hi:
                step = 0.5 * (lo + hi) if not math.isinf(hi) else 2 * t
            done = abs(step - t) <= 1e-12 * t
            t = step
            if done:
                break
        u1, u2 = u1 + t * d1, u2 + t * d2
        if max(u1, u2) > limit:
            return (u1, u2), iteration + 1, False
    return (u1, u2), max_iter, False
