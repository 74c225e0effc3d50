r"""Projections onto the dual cone of the task gradients, from the Gramian: UPGrad's and DualProj's QP.

For weights u ≥ 0 (a vector, or a batch of them) and the K×K Gramian G = J Jᵀ, find

.. math::

    v^* = \arg\min_{v \ge u} v^\top G v ,

the weights of the projection of :math:`J^\top u` onto the dual cone :math:`\{x : Jx \ge 0\}`
(Proposition 1 of Quinton & Rey 2024, arXiv:2406.16232). Its KKT conditions: with
:math:`\lambda = G v^*`, :math:`\lambda \ge 0` (so :math:`J J^\top v^* \ge 0`: no task's gradient
conflicts with :math:`d = J^\top v^*`), :math:`v^* \ge u`, and :math:`\lambda_t (v^*_t - u_t) = 0`.

Solver: a batched block principal pivoting method (Júdice & Pires 1994; Kim & Park 2011 for NNLS) on
the linear complementarity problem :math:`\lambda = N s + N\tilde u,\ s \ge 0,\ \lambda \ge 0,\
s^\top\lambda = 0`, float64 NumPy, every problem of the batch advanced by the same vectorized steps
(one batched linear solve per iteration), with Murty's single-pivot rule as the backup. Pivoting can
cycle when a free block is singular (G rank-deficient); a problem it has not solved within
``_PIVOTING_ITER`` iterations is solved by Lawson & Hanson's active set (NNLS, in Gram form: primal
feasible and monotone, so it terminates). It runs in the basis of unit-norm gradients (N = D G D, D = diag(1/‖g_t‖),
:math:`\tilde u = u/D`, :math:`v = D x`), so gradient norms many orders of magnitude apart cost no
accuracy. The linear systems of the free blocks are solved with a ridge of ``_RIDGE`` (relative to
N's unit diagonal) so that a rank-deficient block stays solvable (they are consistent: the right-hand
side lies in the block's range); the complementarity tests and the objective use N itself, so the
problem solved is the exact one (weights along an exact null direction of G are not unique; the ridge
picks small ones). A task with a zero gradient imposes nothing (:math:`\lambda_t = 0`): its
weight stays :math:`u_t`.

The KKT residual reported is relative to the solution, as cosines: the largest of
:math:`-\lambda_t` and :math:`|\lambda_t|` on the tasks with :math:`v_t > u_t`, in the unit basis,
divided by :math:`\|d\|` there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DualConeResult", "project_dual_cone"]

_RIDGE = 1e-13
_EPS = float(np.finfo(np.float64).eps)
# Block pivoting steps allowed without a smaller infeasible set before the single-pivot backup, and
# the iterations of pivoting before the rows it has not solved go to Lawson–Hanson.
_BLOCK_TRIES = 3
_PIVOTING_ITER = 25


@dataclass(frozen=True)
class DualConeResult:
    """Weights v (B×K) of the B projections and how well they solve their QPs."""

    weights: np.ndarray
    iterations: int
    converged: bool
    kkt_residual: float
    objective: np.ndarray


def _two_tasks(G: np.ndarray, U: np.ndarray) -> DualConeResult:
    """Closed form for K = 2: at most one constraint is inactive (v ≥ u, G PSD)."""
    a, b, c = float(G[0, 0]), float(G[0, 1]), float(G[1, 1])
    V = U.astype(np.float64, copy=True)
    for row in V:
        u0, u1 = float(row[0]), float(row[1])
        l0, l1 = a * u0 + b * u1, b * u0 + c * u1
        if l0 < 0.0 and a > 0.0:  # free v0: (Gv)_0 = 0, and then (Gv)_1 = u1 (c - b²/a) ≥ 0
            row[0] = -b * u1 / a
        elif l1 < 0.0 and c > 0.0:
            row[1] = -b * u0 / c
    return DualConeResult(V, 0, True, _residual(G, U, V), _objective(G, V))


def project_dual_cone(gramian: np.ndarray, U: np.ndarray, *, max_iter: int | None = None) -> DualConeResult:
    """Solve min vᵀGv s.t. v ≥ u for every row u of ``U`` (B×K, entries ≥ 0), G symmetric PSD (K×K)."""
    G = 0.5 * (gramian + gramian.T)
    U = np.atleast_2d(np.asarray(U, dtype=np.float64))
    K = G.shape[0]
    if K == 2:
        return _two_tasks(G, U)
    diagonal = np.diag(G).copy()
    top = float(diagonal.max()) if K else 0.0
    V = U.copy()
    if top <= 0.0:
        return DualConeResult(V, 0, True, 0.0, np.zeros(U.shape[0]))
    live = np.flatnonzero(diagonal > 0.0)  # zero gradients: λ_t = 0, v_t = u_t
    norms = np.sqrt(diagonal[live] / top)
    N = (G[np.ix_(live, live)] / top) / np.outer(norms, norms)
    Ut = U[:, live] * norms  # ũ = u / D
    limit = 10 * live.size + 50 if max_iter is None else max_iter
    x, iterations, done = _pivoting(N, Ut, min(limit, _PIVOTING_ITER))
    for b in np.flatnonzero(~done):  # pivoting cycled (a singular block): Lawson–Hanson, monotone
        x[b], steps = _lawson_hanson(N, Ut[b], limit)
        iterations = max(iterations, steps)
        done[b] = steps < limit
    converged = bool(done.all())
    V[:, live] += x / norms  # v = u + D s: exactly u where s = 0
    residual = _unit_residual(Ut + x, N, x > 0.0)  # N is the unit basis's Gramian (up to a scale)
    return DualConeResult(V, iterations, converged, residual, _objective(G, V))


def _objective(G: np.ndarray, V: np.ndarray) -> np.ndarray:
    """vᵀGv per row of V."""
    return ((V @ G) * V).sum(axis=1)


def _pivoting(N: np.ndarray, Ut: np.ndarray, max_iter: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Block principal pivoting on λ = N s + q, s ≥ 0, λ ≥ 0, sᵀλ = 0 (q = N ũ), batched over rows.

    Returns s, the iterations and which rows met the complementarity test."""
    B, K = Ut.shape
    q = Ut @ N
    free = q < 0.0  # the tasks that conflict with Jᵀu start free
    if not free.any():  # no conflict: v = u
        return np.zeros((B, K)), 0, np.ones(B, dtype=bool)
    Nr = N + _RIDGE * np.eye(K)  # for the block solves only; the tests use N itself
    s = np.zeros((B, K))
    best = np.full(B, K + 1)
    tries = np.full(B, _BLOCK_TRIES)
    solved = ~free.any(axis=1)  # rows without a conflict: v = u
    pending = np.flatnonzero(~solved)
    scale = np.abs(Ut).sum(axis=1)
    for iteration in range(1, max_iter + 1):
        F = free[pending]
        # Each problem's free block, gathered into the first m slots (m: the largest block), the
        # padding solved as the identity.
        m = max(int(F.sum(axis=1).max()), 1)
        order = np.argsort(~F, axis=1, kind="stable")[:, :m]
        valid = np.take_along_axis(F, order, axis=1)
        M = np.where(valid[:, :, None] & valid[:, None, :], Nr[order[:, :, None], order[:, None, :]], 0.0)
        M[:, np.arange(m), np.arange(m)] += ~valid
        rhs = np.where(valid, -np.take_along_axis(q[pending], order, axis=1), 0.0)
        block_solution = np.linalg.solve(M, rhs[:, :, None])[:, :, 0]
        sol = np.zeros((pending.size, K))
        np.put_along_axis(sol, order, np.where(valid, block_solution, 0.0), axis=1)
        sol[~F] = 0.0
        lam = sol @ N + q[pending]
        tol = 4.0 * K * _EPS * (scale[pending] + np.abs(sol).sum(axis=1))
        bad = (F & (sol < -tol[:, None])) | (~F & (lam < -tol[:, None]))
        count = bad.sum(axis=1)
        s[pending] = sol
        done = count == 0
        solved[pending[done]] = True
        if done.all():
            return np.clip(s, 0.0, None), iteration, solved
        better = count < best[pending]
        best[pending] = np.where(better, count, best[pending])
        block = better | (tries[pending] > 0)
        tries[pending] = np.where(better, _BLOCK_TRIES, np.where(block, tries[pending] - 1, tries[pending]))
        last = K - 1 - np.argmax(bad[:, ::-1], axis=1)  # Murty: flip the largest infeasible index only
        flip = np.where(block[:, None], bad, np.arange(K)[None, :] == last[:, None])
        free[pending] = F ^ flip
        pending = pending[~done]
    return np.clip(s, 0.0, None), max_iter, solved


