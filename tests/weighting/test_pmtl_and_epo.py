"""Pareto MTL and EPO: toy problems with known Pareto fronts, vector-space references, golden values."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

import mtlopt
from mtlopt.preferences import das_dennis, preference_vectors
from mtlopt.weighting.epo import EPO, non_uniformity
from mtlopt.weighting.pmtl import ParetoMTL, circle_preferences
from reference import random_jacobian, reference_min_norm


def step_weights(weighting, J: np.ndarray, L: np.ndarray):
    output = weighting.compute(torch.from_numpy(J @ J.T), torch.from_numpy(L))
    weights = output.weights
    assert weights.dtype == torch.float64 and weights.shape == (J.shape[0],)
    assert bool(torch.isfinite(weights).all())
    return weights.numpy(), output.diagnostics


# --- toy problems ----------------------------------------------------------------------------------------


def quadratics(centres: np.ndarray):
    """L_i(θ) = ‖θ − c_i‖²: its Pareto set is the convex hull of the centres."""

    def losses_and_jacobian(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        diff = theta[None, :] - centres
        return (diff**2).sum(axis=1), 2.0 * diff

    return losses_and_jacobian


def pmtl_synthetic(n: int):
    """The synthetic problem of the Pareto MTL paper (§5): f_{1,2}(x) = 1 − exp(−‖x ∓ 1/√n‖²).

    Its Pareto set is the segment x = s·1/√n, s ∈ [−1, 1]; its front is concave (where linear
    scalarization finds only the two ends)."""
    shift = 1.0 / math.sqrt(n)

    def losses_and_jacobian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = x - shift, x + shift
        e1, e2 = math.exp(-(a @ a)), math.exp(-(b @ b))
        return np.array([1.0 - e1, 1.0 - e2]), np.stack([2.0 * a * e1, 2.0 * b * e2])

    return losses_and_jacobian


def distance_to_hull(theta: np.ndarray, centres: np.ndarray) -> float:
    """Distance from θ to the convex hull of the centres (min-norm point of c_i − θ)."""
    D = centres - theta[None, :]
    alpha, _ = reference_min_norm(D @ D.T)
    return float(np.linalg.norm(alpha @ D))


@pytest.mark.parametrize("eps", [1e-4, 1e-6])
@pytest.mark.parametrize("preference", [(1.0, 3.0), (4.0, 1.0), (0.05, 0.95)])
def test_epo_reaches_the_preference_ray_on_two_quadratics(preference, eps: float) -> None:
    """Gradient descent (step 0.1) with EPO's weights ends where r ⊙ L ∝ 1, on the Pareto set.

    EPO switches to descent once μ(r⊙L) ≤ eps; for two tasks μ ≈ 2δ² with l̂ = (½ ± δ), so the
    relative gap |r₁L₁ − r₂L₂| / (r₁L₁ + r₂L₂) = 2δ ends near √(2·eps) (asserted: 1.5·√(2·eps), i.e.
    0.021 and 0.0021). The point is within 1e-6 of the segment [c₁, c₂] (the Pareto set) and within
    2% of |c₂ − c₁| of the exact EPO point."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2, 5))
    problem = quadratics(centres)
    r = np.asarray(preference)
    weighting = EPO(r, eps=eps)
    theta = rng.standard_normal(5) * 2.0
    for _ in range(250):
        L, J = problem(theta)
        w, diagnostics = step_weights(weighting, J, L)
        theta = theta - 0.1 * w @ J
    L, _ = problem(theta)
    rl = r * L
    assert abs(rl[0] - rl[1]) / rl.sum() < 1.5 * math.sqrt(2.0 * eps)
    assert diagnostics["mode"] == "descent"
    assert distance_to_hull(theta, centres) < 1e-6
    # The exact EPO point: θ = c₁ + t(c₂ − c₁) with r₁t² = r₂(1 − t)².
    t = math.sqrt(r[1]) / (math.sqrt(r[0]) + math.sqrt(r[1]))
    target = centres[0] + t * (centres[1] - centres[0])
    assert np.linalg.norm(theta - target) < 0.02 * np.linalg.norm(centres[1] - centres[0])
    assert weighting.descent_steps > 0 and weighting.balance_steps > 0 and weighting.fallbacks == 0


