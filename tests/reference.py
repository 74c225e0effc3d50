"""Independent references for the tests: generic QP and NNLS solvers, naive algorithm transcriptions."""

from __future__ import annotations

import numpy as np
import pytest


def reference_min_norm(G: np.ndarray) -> tuple[np.ndarray, float]:
    """min αᵀGα on the simplex by two independent generic solvers; returns the better solution.

    - quadprog (Goldfarb–Idnani dual active set) on G / max diag, with a tiny ridge since it needs a
      positive-definite matrix;
    - scipy's Lawson–Hanson NNLS on the equivalent problem min_{β≥0} ‖Aβ‖² + (1 − Σβ)² with
      G = AᵀA, whose solution normalized to sum 1 is a min-norm point.
    """
    # Imported here: the reference solvers are dev dependencies; the core-only job (no extras) skips
    # only the tests that compare against them.
    quadprog = pytest.importorskip("quadprog")
    scipy_optimize = pytest.importorskip("scipy.optimize")
    G = 0.5 * (G + G.T)
    K = G.shape[0]
    scale = float(np.max(np.diag(G)))
    if scale <= 0:
        return np.full(K, 1.0 / K), 0.0
    Gn = G / scale
    candidates = []
    C = np.hstack([np.ones((K, 1)), np.eye(K)])
    b = np.r_[1.0, np.zeros(K)]
    for ridge in (1e-13, 1e-10):
        try:
            alpha = quadprog.solve_qp(Gn + ridge * np.eye(K), np.zeros(K), C, b, meq=1)[0]
        except ValueError:
            continue
        candidates.append(alpha)
    eigenvalues, vectors = np.linalg.eigh(Gn)
    keep = eigenvalues > 1e-15
    A = (vectors[:, keep] * np.sqrt(eigenvalues[keep])).T
    beta = scipy_optimize.nnls(
        np.vstack([A, np.ones((1, K))]), np.r_[np.zeros(A.shape[0]), 1.0], maxiter=100 * K
    )[0]
    if beta.sum() > 0:
        candidates.append(beta)
    best, best_f = None, np.inf
    for alpha in candidates:
        alpha = np.clip(alpha, 0.0, None)
        alpha = alpha / alpha.sum()
        f = float(alpha @ G @ alpha)
        if f < best_f:
            best, best_f = alpha, f
    assert best is not None
    return best, best_f


def objective_tolerance(f_reference: float, G: np.ndarray, relative: float = 1e-6) -> float:
    """Allowed excess objective: `relative` of the optimum, floored at 1e-12 of max_t ‖g_t‖².

    The floor is for optima at rounding level (0 in the hull), where no solver is more precise.
    """
    return relative * max(f_reference, 0.0) + 1e-12 * float(np.max(np.diag(G)))


def two_point_reference(aa: float, ab: float, bb: float) -> float:
    """Weight on a of min ‖γa + (1−γ)b‖², γ ∈ [0, 1], by minimizing the 1-D quadratic directly."""
    curvature = aa + bb - 2 * ab
    if curvature <= 0:
        return 1.0 if aa <= bb else 0.0
    return float(np.clip((bb - ab) / curvature, 0.0, 1.0))


def frank_wolfe_reference(G: np.ndarray, iterations: int) -> np.ndarray:
    """Algorithm 2 of Sener & Koltun (2018), transcribed naively (full recomputation each step)."""
    K = G.shape[0]
    alpha = np.full(K, 1.0 / K)
    for _ in range(iterations):
        t = int(np.argmin(G @ alpha))
        e = np.zeros(K)
        e[t] = 1.0
        # min over gamma of ‖(1−γ) Σα g + γ g_t‖²: a two-point problem with a = g_t, b = Σα g.
        gamma = two_point_reference(float(G[t, t]), float(alpha @ G[:, t]), float(alpha @ G @ alpha))
        alpha = (1 - gamma) * alpha + gamma * e
    return alpha


def random_jacobian(rng: np.random.Generator, K: int, n: int) -> np.ndarray:
    """K gradients in R^n sharing a common component, with task scales spread over 10^±1."""
    common = rng.standard_normal(n) * rng.uniform(0.0, 3.0)
    return (common + rng.standard_normal((K, n))) * 10.0 ** rng.uniform(-1, 1, size=(K, 1))


