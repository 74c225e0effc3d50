r"""CAGrad: conflict-averse gradient descent, as task weights from the Gramian.

Bo Liu, Xingchao Liu, Xiaojie Jin, Peter Stone and Qiang Liu, "Conflict-Averse Gradient Descent for
Multi-task Learning", NeurIPS 2021, arXiv:2110.14048. Official code: Cranial-XIX/CAGrad
(``nyuv2/utils.py``, ``cagrad(grads, alpha, rescale)``).

The update maximizes the worst task's improvement inside a ball around the mean gradient
:math:`\bar g = J^\top \mathbf 1/K`: :math:`\max_d \min_t g_t^\top d` subject to
:math:`\|d - \bar g\| \le \sqrt\phi`, :math:`\sqrt\phi = c\|\bar g\|`. Its dual is a convex problem on
the simplex,

.. math::

    w^* = \arg\min_{w \in \Delta_K} f(w) = w^\top b + \sqrt\phi\, \sqrt{w^\top G w},
    \qquad b = G\mathbf 1/K,\ \|\bar g\|^2 = \mathbf 1^\top G \mathbf 1/K^2 ,

and :math:`d = \bar g + (\sqrt\phi/\|g_{w^*}\|)\, g_{w^*}`, i.e. the task weights
:math:`w_{\mathrm{eff}} = \mathbf 1/K + (\sqrt\phi/\|g_{w^*}\|)\, w^*` — from G alone. Optimality (the
certificate in the diagnostics): :math:`\nabla f(w) = J d`, so w is optimal iff
:math:`\min_t g_t^\top d \ge d^\top g_w = w^\top J d` (the duality gap
:math:`w^\top Jd - \min_t g_t^\top d` bounds :math:`f(w) - f^*`). c = 0 gives :math:`\bar g`. When
:math:`\|g_{w^*}\|` is below ``norm_eps`` :math:`\sqrt{\mathrm{tr}\,G}` (a Pareto-stationary point:
the direction is undefined) the weights are 0 (TorchJD's rule) and ``diagnostics["pareto_stationary"]``
is True.

Solver (``solver="exact"``, float64 NumPy): :math:`\min_{w\in\Delta, t>0} w^\top b + w^\top G w/(2t) +
\phi t/2` is jointly convex; for fixed t its w-problem is MGDA's min-norm problem on the shifted
gradients :math:`g_t + t\bar g` (Gramian :math:`G + t(b\mathbf 1^\top + \mathbf 1 b^\top) + t^2\|\bar
g\|^2 \mathbf 1\mathbf 1^\top`), solved exactly by :func:`mtlopt.min_norm`'s active set, and its
t-problem is :math:`t = \|g_w\|/\sqrt\phi`. Each alternation is followed by an exact solve of the
optimality conditions on the support of w (a bordered linear system in the basis of unit-norm
gradients and one quadratic equation); it stops when the duality gap is within ``tol`` of
:math:`\max_t\|g_t\|\,\|d\|` (else after ``max_iter`` alternations, ``solver_converged`` False). K = 2 has
a closed form (the root of a quadratic).

======================  ================================  =======================================
option                  default                           alternatives
======================  ================================  =======================================
``c``                   0.4 (the paper's runs: official   LibMTL's ``calpha`` default 0.5
                        ``nyuv2/run.sh --alpha 0.4``)
``rescale``             ``"none"`` (TorchJD; Algorithm 1  ``"1+c^2"``: divided by 1 + c² (official
                        as TorchJD cites it)              and LibMTL ``rescale=1``); ``"1+c"``
                                                          (``rescale=2``)
``weight_scale``        ``"one"``: built on ḡ             ``"num-tasks"``: ×K (official
                                                          ``overwrite_grad``, "to match the sum loss")
``solver``              ``"exact"`` (above)               ``"slsqp"``: the official code's solve,
                                                          scipy SLSQP from 1/K with bounds [0, 1] and
                                                          Σw = 1 on its objective with its 1e-8 terms
                                                          (:math:`\sqrt{w^\top G w + 10^{-8}}`,
                                                          :math:`\sqrt\phi + 10^{-8}`, divisor
                                                          :math:`\|g_w\| + 10^{-8}`); needs scipy
``norm_eps``            1e-4 (TorchJD; the paper and      any float ≥ 0 (0: never zero weights)
                        official code are silent)
``head_weighting``      ``"unweighted"`` (official,       ``"weighted"``
                        LibMTL)
``zero_gradients``      ``"exclude"``: a task with g_t =  ``"keep"``: in the problem (the paper's
                        0 gets w*_t = 0 (it stays in ḡ)   problem taken literally; TorchJD)
======================  ================================  =======================================

A task whose gradient is exactly zero puts 0 in the convex hull: with it in the dual problem the
optimum is often :math:`g_{w^*} = 0`, and the update 0 (TorchJD) or :math:`\bar g` (the official code,
whose divisor is :math:`\|g_w\| + 10^{-8}`), although the other tasks could still descend. It imposes
no condition on d (:math:`g_t^\top d = 0` for every d), so by default it is left out of the dual
problem, as MGDA's ``zero_gradients="exclude"``.

Reproductions: official = ``rescale="1+c^2", weight_scale="num-tasks", solver="slsqp"``; LibMTL =
``c=0.5, rescale="1+c^2", solver="slsqp"``; TorchJD ``CAGrad(c)`` = the defaults (it solves the same
problem with Clarabel, to that solver's tolerance). Weight sum (:attr:`CAGrad.weight_sum`,
data-dependent): :math:`1 + c\|\bar g\|/\|g_{w^*}\|` ≥ 1 (1 + c when every gradient is the same), divided by
the ``rescale`` factor, ×K with ``weight_scale="num-tasks"``. Use with ``shared_params=`` (the paper;
LibMTL refuses representation gradients) or ``features=``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..min_norm import _ACTIVE_SET_MAX_ITER, _ACTIVE_SET_TOL
from ..min_norm import _active_set as _min_norm_active_set
from ._base import GramianWeighting, HeadWeighting, WeightingOutput, WeightSum, check_method_options

__all__ = ["CAGrad", "CAGradSolution", "solve_cagrad"]

Rescale = Literal["none", "1+c^2", "1+c"]
WeightScale = Literal["one", "num-tasks"]
Solver = Literal["exact", "slsqp"]
ZeroGradients = Literal["exclude", "keep"]

_TOL = 1e-12
_MAX_ITER = 100


class CAGradSolution:
    """The dual weights w* of CAGrad's simplex problem and the solver's report (normalized G units)."""

    def __init__(
        self, w: np.ndarray, gw_norm: float, rho: float, iterations: int, converged: bool, gap: float
    ) -> None:
        self.w, self.gw_norm, self.rho = w, gw_norm, rho
        self.iterations, self.converged, self.gap = iterations, converged, gap


def _objective(G: np.ndarray, b: np.ndarray, rho: float, w: np.ndarray) -> float:
    return float(w @ b) + rho * math.sqrt(max(float(w @ G @ w), 0.0))


def _gap(G: np.ndarray, b: np.ndarray, rho: float, gbar2: float, w: np.ndarray) -> tuple[float, float]:
    """Duality gap w ᵀJd − min_t g_tᵀd, relative to max_t‖g_t‖·‖d‖; and ‖g_w‖."""
    Gw = G @ w
    gw = math.sqrt(max(float(w @ Gw), 0.0))
    if gw <= 0.0:
        return math.inf, 0.0
    grad = b + (rho / gw) * Gw  # = J d
    d2 = gbar2 + 2.0 * rho * float(w @ b) / gw + rho * rho
    scale = math.sqrt(max(float(np.max(np.diag(G))), 0.0) * max(d2, 0.0))
    gap = float(w @ grad) - float(grad.min())
    return (max(gap, 0.0) / scale if scale > 0.0 else 0.0), gw


def _on_support(
    G: np.ndarray, b: np.ndarray, rho: float, support: np.ndarray, *, signed: bool = False
) -> np.ndarray | None:
    """The minimizer of f on the affine hull of the support's vertices (None if it has no valid one).

    With z = w ‖g_w‖⁻¹ √φ: G_SS z − μ1 = −b_S, zᵀGz = φ; solved as a bordered system in the basis of
    unit-norm gradients (two right-hand sides), then one quadratic equation in 1ᵀz > 0. ``signed``:
    weights of either sign are returned (the active-set step), else only non-negative ones.
    """
    K = G.shape[0]
    n = np.sqrt(np.clip(np.diag(G)[support], 0.0, None))
    n = np.where(n > 0.0, n, 1.0)
    N = G[np.ix_(support, support)] / np.outer(n, n)
    e = 1.0 / n
    e = e / e.max()
    m = support.size
    A = np.zeros((m + 1, m + 1))
    A[:m, :m] = N
    A[:m, m] = e
    A[m, :m] = e
    R = np.zeros((m + 1, 2))
    R[:m, 0] = -b[support] / n
    R[m, 1] = 1.0
    try:
        X = np.linalg.solve(A, R)
        if not np.allclose(A @ X, R, rtol=0.0, atol=1e-10 * max(1.0, float(np.abs(R).max()))):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        X = np.linalg.lstsq(A, R, rcond=None)[0]
    v0, v1 = X[:m, 0], X[:m, 1]
    Nv1 = N @ v1
    a, beta, gamma = float(v1 @ Nv1), float(v0 @ Nv1), float(v0 @ N @ v0)
    if not a > 0.0:
        return None
    disc = beta * beta - a * (gamma - rho * rho)
    if disc < 0.0:
        return None
    best: np.ndarray | None = None
    best_f = math.inf
    for tau in ((-beta + math.sqrt(disc)) / a, (-beta - math.sqrt(disc)) / a):
        if not tau > 0.0:
            continue
        z = (v0 + tau * v1) / n
        total = float(z.sum())
        if not total > 0.0 or not np.isfinite(total):
            continue
        wS = z / total
        if not signed and wS.min() < 0.0:
            continue
        w = np.zeros(K)
        w[support] = wS
        value = _objective(G, b, rho, w)
        if value < best_f:
            best, best_f = w, value
    return best


def _two_tasks(G: np.ndarray, b: np.ndarray, rho: float) -> np.ndarray:
    """Closed form for two tasks: w = (x, 1 − x), the best of the ends and the root of f'(x) = 0."""
    a, ab, c = float(G[0, 0]), float(G[0, 1]), float(G[1, 1])
    b0, b1 = float(b[0]), float(b[1])
    beta, A, B = b0 - b1, a - 2.0 * ab + c, ab - c  # ‖g_w‖² = A x² + 2 B x + c

    def f(x: float) -> float:
        return b1 + x * beta + rho * math.sqrt(max(A * x * x + 2.0 * B * x + c, 0.0))

    candidates = [0.0, 1.0]
    if A > 0.0 and rho * rho * A > beta * beta:
        # y = A x + B solves ρ y = −β ‖g_w‖ with ‖g_w‖² = (y² + Δ)/A, Δ = a c − ab².
        delta = max(a * c - ab * ab, 0.0)
        y = -math.copysign(abs(beta) * math.sqrt(delta / (rho * rho * A - beta * beta)), beta)
        x = (y - B) / A
        if 0.0 < x < 1.0:
            candidates.append(x)
    x = min(candidates, key=f)
    return np.array([x, 1.0 - x])


