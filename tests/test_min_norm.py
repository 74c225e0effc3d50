"""Min-norm solvers checked against independent QP solvers and the optimality conditions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlopt import min_norm
from mtlopt.min_norm import two_point_weight
from reference import (
    frank_wolfe_reference,
    objective_tolerance,
    random_jacobian,
    reference_min_norm,
    two_point_reference,
)


@st.composite
def gramians(draw: st.DrawFn, min_tasks: int = 2, max_tasks: int = 64) -> np.ndarray:
    """Gramians of K gradients: rank-deficient or not, zero and duplicated rows, scales 1e-8..1e8."""
    K = draw(st.integers(min_tasks, max_tasks))
    dimension = draw(st.sampled_from(["rank-one", "half-rank", "square", "tall"]))
    n = {"rank-one": 1, "half-rank": max(1, K // 2), "square": K, "tall": 3 * K}[dimension]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    J = random_jacobian(rng, K, n)
    for _ in range(draw(st.integers(0, 2))):
        J[rng.integers(K)] = 0.0
    for _ in range(draw(st.integers(0, 3))):
        J[rng.integers(K)] = J[rng.integers(K)]
    scale = 10.0 ** draw(st.floats(-8.0, 8.0))
    return (J @ J.T) * scale


def assert_on_simplex(alpha: np.ndarray) -> None:
    assert np.all(np.isfinite(alpha))
    assert np.all(alpha >= 0.0)
    assert abs(alpha.sum() - 1.0) < 1e-12


def assert_kkt(G: np.ndarray, alpha: np.ndarray, tolerance: float = 1e-9) -> None:
    """g_tᵀd ≥ ‖d‖² for every t, with equality where α_t > 0 (to `tolerance` · max_t ‖g_t‖²)."""
    d_dot_g = G @ alpha
    norm_sq = float(alpha @ d_dot_g)
    allowed = tolerance * float(np.max(np.diag(G)))
    assert np.all(d_dot_g >= norm_sq - allowed), (d_dot_g - norm_sq).min()
    support = alpha > 1e-6
    assert np.all(np.abs(d_dot_g[support] - norm_sq) <= allowed), np.abs(d_dot_g[support] - norm_sq).max()


@settings(max_examples=1000)
@given(gramians())
def test_exact_solvers_reach_the_qp_optimum_and_satisfy_kkt(G: np.ndarray) -> None:
    _, f_ref = reference_min_norm(G)
    for solver in ("auto", "active-set"):
        result = min_norm(G, solver=solver)
        alpha = result.weights.numpy()
        assert_on_simplex(alpha)
        f = float(alpha @ G @ alpha)
        assert f <= f_ref + objective_tolerance(f_ref, G), (solver, f, f_ref)
        assert result.converged
        assert result.objective == pytest.approx(f, rel=1e-12, abs=1e-14 * float(np.max(np.diag(G))))
        assert_kkt(G, alpha)
        assert result.kkt_residual <= 1e-9


@settings(max_examples=1000)
@given(gramians(max_tasks=40))
def test_iterative_solvers_stay_feasible_and_certify_their_gap(G: np.ndarray) -> None:
    """Frank–Wolfe and PGD are first-order methods: feasible, never below the optimum, and their
    reported gap bounds the distance to the optimum (f − f* ≤ 2·gap)."""
    _, f_ref = reference_min_norm(G)
    floor = objective_tolerance(f_ref, G)
    for solver in ("frank-wolfe", "pgd"):
        result = min_norm(G, solver=solver, max_iter=100)
        alpha = result.weights.numpy()
        assert_on_simplex(alpha)
        f = float(alpha @ G @ alpha)
        assert f >= f_ref - floor
        assert f - f_ref <= 2.0 * result.gap + floor
        assert result.iterations <= 100
        if solver == "frank-wolfe":  # the O(1/t) rate: curvature constant ≤ 4·max_t G_tt
            assert f - f_ref <= 8.0 * float(np.max(np.diag(G))) / (result.iterations + 2) + floor


@st.composite
def well_conditioned_gramians(draw: st.DrawFn) -> np.ndarray:
    """Positive-definite Gramians whose min-norm weights are all well inside the simplex (≥ 1/(4K)),
    where both first-order methods converge linearly."""
    K = draw(st.integers(3, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    J = np.eye(K, 2 * K) * rng.uniform(0.8, 1.25, size=(K, 1)) + 0.03 * rng.standard_normal((K, 2 * K))
    return J @ J.T * 10.0 ** draw(st.floats(-8.0, 8.0))


@settings(max_examples=200)
@given(well_conditioned_gramians())
def test_iterative_solvers_converge_on_well_conditioned_problems(G: np.ndarray) -> None:
    _, f_ref = reference_min_norm(G)
    for solver in ("frank-wolfe", "pgd"):
        result = min_norm(G, solver=solver, tol=0.0, max_iter=20_000)
        f = float(result.weights.numpy() @ G @ result.weights.numpy())
        assert f <= f_ref + objective_tolerance(f_ref, G), (solver, result.iterations)


@settings(max_examples=500)
@given(
    st.floats(-1e4, 1e4),
    st.floats(-1e4, 1e4),
    st.floats(-1e4, 1e4),
    st.floats(-1e4, 1e4),
    st.floats(-8.0, 8.0),
)
def test_two_task_closed_form_matches_the_qp(
    a1: float, a2: float, b1: float, b2: float, exponent: float
) -> None:
    J = np.array([[a1, a2], [b1, b2]]) * 10.0**exponent
    G = J @ J.T
    result = min_norm(G, solver="two-task")
    alpha = result.weights.numpy()
    assert_on_simplex(alpha)
    f = float(alpha @ G @ alpha)
    _, f_ref = reference_min_norm(G)
    scale = float(np.max(np.diag(G)))
    assert abs(f - f_ref) <= 1e-12 * scale
    assert min_norm(G).weights.numpy() == pytest.approx(alpha, abs=0)  # auto = closed form at K = 2


@pytest.mark.parametrize(
    ("a", "b", "expected_weight_on_a", "expected_objective"),
    [
        ([3.0, 4.0], [3.0, 4.0], 1.0, 25.0),  # identical
        ([3.0, 4.0], [-3.0, -4.0], 0.5, 0.0),  # opposite
        ([0.0, 0.0], [0.0, 0.0], 1.0, 0.0),  # both zero
        ([0.0, 0.0], [1.0, 2.0], 1.0, 0.0),  # one zero: all weight on it
        ([1.0, 2.0], [0.0, 0.0], 0.0, 0.0),
        ([1.0, 0.0], [0.0, 1.0], 0.5, 0.5),  # orthogonal, equal norms
        ([2.0, 0.0], [1.0, 0.0], 0.0, 1.0),  # b is on the segment towards a: b itself is optimal
    ],
)
def test_two_task_special_cases(a, b, expected_weight_on_a, expected_objective) -> None:
    J = np.array([a, b])
    result = min_norm(J @ J.T)
    assert result.weights[0].item() == pytest.approx(expected_weight_on_a, abs=1e-15)
    assert result.objective == pytest.approx(expected_objective, abs=1e-12)
    assert result.gap == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=300)
@given(st.floats(0.0, 1e3), st.floats(-1e3, 1e3), st.floats(0.0, 1e3))
def test_two_point_weight_is_the_segment_minimizer(aa: float, ab: float, bb: float) -> None:
    if ab * ab > aa * bb:  # not a valid Gramian (Cauchy–Schwarz)
        return
    gamma = two_point_weight(aa, ab, bb)
    f = gamma**2 * aa + 2 * gamma * (1 - gamma) * ab + (1 - gamma) ** 2 * bb
    ref = two_point_reference(aa, ab, bb)
    f_ref = ref**2 * aa + 2 * ref * (1 - ref) * ab + (1 - ref) ** 2 * bb
    assert 0.0 <= gamma <= 1.0
    assert f <= f_ref + 1e-9 * max(aa, bb, 1.0)


def test_official_clip_uses_0001_and_0999_at_the_ends_of_the_segment() -> None:
    J = np.array([[1.0, 0.0], [3.0, 0.0]])  # a is on the segment towards b: a is optimal
    paper = min_norm(J @ J.T).weights
    official = min_norm(J @ J.T, clip=(0.001, 0.999)).weights
    assert paper.tolist() == [1.0, 0.0]
    assert official.tolist() == pytest.approx([0.999, 0.001], abs=1e-15)


def test_frank_wolfe_follows_algorithm_2_step_by_step() -> None:
    rng = np.random.default_rng(7)
    J = random_jacobian(rng, 6, 10)
    G = J @ J.T
    for iterations in (1, 2, 5, 40):
        ours = min_norm(G, solver="frank-wolfe", tol=0.0, max_iter=iterations).weights.numpy()
        assert ours == pytest.approx(frank_wolfe_reference(G, iterations), abs=1e-12)


def test_iteration_cap_applies_and_is_reported() -> None:
    rng = np.random.default_rng(3)
    J = np.eye(40, 200) + 0.3 * rng.standard_normal((40, 200))  # optimum inside the simplex
    G = J @ J.T
    for solver in ("frank-wolfe", "pgd"):
        result = min_norm(G, solver=solver, tol=0.0, max_iter=3)
        assert result.iterations == 3
        assert not result.converged
        assert result.gap > 0


def test_permuting_tasks_permutes_the_weights() -> None:
    rng = np.random.default_rng(11)
    J = np.eye(8, 12) + 0.3 * rng.standard_normal((8, 12))  # positive definite: unique weights
    G = J @ J.T
    permutation = rng.permutation(8)
    for solver in ("active-set", "frank-wolfe", "pgd"):
        kwargs = {} if solver == "active-set" else {"tol": 0.0, "max_iter": 20_000}
        alpha = min_norm(G, solver=solver, **kwargs).weights.numpy()
        permuted = min_norm(G[np.ix_(permutation, permutation)], solver=solver, **kwargs).weights.numpy()
        assert permuted == pytest.approx(alpha[permutation], abs=1e-6)


def test_rescaling_the_gramian_leaves_the_weights_unchanged() -> None:
    rng = np.random.default_rng(5)
    J = random_jacobian(rng, 10, 30)
    G = J @ J.T
    alpha = min_norm(G).weights.numpy()
    for scale in (1e-12, 1e-6, 1e6, 1e12):
        assert min_norm(G * scale).weights.numpy() == pytest.approx(alpha, abs=1e-9)


GOLDEN_GRAMIAN = np.array(
    [
        [4.0, 1.0, -1.0, 0.5],
        [1.0, 3.0, 0.5, 1.0],
        [-1.0, 0.5, 2.0, 0.25],
        [0.5, 1.0, 0.25, 5.0],
    ]
)


@pytest.mark.parametrize(
    ("solver", "kwargs", "expected"),
    [
        (
            "active-set",
            {},
            [0.3169786959328599, 0.04389928986442869, 0.5435765009683666, 0.09554551323434476],
        ),
        (
            "frank-wolfe",
            {},
            [0.3148771561600516, 0.05007091902913856, 0.5406705988307333, 0.09438132598007658],
        ),
        # The point before the last change, as the official code returns (= its weights here, where
        # no line search ends at a clipped end: see test_min_norm_official.py).
        ("pgd", {}, [0.31698065969709144, 0.0438973725760017, 0.5435771588656905, 0.09554480886121634]),
    ],
)
def test_golden_values(solver: str, kwargs: dict, expected: list[float]) -> None:
    weights = min_norm(GOLDEN_GRAMIAN, solver=solver, **kwargs).weights.numpy()
    assert weights == pytest.approx(expected, abs=1e-12)


def test_degenerate_inputs() -> None:
    assert min_norm(np.zeros((5, 5))).weights.tolist() == [0.2] * 5
    assert min_norm(np.array([[2.0]])).weights.tolist() == [1.0]
    result = min_norm(torch.ones(3, 3, dtype=torch.float32))  # three identical gradients
    assert result.objective == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("gramian", "kwargs", "message"),
    [
        (np.ones((2, 3)), {}, "square"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), {}, "non-finite"),
        (np.eye(3), {"solver": "simplex"}, "unknown min-norm solver 'simplex'"),
        (np.eye(3), {"solver": "two-task"}, "exactly 2 tasks, got 3"),
        (np.eye(2), {"clip": (0.5, 0.4)}, "clip"),
        (np.eye(2), {"max_iter": 0}, "max_iter"),
        (np.eye(2), {"tol": -1.0}, "tol"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(gramian, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        min_norm(gramian, **kwargs)