@pytest.mark.parametrize("preference", [(1.0, 1.5, 2.0), (3.0, 1.0, 1.0)])
def test_epo_reaches_the_ray_with_three_tasks(preference) -> None:
    """Three quadratics in R^3 (Pareto set: the triangle of the centres). With μ ≤ eps = 1e-4 and
    l̂_t = (1 + δ_t)/3, δ_t² ≤ 2·3·μ, so max/min of r ⊙ L is at most 1.0245/0.9755 < 1.05.

    The step is 0.02: with a fixed step, the balance mode of EPO (whose direction does not shrink with
    μ) oscillates around the ray when the step is large (0.1 here cycles at μ ≈ 1e-3)."""
    rng = np.random.default_rng(1)
    centres = np.eye(3) + 0.1 * rng.standard_normal((3, 3))
    problem = quadratics(centres)
    r = np.asarray(preference)
    weighting = EPO(r)
    theta = rng.standard_normal(3)
    for _ in range(600):
        L, J = problem(theta)
        w, diagnostics = step_weights(weighting, J, L)
        theta = theta - 0.02 * w @ J
    L, _ = problem(theta)
    rl = r * L
    assert rl.max() / rl.min() < 1.05
    assert diagnostics["mode"] == "descent"
    assert distance_to_hull(theta, centres) < 1e-6


def angular_violation(L: np.ndarray, U: np.ndarray, k: int) -> float:
    """max_j cos(u_j, L) − cos(u_k, L): ≤ 0 iff L is at least as close in angle to u_k as to any u_j."""
    unit = U / np.linalg.norm(U, axis=1, keepdims=True)
    cosines = unit @ (L / np.linalg.norm(L))
    return float(cosines.max() - cosines[k])


OFFICIAL_PMTL = {
    "weight_scale": "num-tasks",
    "constraint_normalization": "l2",
    "solver": "pgd",
    "clip": (0.001, 0.999),
}


@pytest.mark.parametrize(("options", "lr"), [({}, 1.0), (OFFICIAL_PMTL, 0.5)], ids=["paper", "official"])
def test_pmtl_members_end_in_their_preference_regions(options, lr: float) -> None:
    """Five members on the paper's synthetic problem (concave front), 150 steps of size 1 (0.5 with the
    code's Σ|w| = 2): each ends Pareto critical (min-norm objective < 1e-12), on the Pareto set (within
    1e-3 of the segment) and in its own region (angular violation ≤ 1e-4: at most on the boundary).

    The step matters: once on the front, the task gradients alone cancel and Pareto MTL stops
    wherever it is, so a step that overshoots the region before reaching the front (step 1 with the
    code's Σ|w| = 2) leaves a member just outside its region."""
    n = 5
    problem = pmtl_synthetic(n)
    U = circle_preferences(5).numpy()
    rng = np.random.default_rng(0)
    direction = np.ones(n) / math.sqrt(n)
    for k in range(5):
        weighting = ParetoMTL(U, k, **options)
        x = rng.uniform(-0.5, 0.5, n)
        for _ in range(150):
            L, J = problem(x)
            w, diagnostics = step_weights(weighting, J, L)
            x = x - lr * w @ J
        L, _ = problem(x)
        assert diagnostics["phase"] == "main"
        assert diagnostics["min_norm"] < 1e-12
        assert angular_violation(L, U, k) <= 1e-4, (k, L)
        s = float(x @ direction)
        assert np.linalg.norm(x - s * direction) < 1e-3 and abs(s) <= 1.0
        if options:
            assert abs(np.abs(w).sum() - 2.0) < 1e-12