def solve_cagrad(
    gramian: np.ndarray,
    c: float,
    *,
    tol: float = _TOL,
    max_iter: int = _MAX_ITER,
    zero_gradients: ZeroGradients = "exclude",
) -> CAGradSolution:
    """Exact solve of CAGrad's simplex problem for a K×K PSD Gramian (float64); see the module docstring.

    ``zero_gradients="exclude"``: the tasks whose gradient is exactly zero get w*_t = 0 (they stay in ḡ).
    """
    K = gramian.shape[0]
    top = float(np.max(np.diag(gramian)))
    uniform = np.full(K, 1.0 / K)
    if not top > 0.0:
        return CAGradSolution(uniform, 0.0, 0.0, 0, True, 0.0)
    G = 0.5 * (gramian + gramian.T) / top
    b = G.sum(axis=1) / K
    gbar2 = max(float(b.sum()) / K, 0.0)
    rho = c * math.sqrt(gbar2)
    if rho == 0.0:  # c = 0 or ḡ = 0: d = ḡ, the weights 1/K whatever w*
        return CAGradSolution(uniform, math.sqrt(max(float(uniform @ G @ uniform), 0.0)), 0.0, 0, True, 0.0)
    live = np.flatnonzero(np.diag(G) > 0.0) if zero_gradients == "exclude" else np.arange(K)
    sub = _solve(G[np.ix_(live, live)], b[live], gbar2, rho, c, tol, max_iter)
    w = np.zeros(K)
    w[live] = sub.w
    return CAGradSolution(w, sub.gw_norm, rho, sub.iterations, sub.converged, sub.gap)