def _lawson_hanson(N: np.ndarray, ut: np.ndarray, max_iter: int) -> tuple[np.ndarray, int]:
    """Lawson & Hanson's NNLS active set in Gram form for one problem: min (ũ+s)ᵀN(ũ+s), s ≥ 0.

    Primal feasible and monotone, so it terminates on a PSD (singular) N where pivoting may cycle.
    Returns s and the iterations (``max_iter`` when it stopped there)."""
    K = N.shape[0]
    q = N @ ut
    s = np.zeros(K)
    free = np.zeros(K, dtype=bool)
    scale = float(np.abs(ut).sum())
    for iteration in range(1, max_iter + 1):
        descent = -(N @ s + q)  # −λ: positive where raising s_j lowers the objective
        tol = 4.0 * K * _EPS * (scale + float(np.abs(s).sum()))
        candidates = np.where(free, -np.inf, descent)
        j = int(np.argmax(candidates))
        if not candidates[j] > tol:
            return s, iteration
        free[j] = True
        while True:
            idx = np.flatnonzero(free)
            block = N[np.ix_(idx, idx)] + _RIDGE * np.eye(idx.size)
            z = np.zeros(K)
            z[idx] = np.linalg.solve(block, -q[idx])
            if z[idx].min() > 0.0:
                s = z
                break
            negative = idx[z[idx] <= 0.0]
            ratios = s[negative] / (s[negative] - z[negative])
            alpha = float(ratios.min())
            s = s + alpha * (z - s)
            s[negative[np.argmin(ratios)]] = 0.0
            free &= s > 0.0
            s[~free] = 0.0
            if not free.any():
                break
    return s, max_iter