@pytest.mark.parametrize(("k", "start"), [(0, 0.9), (4, -0.9), (3, -0.5)])
def test_pmtl_feasibility_phase_moves_an_infeasible_start_into_its_region(k: int, start: float) -> None:
    """From a start whose losses lie in another region, the feasibility phase descends the violated
    constraints (the largest violation decreases at every step) until the point is feasible, then
    hands over to the main phase for good."""
    n = 5
    problem = pmtl_synthetic(n)
    U = circle_preferences(5).numpy()
    weighting = ParetoMTL(U, k)
    x = np.full(n, start / math.sqrt(n))
    L, _ = problem(x)
    assert angular_violation(L, U, k) > 0.1
    previous = math.inf
    warmup_steps = 0
    while True:
        L, J = problem(x)
        w, diagnostics = step_weights(weighting, J, L)
        if diagnostics["phase"] == "main":
            break
        assert diagnostics["violated"] and not diagnostics["feasible"]
        worst = max(diagnostics["constraints"])
        assert worst < previous
        previous = worst
        x = x - 1.0 * w @ J
        warmup_steps += 1
        assert warmup_steps < 60, "the feasibility phase did not end"
    assert diagnostics["feasible"] and warmup_steps >= 2
    assert angular_violation(L, U, k) <= 0.0
    assert weighting.state_dict() == {
        "phase": "main",
        "steps": warmup_steps + 1,
        "warmup_taken": warmup_steps,
    }


def test_pmtl_warmup_steps_caps_the_feasibility_phase() -> None:
    U = circle_preferences(5).numpy()
    J = np.array([[1.0, 0.0], [0.0, 1.0]])
    L = np.array([0.1, 1.0])  # in region 4, far from region 0: constraints of 0 are violated
    for cap, phases in [(0, ["main"] * 3), (2, ["warmup", "warmup", "main"]), (None, ["warmup"] * 3)]:
        weighting = ParetoMTL(U, 0, warmup_steps=cap)
        assert [step_weights(weighting, J, L)[1]["phase"] for _ in range(3)] == phases


# --- agreement with a vector-space implementation ------------------------------------------------------


def pmtl_vector_space(
    J: np.ndarray, L: np.ndarray, U: np.ndarray, k: int, phase: str, tol: float
) -> np.ndarray:
    """Pareto MTL written on explicit vectors: the constraint gradients ∇G_j = (u_j − u_k)ᵀJ are formed
    as vectors, the min-norm point of their hull (with the task gradients in the main phase) is found
    by generic QP solvers (quadprog / NNLS), and the task weights are read back from the direction
    (J has full row rank)."""
    unit = U / np.linalg.norm(U, axis=1, keepdims=True)
    values = np.array([(unit[j] - unit[k]) @ L for j in range(len(U))])
    others = [j for j in range(len(U)) if j != k]
    if phase == "warmup":
        vectors = [(unit[j] - unit[k]) @ J for j in others if values[j] > 0]
    else:
        vectors = [*J, *[(unit[j] - unit[k]) @ J for j in others if values[j] > -tol]]
    V = np.stack(vectors)
    alpha, _ = reference_min_norm(V @ V.T)
    direction = alpha @ V
    return np.linalg.lstsq(J.T, direction, rcond=None)[0]


@pytest.mark.parametrize("seed", range(12))
def test_pmtl_gramian_space_matches_the_vector_space_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    K = 2 if seed % 2 else 3
    U = circle_preferences(6).numpy() if K == 2 else das_dennis(3, 3).numpy()
    k = int(rng.integers(len(U)))
    J = random_jacobian(rng, K, 3 * K)
    L = rng.uniform(0.1, 2.0, K)
    tol = 0.05 if seed % 3 == 0 else 0.0
    # Main phase.
    w, diagnostics = step_weights(ParetoMTL(U, k, warmup_steps=0, tolerance=tol), J, L)
    reference = pmtl_vector_space(J, L, U, k, "main", tol)
    assert diagnostics["phase"] == "main"
    np.testing.assert_allclose(w, reference, rtol=1e-6, atol=1e-8 * np.abs(reference).max())
    # Feasibility phase, when this point violates a constraint.
    w, diagnostics = step_weights(ParetoMTL(U, k), J, L)
    if diagnostics["phase"] == "warmup":
        reference = pmtl_vector_space(J, L, U, k, "warmup", tol)
        np.testing.assert_allclose(w, reference, rtol=1e-6, atol=1e-8 * np.abs(reference).max())
    else:
        assert not diagnostics["violated"]