def _solve(
    G: np.ndarray, b: np.ndarray, gbar2: float, rho: float, c: float, tol: float, max_iter: int
) -> CAGradSolution:
    """The simplex problem with linear term b and ρ = c‖ḡ‖ on the (sub-)Gramian G."""
    K = G.shape[0]
    if K == 1:
        return CAGradSolution(np.ones(1), math.sqrt(float(G[0, 0])), rho, 0, True, 0.0)
    if K == 2:
        w = _two_tasks(G, b, rho)
        gap, gw = _gap(G, b, rho, gbar2, w)
        return CAGradSolution(w, gw, rho, 0, True, gap if math.isfinite(gap) else 0.0)
    # Start: the exact w of the alternation's first t (‖ḡ‖/√φ, the t of w = 1/K), then active-set
    # steps on f itself; the alternation goes on only where those stop short of the optimum.
    t = 1.0 / c
    w = _shifted_min_norm(G, b, gbar2, t)
    iterations = 1
    best, best_gap, gw_best = w, *_gap(G, b, rho, gbar2, w)
    active, steps = _active_set(G, b, rho, w, 4 * K + 10)
    iterations += steps
    if active is not None:
        gap, gw = _gap(G, b, rho, gbar2, active)
        if gap < best_gap:
            best, best_gap, gw_best = active, gap, gw
    if best_gap <= tol:
        return CAGradSolution(best, gw_best, rho, iterations, True, best_gap)
    for _ in range(max_iter):
        gw = math.sqrt(max(float(w @ G @ w), 0.0))
        t_next = gw / rho
        if not t_next > 0.0 or abs(t_next - t) <= 1e-15 * t:
            break
        t = t_next
        w = _shifted_min_norm(G, b, gbar2, t)
        iterations += 1
        candidates = [w]
        polished = _on_support(G, b, rho, np.flatnonzero(w > 0.0))
        if polished is not None:
            candidates.insert(0, polished)
        for candidate in candidates:
            gap, gw = _gap(G, b, rho, gbar2, candidate)
            if gap < best_gap:
                best, best_gap, gw_best = candidate, gap, gw
        if best_gap <= tol:
            return CAGradSolution(best, gw_best, rho, iterations, True, best_gap)
    return CAGradSolution(best, gw_best, rho, iterations, False, best_gap if math.isfinite(best_gap) else 0.0)