# Ill-scaled problems (task gradient norms many orders of magnitude apart). A solver working on G
# divided by its largest entry loses the short gradients' digits below that entry's rounding; these
# references work in the basis of unit-norm gradients instead, and the checks evaluate in extended
# precision, so that they stay exact relative to the solution.


def reference_min_norm_rescaled(G: np.ndarray) -> tuple[np.ndarray, float]:
    """min αᵀGα on the simplex, accurate relative to the optimum for any spread of gradient norms.

    quadprog on the equivalent problem in ν = α·‖g‖/min‖g‖ (the weights of the unit-norm gradients):
    min νᵀNν subject to wᵀν = 1, ν ≥ 0, with N = D G D unit-diagonal (D = diag(1/‖g_t‖)) and
    w = min‖g‖/‖g‖ ≤ 1, so that the QP is well scaled; a zero gradient is optimal by itself. The best
    of this and :func:`reference_min_norm` (by the extended-precision objective) is returned, with the
    objective in extended precision.
    """
    quadprog = pytest.importorskip("quadprog")
    G = 0.5 * (G + G.T)
    K = G.shape[0]
    norms = np.sqrt(np.clip(np.diag(G), 0.0, None))
    if norms.min() <= 0.0:
        alpha = np.zeros(K)
        alpha[int(np.argmin(norms))] = 1.0
        return alpha, 0.0
    N = G / np.outer(norms, norms)
    w = norms.min() / norms
    C = np.hstack([w[:, None], np.eye(K)])
    b = np.r_[1.0, np.zeros(K)]
    candidates = [reference_min_norm(G)[0]]
    for ridge in (1e-15, 1e-13, 1e-11):
        try:
            nu = quadprog.solve_qp(N + ridge * np.eye(K), np.zeros(K), C, b, meq=1)[0]
        except ValueError:
            continue
        alpha = np.clip(nu * w, 0.0, None)
        candidates.append(alpha / alpha.sum())
    objectives = [objective_extended(G, alpha) for alpha in candidates]
    best = int(np.argmin(objectives))
    return candidates[best], objectives[best]


def objective_extended(G: np.ndarray, alpha: np.ndarray) -> float:
    """αᵀGα in extended precision (np.longdouble): exact relative to the sum of |α_i α_j G_ij|."""
    G_ext, a = G.astype(np.longdouble), alpha.astype(np.longdouble)
    return float(a @ G_ext @ a)


def contribution_scale(G: np.ndarray, alpha: np.ndarray) -> float:
    """(Σ_t α_t ‖g_t‖)²: the size of the terms that cancel in ‖Σ_t α_t g_t‖².

    An objective below about 1e-16 of it is zero as far as float64 can tell (no solver that reads G
    can resolve it), so tolerances on the objective have a floor at a small multiple of it.
    """
    norms = np.sqrt(np.clip(np.diag(G), 0.0, None))
    return float(alpha @ norms) ** 2


def scaled_kkt_violations(G: np.ndarray, alpha: np.ndarray) -> tuple[float, float]:
    """The KKT conditions g_tᵀd ≥ ‖d‖² (all t; = where α_t > 0) of d = Σ α_t g_t, scale-free.

    Violation of task t: (‖d‖² − g_tᵀd) / (‖g_t‖·‖d‖) = ‖d‖/‖g_t‖ − cos(g_t, d), in extended
    precision, so a long gradient's condition is measured against its own length and a short one's
    against its own. When ‖d‖ is below 1e-6·Σα_t‖g_t‖ (an optimum that is zero to 12 digits), ‖d‖ in
    the denominator is replaced by that. Returns (largest dual violation, largest complementarity
    violation over the tasks whose contribution α_t‖g_t‖ exceeds 1e-9·Σα‖g‖).
    """
    G_ext, a = G.astype(np.longdouble), alpha.astype(np.longdouble)
    Ga = G_ext @ a
    f = a @ Ga
    norms = np.sqrt(np.clip(np.diag(G_ext), 0.0, None))
    contributions = a * norms
    total = float(contributions.sum())
    length = max(float(np.sqrt(max(float(f), 0.0))), 1e-6 * total)
    denominator = norms * length
    violation = (f - Ga) / np.where(denominator > 0, denominator, 1.0)
    support = contributions > 1e-9 * total
    complementarity = float(np.abs(violation[support]).max()) if support.any() else 0.0
    return float(violation.max()), complementarity