def best_vertex(objective: np.ndarray, A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """max objectiveᵀα over {α ≥ 0, Σα = 1, Aα ≥ b} by enumerating the vertices (small K only)."""
    K = objective.shape[0]
    rows = np.vstack([np.eye(K), A])
    rhs = np.concatenate([np.zeros(K), b])
    best, best_value = None, -math.inf
    for chosen in itertools.combinations(range(rows.shape[0]), K - 1):
        system = np.vstack([rows[list(chosen)], np.ones((1, K))])
        if abs(np.linalg.det(system)) < 1e-12:
            continue
        alpha = np.linalg.solve(system, np.append(rhs[list(chosen)], 1.0))
        if np.all(rows @ alpha >= rhs - 1e-9) and objective @ alpha > best_value:
            best, best_value = alpha, float(objective @ alpha)
    assert best is not None, "infeasible"
    return best, best_value


def _entropy():
    """scipy's KL divergence (the reference's, skipped without scipy: EPO itself needs it)."""
    return pytest.importorskip("scipy.stats").entropy


def epo_vector_space(
    g: np.ndarray, L: np.ndarray, r: np.ndarray, eps: float, descent: str
) -> tuple[np.ndarray, str]:
    """EPO on explicit gradient vectors g (K×n): μ as scipy's KL divergence, a = (Σ rL)·∂μ/∂L by
    autograd, every inner product with the balance direction d_bal = Σ a_t g_t taken in R^n, and the LP
    solved by vertex enumeration."""
    K = len(L)
    rl = r * L
    mu = float(_entropy()(rl / rl.sum(), np.full(K, 1.0 / K)))
    losses = torch.tensor(L, requires_grad=True)
    weighted = torch.from_numpy(r) * losses
    l_hat = weighted / weighted.sum()
    (grad,) = torch.autograd.grad((l_hat * torch.log(K * l_hat)).sum(), losses)
    a = grad.numpy() * rl.sum()
    d_bal = a @ g
    inner = g @ g.T  # rows: ⟨g_j, g_t⟩
    along = g @ d_bal  # ⟨g_t, d_bal⟩
    if mu > eps:
        J_set = along > 0
        if J_set.any():
            b = along.copy()
            b[J_set] = -np.inf
            b[rl == rl.max()] = 0.0
        else:
            b = np.zeros(K)
        keep = np.isfinite(b)
        alpha, _ = best_vertex(along, inner[keep], b[keep])
        return alpha, "balance"
    A, b = inner, np.zeros(K)
    if descent == "restricted":
        A, b = np.vstack([A, along[None, :]]), np.append(b, min(along.max(), 0.0))
    alpha, _ = best_vertex(inner.sum(axis=0), A, b)
    return alpha, "descent"


@pytest.mark.parametrize("seed", range(24))
def test_epo_gramian_space_matches_the_vector_space_reference(seed: int) -> None:
    """Random gradients: conflicting Gaussian ones (seeds < 12: interior LP optima are common) and
    ones sharing a component, with scales spread over 10^±1 (seeds ≥ 12); balance and descent modes."""
    rng = np.random.default_rng(100 + seed)
    K = 2 + seed % 3
    g = rng.standard_normal((K, 2 * K)) if seed < 12 else random_jacobian(rng, K, 2 * K)
    r = rng.uniform(0.2, 1.0, K)
    descent = "relaxed" if seed % 4 == 3 else "restricted"
    if seed % 2:  # near the ray: descent mode
        L = (1.0 + 1e-4 * rng.standard_normal(K)) / r
    else:
        L = rng.uniform(0.1, 2.0, K)
    w, diagnostics = step_weights(EPO(r, descent=descent), g, L)
    reference, mode = epo_vector_space(g, L, r, 1e-4, descent)
    assert diagnostics["mode"] == mode and not diagnostics["fallback"]
    assert diagnostics["non_uniformity"] == pytest.approx(
        _entropy()(r * L / (r * L).sum(), np.full(K, 1.0 / K))
    )
    np.testing.assert_allclose(w, reference, atol=1e-6)


def test_epo_adjustments_are_the_gradient_of_the_non_uniformity() -> None:
    L = np.array([0.3, 1.2, 0.7])
    r = np.array([1.0, 0.5, 2.0])
    mu, a = non_uniformity(r, L)
    losses = torch.tensor(L, requires_grad=True)
    weighted = torch.from_numpy(r) * losses
    l_hat = weighted / weighted.sum()
    value = (l_hat * torch.log(3 * l_hat)).sum()
    (grad,) = torch.autograd.grad(value, losses)
    assert mu == pytest.approx(value.item(), rel=1e-14)
    np.testing.assert_allclose(a.numpy(), grad.numpy() * weighted.sum().item(), rtol=1e-12)


# --- golden values -------------------------------------------------------------------------------------

GOLDEN_J = np.array([[1.0, 0.5, -0.2, 0.0], [-0.3, 1.2, 0.4, 0.1], [0.2, -0.1, 0.9, -0.6]])
GOLDEN_U = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])