def _shifted_min_norm(G: np.ndarray, b: np.ndarray, gbar2: float, t: float) -> np.ndarray:
    """argmin over the simplex of ‖g_w + t ḡ‖² (MGDA's problem on the gradients g_t + t ḡ)."""
    H = G + t * (b[:, None] + b[None, :]) + (t * t * gbar2)  # PSD by construction: no input checks
    alpha = np.clip(_min_norm_active_set(H, _ACTIVE_SET_TOL, _ACTIVE_SET_MAX_ITER)[0], 0.0, None)
    return alpha / alpha.sum()


def _active_set(
    G: np.ndarray, b: np.ndarray, rho: float, w: np.ndarray, max_steps: int
) -> tuple[np.ndarray | None, int]:
    """Wolfe-style active-set steps on f from a feasible w: move to the minimizer on the support's
    affine hull (or as far towards it as the simplex allows, dropping the vertex that leaves), then add
    the vertex of smallest (Jd)_t while one is below wᵀJd. None when a support has no minimizer."""
    w = w.copy()
    support = w > 0.0
    for step in range(1, max_steps + 1):
        y = _on_support(G, b, rho, np.flatnonzero(support), signed=True)
        if y is None:
            return None, step
        if y[support].min() >= 0.0:
            w = y
            Gw = G @ w
            gw = math.sqrt(max(float(w @ Gw), 0.0))
            if gw <= 0.0:
                return w, step
            grad = b + (rho / gw) * Gw
            mu = float(w @ grad)
            outside = np.where(support, np.inf, grad)
            j = int(np.argmin(outside))
            tolerance = 1e-13 * (abs(mu) + float(np.abs(grad).max()))
            if not outside[j] < mu - tolerance:
                return w, step
            support[j] = True
            continue
        negative = support & (y < 0.0)
        ratios = w[negative] / (w[negative] - y[negative])
        theta = float(ratios.min())
        w = w + theta * (y - w)
        w[np.flatnonzero(negative)[int(np.argmin(ratios))]] = 0.0
        w[w < 0.0] = 0.0
        support = w > 0.0
        if not support.any():
            return None, step
        w = w / w.sum()
    return w, max_steps


