"""FairGrad: the α-fair system G w = w^{-1/α}, its scale law, options, degenerate Gramians, and agreement
with TorchJD, LibMTL and the official code (recorded and live)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nash_checks import GOLDEN, gramians, has_scipy, relative_residual, run_linear, scipy_solution

import mtlopt

F64 = torch.float64


def weigh(method: mtlopt.FairGrad, G: np.ndarray) -> mtlopt.WeightingOutput:
    return method.compute(torch.from_numpy(G), torch.ones(len(G), dtype=F64))


def random_gramian(K: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((K, K + 4)) * np.geomspace(0.2, 5.0, K)[:, None]
    J[-1] = -0.6 * J[0] + 0.5 * J[-1]  # a conflict
    return J @ J.T


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("K", [2, 5, 40])
def test_the_weights_solve_the_system_and_match_an_independent_solver(K, alpha):
    G = random_gramian(K, seed=K)
    out = weigh(mtlopt.FairGrad(alpha), G)
    w = out.weights.numpy()
    assert out.diagnostics["solver_converged"] and (w > 0).all()
    assert relative_residual(G, w, alpha) < 1e-10
    assert out.diagnostics["residual"] == pytest.approx(relative_residual(G, w, alpha), abs=1e-12)
    tight = weigh(mtlopt.FairGrad(alpha, ridge=1e-15, tol=1e-13), G).weights.numpy()
    assert relative_residual(G, tight, alpha) < 1e-11
    if has_scipy():
        np.testing.assert_allclose(tight, scipy_solution(G, alpha), rtol=1e-6)  # scipy: absolute gtol


@pytest.mark.skipif(not has_scipy(), reason="scipy is not installed")
def test_agrees_with_scipy_least_squares_the_official_solver():
    from scipy.optimize import least_squares

    for alpha in (0.5, 1.0, 2.0):
        G = random_gramian(6, seed=3)
        K = len(G)
        ref = least_squares(
            lambda x, G=G, alpha=alpha: G @ x - x ** (-1 / alpha),
            np.ones(K) / K,
            bounds=(0, np.inf),
            xtol=1e-15,
            ftol=1e-15,
            gtol=1e-15,
        ).x
        np.testing.assert_allclose(weigh(mtlopt.FairGrad(alpha), G).weights.numpy(), ref, rtol=1e-8)


def test_alpha_one_is_nash_mtls_system():
    G = random_gramian(6, seed=4)
    np.testing.assert_allclose(
        weigh(mtlopt.FairGrad(1.0), G).weights, weigh(mtlopt.NashMTL(max_norm=0), G).weights, rtol=1e-8
    )


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_the_scale_law(alpha):
    """G → s²G: w → s^{-2α/(1+α)} w and ‖d‖ → s^{(1-α)/(1+α)} ‖d‖."""
    G = random_gramian(4, seed=1)
    s = 30.0
    w = weigh(mtlopt.FairGrad(alpha), G)
    ws = weigh(mtlopt.FairGrad(alpha), s**2 * G)
    np.testing.assert_allclose(ws.weights, w.weights * s ** (-2 * alpha / (1 + alpha)), rtol=1e-8)
    ratio = ws.diagnostics["update_norm"] / w.diagnostics["update_norm"]
    assert ratio == pytest.approx(s ** ((1 - alpha) / (1 + alpha)), rel=1e-8)


def test_orthogonal_gradients():
    norms = np.array([0.5, 2.0, 7.0])
    alpha = 2.0
    out = weigh(mtlopt.FairGrad(alpha), np.diag(norms**2))
    np.testing.assert_allclose(out.weights, norms ** (-2 * alpha / (1 + alpha)), rtol=1e-8)


def test_weight_scale_and_max_norm():
    G = random_gramian(4, seed=2)
    w = weigh(mtlopt.FairGrad(), G).weights.numpy()
    np.testing.assert_allclose(weigh(mtlopt.FairGrad(weight_scale="num-tasks"), G).weights, 4 * w, rtol=1e-12)
    norm = math.sqrt(w @ G @ w)
    clipped = weigh(mtlopt.FairGrad(max_norm=0.5 * norm), G)
    np.testing.assert_allclose(clipped.weights, 0.5 * w, rtol=1e-12)
    assert clipped.diagnostics["clip_factor"] == pytest.approx(0.5)
    np.testing.assert_allclose(weigh(mtlopt.FairGrad(max_norm=2 * norm), G).weights, w, rtol=1e-12)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 0.0}, "alpha must be a finite number > 0"),
        ({"weight_scale": "sum"}, "weight_scale"),
        ({"max_norm": 0.0}, "max_norm must be a finite number > 0"),
        ({"head_weighting": "x"}, "head_weighting"),
    ],
)
def test_bad_options_raise_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message):
        mtlopt.FairGrad(**options)


def test_degenerate_gramians():
    G = random_gramian(3, seed=2)
    G0 = np.zeros((4, 4))
    G0[1:, 1:] = G
    out = weigh(mtlopt.FairGrad(), G0)
    assert out.diagnostics["zero_gradient_tasks"] == [0] and float(out.weights[0]) == 0.0
    np.testing.assert_allclose(out.weights[1:], weigh(mtlopt.FairGrad(), G).weights, rtol=1e-12)
    g = np.array([[1.0, 2.0], [-1.0, -2.0]])
    opposite = weigh(mtlopt.FairGrad(), g @ g.T)
    assert torch.isfinite(opposite.weights).all() and (opposite.weights > 0).all()
    assert opposite.diagnostics["ridged"] and not out.diagnostics["ridged"]
    assert torch.equal(weigh(mtlopt.FairGrad(), np.zeros((2, 2))).weights, torch.zeros(2, dtype=F64))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gramians(), st.sampled_from([0.5, 1.0, 2.0]))
def test_any_gramian_gives_finite_nonnegative_weights(G, alpha):
    out = weigh(mtlopt.FairGrad(alpha), G)
    w = out.weights.numpy()
    zero = np.diag(G) <= 0
    assert np.isfinite(w).all() and (w[~zero] > 0).all() and (w[zero] == 0).all()
    assert out.diagnostics["solver_converged"]
    assert math.isfinite(out.diagnostics["update_norm"])


# --- peers -------------------------------------------------------------------------------------------

CASES = sorted(GOLDEN["fairgrad"])
PEERS = ["torchjd", "official", "libmtl"]


def assert_agrees(ours: tuple[np.ndarray, np.ndarray], theirs: dict) -> None:
    """least_squares stops at its absolute tolerances: weights within 1e-6 relative; the official code and
    LibMTL apply them in float32 (torch.Tensor), so their .grad within 1e-6 of its largest entry."""
    np.testing.assert_allclose(ours[0], theirs["weights"], rtol=1e-6)
    d = ours[1]
    np.testing.assert_allclose(d, theirs["grads"], rtol=1e-6, atol=1e-6 * np.abs(d).max())


@pytest.mark.parametrize("peer", PEERS)
def test_weights_and_grads_agree_with_the_recorded_peer(peer):
    for name in CASES:
        case = GOLDEN["fairgrad"][name]
        ours = run_linear(mtlopt.FairGrad(case["case"]["alpha"]), case["jacobians"])
        for J, w in zip(case["jacobians"], ours[0]):
            J = np.array(J)
            assert relative_residual(J @ J.T, w, case["case"]["alpha"]) < 1e-8
        assert_agrees(ours, case["peers"][peer])


def test_the_official_scale_is_k_times():
    case = GOLDEN["fairgrad"]["K5-alpha2"]
    ours = run_linear(mtlopt.FairGrad(2.0, weight_scale="num-tasks"), case["jacobians"])
    np.testing.assert_allclose(
        ours[1], 5 * np.array(case["peers"]["official"]["grads"]), rtol=1e-6, atol=1e-6
    )


def test_a_moved_weight_fails_the_comparison():
    case = GOLDEN["fairgrad"]["K10-alpha2"]
    ours = run_linear(mtlopt.FairGrad(2.0), case["jacobians"])
    ours[0][0][3] *= 1 + 1e-5
    with pytest.raises(AssertionError):
        assert_agrees(ours, case["peers"]["torchjd"])


@pytest.mark.skipif(importlib.util.find_spec("torchjd") is None, reason="TorchJD is not installed")
def test_live_torchjd_agrees():
    pytest.importorskip("scipy")
    from torchjd.aggregation._fairgrad import FairGradWeighting

    for name in CASES:
        case = GOLDEN["fairgrad"][name]
        alpha = case["case"]["alpha"]
        rows = [
            FairGradWeighting(alpha)(torch.tensor(J, dtype=F64) @ torch.tensor(J, dtype=F64).T).numpy()
            for J in case["jacobians"]
        ]
        theirs = {"weights": rows, "grads": [r @ np.array(J) for r, J in zip(rows, case["jacobians"])]}
        assert_agrees(run_linear(mtlopt.FairGrad(alpha), case["jacobians"]), theirs)