def test_golden_values() -> None:
    G = torch.from_numpy(GOLDEN_J @ GOLDEN_J.T)
    L = torch.tensor([0.9, 0.4, 0.6], dtype=torch.float64)
    pmtl = ParetoMTL(GOLDEN_U, 0, warmup_steps=1)
    warmup = pmtl.compute(G, L)
    main = pmtl.compute(G, L)
    assert warmup.diagnostics["phase"] == "warmup" and warmup.diagnostics["violated"] == [3]
    assert main.diagnostics["phase"] == "main" and main.diagnostics["active"] == [3]
    balance = EPO([1.0, 2.0, 1.5]).compute(G, L)
    descent = EPO([1.0, 2.25, 1.5]).compute(G, L)
    assert balance.diagnostics["mode"] == "balance" and descent.diagnostics["mode"] == "descent"
    got = [w.weights.tolist() for w in (warmup, main, balance, descent)]
    golden = [
        # One violated constraint (u_3 = 1/√3 closer to L than u_0 = e_1): w = u_3 − u_0.
        [1.0 / math.sqrt(3.0) - 1.0, 1.0 / math.sqrt(3.0), 1.0 / math.sqrt(3.0)],
        [0.2690929628097585, 0.28932349016633935, 0.3073080479404119],
        [0.02272727272727272, 0.0, 0.9772727272727273],
        [0.0, 1.0, 0.0],  # r ⊙ L = (0.9, 0.9, 0.9): on the ray, μ = 0
    ]
    np.testing.assert_allclose(got, golden, rtol=1e-9, atol=1e-12)
    assert balance.diagnostics["non_uniformity"] == pytest.approx(0.001499393934728966, rel=1e-12)
    assert abs(descent.diagnostics["non_uniformity"]) < 1e-15


# --- degenerate input, errors, state -------------------------------------------------------------------