def official_pgd_reference(
    G: np.ndarray, max_iter: int = 100_000, *, at_cap: str = "raise", pair_bound: float = 1e8
) -> tuple[np.ndarray, int]:
    """``MinNormSolver.find_min_norm_element`` of the official MGDA code, transcribed on a Gramian.

    Source: github isl-org/MultiObjectiveOptimization, ``multi_task/min_norm_solvers.py`` (archived;
    read at commit bf5bbb3). Same steps in the same order, written out with the official loops (scalar
    inner products accumulated pair by pair), with the official constants: end-of-segment weights
    0.001 / 0.999, ``STOP_CRIT`` 1e-5, the first best pair below the initial ``dmin = 1e8``, the 1e-7
    threshold of ``_next_point``, and the return of the point *before* the last change. In float64 (the
    official code keeps the inner products as float32 torch scalars). The official loop has no working
    cap; ``max_iter`` only guards the tests: an error if reached, or, with ``at_cap="return"``, the
    point after ``max_iter`` updates (to compare the first iterates). ``pair_bound`` is the official
    initial ``dmin`` (1e8); ``np.inf`` removes that bound. Returns (weights, iterations).
    """
    K = G.shape[0]

    def two_point(v1v1: float, v1v2: float, v2v2: float) -> tuple[float, float]:
        # _min_norm_element_from2: weight on the first point and the cost the official code reports.
        if v1v2 >= v1v1:
            return 0.999, v1v1
        if v1v2 >= v2v2:
            return 0.001, v2v2
        gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
        return gamma, v2v2 + gamma * (v1v2 - v2v2)

    def projection(y: np.ndarray) -> np.ndarray:
        # _projection2simplex: scan the sorted entries for the first break point.
        m = len(y)
        ordered = np.flip(np.sort(y), axis=0)
        running = 0.0
        threshold = (np.sum(y) - 1.0) / m
        for i in range(m - 1):
            running += ordered[i]
            candidate = (running - 1) / (i + 1.0)
            if candidate > ordered[i + 1]:
                threshold = candidate
                break
        return np.maximum(y - threshold, np.zeros(y.shape))

    def next_point(current: np.ndarray, grad: np.ndarray) -> np.ndarray:
        projected = grad - (np.sum(grad) / K)
        to_zero = -1.0 * current[projected < 0] / projected[projected < 0]
        to_one = (1.0 - current[projected > 0]) / projected[projected > 0]
        step = 1
        if len(to_zero[to_zero > 1e-7]) > 0:
            step = np.min(to_zero[to_zero > 1e-7])
        if len(to_one[to_one > 1e-7]) > 0:
            step = min(step, np.min(to_one[to_one > 1e-7]))
        return projection(projected * step + current)

    best = None
    dmin = pair_bound
    for i in range(K):
        for j in range(i + 1, K):
            c, d = two_point(G[i, i], G[i, j], G[j, j])
            if d < dmin:
                dmin = d
                best = (i, j, c)
    if best is None:
        raise RuntimeError("the official code fails here: no pair costs less than 1e8 (sol unassigned)")
    alpha = np.zeros(K)
    alpha[best[0]] = best[2]
    alpha[best[1]] = 1 - best[2]
    if K < 3:
        return alpha, 0
    for iteration in range(1, max_iter + 1):
        grad = -1.0 * np.dot(G, alpha)
        target = next_point(alpha, grad)
        v1v1 = v1v2 = v2v2 = 0.0
        for i in range(K):
            for j in range(K):
                v1v1 += alpha[i] * alpha[j] * G[i, j]
                v1v2 += alpha[i] * target[j] * G[i, j]
                v2v2 += target[i] * target[j] * G[i, j]
        nc, _ = two_point(v1v1, v1v2, v2v2)
        new = nc * alpha + (1 - nc) * target
        if np.sum(np.abs(new - alpha)) < 1e-5:
            return alpha, iteration
        alpha = new
    if at_cap == "return":
        return alpha, max_iter
    raise RuntimeError(f"the official PGD did not stop within {max_iter} iterations")