def _residual(G: np.ndarray, U: np.ndarray, V: np.ndarray) -> float:
    """max over rows of the KKT violation as cosines in the unit-norm basis (0 when d = 0)."""
    norms = np.sqrt(np.clip(np.diag(G), 0.0, None))
    live = norms > 0.0
    if not live.any():
        return 0.0
    n = norms[live]
    return _unit_residual(V[:, live] * n, G[np.ix_(live, live)] / np.outer(n, n), (V - U)[:, live] > 0.0)


def _unit_residual(x: np.ndarray, N: np.ndarray, raised: np.ndarray) -> float:
    """:func:`_residual` from the weights x in the unit-norm basis, its Gramian N (any positive
    multiple: the ratio does not change) and where v > u."""
    lam = x @ N
    size = np.sqrt(np.clip((x * lam).sum(axis=1), 0.0, None))
    violation = np.maximum(np.clip(-lam, 0.0, None), np.where(raised, np.abs(lam), 0.0)).max(axis=1)
    # Relative to ‖d‖, or to √ε Σ|x| when the direction cancels to round-off (its cosines are noise).
    floor = np.sqrt(_EPS) * np.abs(x).sum(axis=1)
    denominator = np.maximum(size, floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(denominator > 0.0, violation / denominator, 0.0)
    return float(relative.max()) if relative.size else 0.0