@pytest.mark.parametrize(
    "losses", [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [0.0, 1.0, 2.0], [1e-300, 1.0, 1e300]], ids=str
)
@pytest.mark.parametrize("gramian", ["zero", "rank-one", "opposite"])
def test_degenerate_inputs_give_finite_weights(losses, gramian) -> None:
    J = {
        "zero": np.zeros((3, 4)),
        "rank-one": np.outer([1.0, 2.0, -1.0], [0.5, 0.0, 1.0, 0.0]),
        "opposite": np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]),
    }[gramian]
    L = np.asarray(losses)
    for weighting in (
        ParetoMTL(GOLDEN_U, 0),
        ParetoMTL(
            GOLDEN_U,
            2,
            warmup_steps=0,
            tolerance=0.1,
            constraint_normalization="l2",
            weight_scale="num-tasks",
        ),
        EPO([1.0, 2.0, 1.5]),
        EPO([1.0, 1.0, 1.0], descent="relaxed", weight_scale="num-tasks"),
    ):
        for _ in range(2):
            w, diagnostics = step_weights(weighting, J, L)
        if isinstance(weighting, EPO):
            assert math.isfinite(diagnostics["non_uniformity"]) and not diagnostics["fallback"]
            assert abs(w.sum() - (3.0 if weighting.weight_scale == "num-tasks" else 1.0)) < 1e-9


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ParetoMTL([[1.0, -0.1], [0.0, 1.0]], 0), r"vector 0 .*>= 0"),
        (lambda: ParetoMTL([[1.0, 0.0], [0.0, 0.0]], 0), r"vector 1 .*not a ray"),
        (lambda: ParetoMTL([[1.0, math.nan], [0.0, 1.0]], 0), r"vector 0 .*finite"),
        (lambda: ParetoMTL([1.0, 0.0], 0), r"shape \(M, K\).*\(2,\)"),
        (lambda: ParetoMTL([[1.0], [2.0]], 0), r"at least 2 entries"),
        (lambda: ParetoMTL(circle_preferences(5), 5), r"index is 5, out of range .*0\.\.4"),
        (lambda: ParetoMTL(circle_preferences(5), -1), r"index is -1"),
        (lambda: ParetoMTL(circle_preferences(5), 1.5), r"index must be an integer"),
        (lambda: ParetoMTL(circle_preferences(5), 0, warmup_steps=-1), r"warmup_steps"),
        (lambda: ParetoMTL(circle_preferences(5), 0, tolerance=-1.0), r"tolerance"),
        (lambda: ParetoMTL(circle_preferences(5), 0, weight_scale="one"), r"weight_scale"),
        (lambda: ParetoMTL(circle_preferences(5), 0, solver="newton"), r"solver"),
        (lambda: EPO([1.0, -2.0]), r"entries \[1\] are not finite and > 0"),
        (lambda: EPO([1.0, 0.0]), r"entries \[1\]"),
        (lambda: EPO([1.0, math.inf]), r"entries \[1\]"),
        (lambda: EPO([1.0]), r"at least 2 entries"),
        (lambda: EPO([[1.0, 2.0]]), r"vector of K entries"),
        (lambda: EPO([1.0, 1.0], eps=-1.0), r"eps"),
        (lambda: EPO([1.0, 1.0], descent="free"), r"descent"),
    ],
)
def test_bad_arguments_raise_value_errors(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_number_of_tasks_and_bad_losses_raise() -> None:
    G = torch.eye(3, dtype=torch.float64)
    L = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"preferences have 2 entries .* Gramian is 3×3"):
        ParetoMTL(circle_preferences(3), 0).compute(G, L)
    with pytest.raises(ValueError, match=r"preference has 2 entries .* Gramian is 3×3"):
        EPO([1.0, 2.0]).compute(G, L)
    with pytest.raises(ValueError, match=r"task\(s\) \[1\] is negative"):
        EPO([1.0, 2.0, 3.0]).compute(G, torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"ParetoMTL needs non-negative losses.*task\(s\) \[0, 2\] is negative"
    ):
        ParetoMTL(preference_vectors(3, 6), 1).compute(
            G, torch.tensor([-1.0, 0.5, -2.0], dtype=torch.float64)
        )
    with pytest.raises(ValueError, match=r"losses of shape \(2,\)"):
        EPO([1.0, 2.0, 3.0]).compute(G, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"set up for 2 tasks but got 3 losses"):
        model = nn.Linear(2, 3)
        mtlopt.backward(list(model(torch.ones(1, 2)).sum(0)), EPO([1.0, 2.0]), shared_params=model)