def _solve_slsqp(G: np.ndarray, c: float) -> tuple[np.ndarray, float, int, bool]:
    """The official solve (scipy SLSQP on the official objective); returns w*, λ = ρ'/(‖g_w‖ + 1e-8)."""
    try:
        from scipy.optimize import minimize
    except ImportError as error:  # pragma: no cover - scipy is installed with the test extras
        raise ImportError("CAGrad solver='slsqp' needs scipy (pip install scipy)") from error
    K = G.shape[0]
    start = np.full(K, 1.0 / K)
    rho = c * math.sqrt(max(float(G.mean()), 0.0) + 1e-8) + 1e-8

    def objective(x: np.ndarray) -> float:
        return float(x @ G @ start) + rho * math.sqrt(float(x @ G @ x) + 1e-8)

    result = minimize(
        objective,
        start,
        bounds=[(0.0, 1.0)] * K,
        constraints=({"type": "eq", "fun": lambda x: 1.0 - np.sum(x)},),
    )
    w = np.asarray(result.x, dtype=np.float64)
    gw = math.sqrt(max(float(w @ G @ w), 0.0))
    return w, rho / (gw + 1e-8), int(result.nit), bool(result.success)


class CAGrad(GramianWeighting):
    """Conflict-averse gradient descent (Liu et al. 2021), computed from the Gramian.

    Args:
        c: radius of the ball around the mean gradient, relative to ‖ḡ‖ (paper runs: 0.4).
        rescale: divide the update by 1 (``"none"``), 1 + c² or 1 + c.
        weight_scale: ``"one"`` (built on ḡ) or ``"num-tasks"`` (×K, official).
        solver: ``"exact"`` or ``"slsqp"`` (the official code's scipy solve).
        norm_eps: zero weights when ‖g_w*‖ < norm_eps·√tr(G) (TorchJD's rule; 0: never).
        head_weighting: ``"unweighted"`` (official, LibMTL) or ``"weighted"``.
        tol: duality-gap tolerance of the exact solver (relative to max‖g_t‖·‖d‖).
        max_iter: alternations of the exact solver.
        zero_gradients: a task with a zero gradient gets w*_t = 0 (``"exclude"``) or stays in the
            dual problem (``"keep"``, the problem taken literally: then g_w* = 0 and the weights are 0).
    """

    min_tasks = 1
    weight_sum: WeightSum = "data-dependent"

    def __init__(
        self,
        c: float = 0.4,
        *,
        rescale: Rescale = "none",
        weight_scale: WeightScale = "one",
        solver: Solver = "exact",
        norm_eps: float = 1e-4,
        head_weighting: HeadWeighting = "unweighted",
        tol: float = _TOL,
        max_iter: int = _MAX_ITER,
        zero_gradients: ZeroGradients = "exclude",
    ) -> None:
        check_method_options(
            self,
            zero_gradients=(zero_gradients, ZeroGradients),
            rescale=(rescale, Rescale),
            weight_scale=(weight_scale, WeightScale),
            solver=(solver, Solver),
            head_weighting=(head_weighting, HeadWeighting),
        )
        for name, value in (("c", c), ("norm_eps", norm_eps), ("tol", tol)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0.0:
                raise ValueError(f"CAGrad {name} must be a float >= 0, got {value!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"CAGrad max_iter must be an int >= 1, got {max_iter!r}")
        self.c = float(c)
        self.rescale: Rescale = rescale
        self.weight_scale: WeightScale = weight_scale
        self.solver: Solver = solver
        self.norm_eps = float(norm_eps)
        self.head_weighting = head_weighting
        self.tol = float(tol)
        self.max_iter = max_iter
        self.zero_gradients: ZeroGradients = zero_gradients

    def factor(self, K: int) -> float:
        """The constant the weights are multiplied by: 1/(rescale divisor), ×K for ``"num-tasks"``."""
        divisor = {"none": 1.0, "1+c^2": 1.0 + self.c**2, "1+c": 1.0 + self.c}[self.rescale]
        return (K if self.weight_scale == "num-tasks" else 1.0) / divisor

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        G = gramian.numpy()
        K = G.shape[0]
        diagnostics: dict[str, Any]
        if self.solver == "slsqp":
            w, lam, iterations, converged = _solve_slsqp(0.5 * (G + G.T), self.c)
            weights = 1.0 / K + lam * w
            diagnostics = {"solver_iterations": iterations, "solver_converged": converged}
        else:
            solution = solve_cagrad(
                G, self.c, tol=self.tol, max_iter=self.max_iter, zero_gradients=self.zero_gradients
            )
            trace = max(float(np.trace(G)) / max(float(np.max(np.diag(G))), 1e-300), 0.0)
            stationary = solution.rho > 0.0 and solution.gw_norm < self.norm_eps * math.sqrt(trace)
            if solution.rho == 0.0:
                weights = np.full(K, 1.0 / K)
            elif stationary:
                weights = np.zeros(K)
            else:
                weights = 1.0 / K + (solution.rho / solution.gw_norm) * solution.w
            diagnostics = {
                "solver_iterations": solution.iterations,
                "solver_converged": solution.converged,
                "duality_gap": solution.gap,
                "pareto_stationary": bool(stationary),
            }
        return WeightingOutput(torch.from_numpy(weights * self.factor(K)), diagnostics)

    def __repr__(self) -> str:
        return (
            f"CAGrad(c={self.c}, rescale={self.rescale!r}, weight_scale={self.weight_scale!r}, "
            f"solver={self.solver!r}, norm_eps={self.norm_eps}, head_weighting={self.head_weighting!r}, "
            f"zero_gradients={self.zero_gradients!r})"
        )