def test_state_round_trip_and_reset() -> None:
    rng = np.random.default_rng(3)
    U = circle_preferences(5).numpy()
    J = random_jacobian(rng, 2, 6)
    L_infeasible, L_feasible = np.array([0.1, 1.0]), np.array([1.0, 0.1])
    pmtl = ParetoMTL(U, 0)
    step_weights(pmtl, J, L_infeasible)
    state = pmtl.state_dict()
    assert state == {"phase": "warmup", "steps": 1, "warmup_taken": 1}
    step_weights(pmtl, J, L_feasible)
    assert pmtl.state_dict()["phase"] == "main"
    restored = ParetoMTL(U, 0)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    # Once in the main phase a member stays there: an infeasible point gets main-phase weights.
    pmtl.load_state_dict(pmtl.state_dict())
    assert step_weights(pmtl, J, L_infeasible)[1]["phase"] == "main"
    assert step_weights(restored, J, L_infeasible)[1]["phase"] == "warmup"
    pmtl.reset()
    assert pmtl.state_dict() == {"phase": "warmup", "steps": 0, "warmup_taken": 0}
    with pytest.raises(ValueError, match="keys"):
        pmtl.load_state_dict({"phase": "main"})
    with pytest.raises(ValueError, match="phase"):
        pmtl.load_state_dict({"phase": "done", "steps": 0, "warmup_taken": 0})

    epo = EPO([1.0, 2.0])
    for L in (L_infeasible, 1.0 / np.array([1.0, 2.0])):
        step_weights(epo, J, L)
    state = epo.state_dict()
    assert state == {"steps": 2, "balance_steps": 1, "descent_steps": 1, "fallbacks": 0}
    copy = EPO([1.0, 2.0])
    copy.load_state_dict(state)
    assert copy.state_dict() == state
    epo.reset()
    assert epo.state_dict() == {"steps": 0, "balance_steps": 0, "descent_steps": 0, "fallbacks": 0}
    with pytest.raises(ValueError, match="keys"):
        epo.load_state_dict({})


def test_epo_falls_back_to_the_preference_when_the_lp_fails(monkeypatch) -> None:
    import mtlopt.weighting.epo as epo_module

    class Failed:
        status, x, fun, message = 2, None, math.nan, "The problem is infeasible."

    monkeypatch.setattr(epo_module, "_linprog", lambda: lambda *args, **kwargs: Failed())
    weighting = EPO([1.0, 3.0], weight_scale="num-tasks")
    w, diagnostics = step_weights(weighting, np.eye(2), np.array([1.0, 2.0]))
    np.testing.assert_allclose(w, [0.5, 1.5])
    assert diagnostics["fallback"] and diagnostics["lp_status"] == 2 and weighting.fallbacks == 1


def test_epo_without_scipy_raises_a_clear_import_error(monkeypatch) -> None:
    """Refused at construction, with the install hint, not at the first step."""
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    with pytest.raises(ImportError, match=r'scipy is not installed.*pip install "mtlopt\[pareto\]"'):
        EPO([1.0, 1.0])


@pytest.mark.parametrize("make", [lambda: ParetoMTL(circle_preferences(3), 1), lambda: EPO([1.0, 2.0])])
def test_backward_writes_the_weighted_gradient(make) -> None:
    """Through mtlopt.backward (one model, all parameters shared, as one member of a set)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    weighting = make()
    losses = [((model(x)[:, t] - y[:, t]) ** 2).mean() for t in range(2)]
    grads = [torch.autograd.grad(loss, list(model.parameters()), retain_graph=True) for loss in losses]
    result = mtlopt.backward(losses, weighting, shared_params=model)
    w = result.weights
    for i, p in enumerate(model.parameters()):
        expected = w[0].to(p.dtype) * grads[0][i] + w[1].to(p.dtype) * grads[1][i]
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-7)
    assert result.diagnostics["step"] == 1


def test_projected_gramian_has_no_negative_round_off_on_its_diagonal() -> None:
    """C G Cᵀ with rows of C in (or near) G's null space: formed as C G Cᵀ its diagonal can come out
    negative by round-off (min_norm then rejects it as not PSD); formed from a factor of G it cannot."""
    from mtlopt.min_norm import min_norm
    from mtlopt.weighting.pmtl import _congruent

    rng = np.random.default_rng(0)
    naive_negative = 0
    for _ in range(200):
        u = rng.normal(size=3)
        J = np.outer(u, rng.normal(size=5)) * 10.0 ** rng.uniform(-20, 5)
        G = J @ J.T  # rank one, null space ⟂ u
        C = np.vstack([np.cross(u, rng.normal(size=3)), np.cross(u, rng.normal(size=3)), rng.normal(size=3)])
        naive_negative += int((np.diag(C @ G @ C.T) < 0).any())
        P = _congruent(C, G)
        assert (np.diag(P) >= 0.0).all()
        np.testing.assert_allclose(P, C @ G @ C.T, rtol=0, atol=1e-12 * np.abs(G).max())
        min_norm(P)  # accepted
    assert naive_negative > 0  # the case the factor form exists for does occur
