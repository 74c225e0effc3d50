"""UPGrad and DualProj: the dual-cone QPs against an independent solver (scipy's NNLS), their
non-conflict guarantee, exact properties, and agreement with TorchJD (recorded and live).

Each QP min vᵀGv s.t. v ≥ u is, with G = JJᵀ and v = u + s, the non-negative least-squares problem
min_{s≥0} ‖Jᵀs + Jᵀu‖², which scipy.optimize.nnls solves from J itself (not from G).
TorchJD solves a regularized problem (G/tr(G) + 1e-4·I, quadprog): ``reg_eps=1e-4, norm_eps=1e-4``
reproduces it (to 1e-8 relative: both solvers exact on a positive-definite problem).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gradient_inputs import jacobians
from hypothesis import HealthCheck, given, settings
from scipy.optimize import nnls

import mtlopt
from mtlopt.weighting._dual_cone import _two_tasks, project_dual_cone

GOLDEN = json.loads(Path(__file__).with_name("peer_golden_cagrad.json").read_text())
METHODS = {"upgrad": mtlopt.UPGrad, "dualproj": mtlopt.DualProj}


def weigh(method, J: np.ndarray) -> mtlopt.WeightingOutput:
    G = torch.from_numpy(J @ J.T)
    return method.compute(G, torch.ones(J.shape[0], dtype=torch.float64))


def floor(J: np.ndarray, v: np.ndarray) -> float:
    """The objective's rounding floor from G (see assert_no_conflict): (4√ε Σ|v_t|‖g_t‖)²."""
    return float(4 * np.sqrt(np.finfo(float).eps) * (np.abs(v) @ np.linalg.norm(J, axis=1))) ** 2


def nnls_objective(J: np.ndarray, u: np.ndarray) -> float:
    """min over v ≥ u of ‖Jᵀv‖², by NNLS in the unit-norm basis (scipy alone)."""
    norms = np.linalg.norm(J, axis=1)
    live = norms > 0
    if not live.any():  # every gradient zero (scipy's nnls aborts on an empty matrix)
        return 0.0
    A = (J[live] / norms[live, None]).T
    s, _ = nnls(A, -(J.T @ u), maxiter=50 * J.shape[0] + 100)
    return float(np.sum((A @ s + J.T @ u) ** 2))


def assert_no_conflict(J: np.ndarray, w: np.ndarray) -> None:
    """J d ≥ 0 up to rounding: g_tᵀd ≥ −‖g_t‖ (1e-9 ‖d‖ + 4√ε Σ|w_t|‖g_t‖). The second term is what a
    Gramian determines of d when d cancels: G's entries are exact to ε relative, so ‖d‖² = wᵀGw is
    known to ε (Σ|w_t|‖g_t‖)², and ‖d‖ only to √ε Σ|w_t|‖g_t‖ (rank-deficient G, d = 0)."""
    d = J.T @ w
    norms = np.linalg.norm(J, axis=1)
    bound = 1e-9 * np.linalg.norm(d) + 4 * np.sqrt(np.finfo(float).eps) * float(np.abs(w) @ norms)
    assert (J @ d >= -norms * bound).all(), (J @ d) / (norms * bound + 1e-300)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(J=jacobians())
def test_every_qp_is_solved_exactly_and_no_task_conflicts_with_the_update(J):
    K = J.shape[0]
    G = J @ J.T
    u = np.full(K, 1.0 / K)
    result = project_dual_cone(G, np.diag(u))
    assert result.converged
    assert (result.weights >= np.diag(u) - 1e-15).all()
    for i in range(0, K, max(1, K // 4)):  # a few of the K problems against NNLS
        ours = float(np.sum((J.T @ result.weights[i]) ** 2))
        theirs = nnls_objective(J, u * np.eye(K)[i])
        assert ours <= theirs * (1 + 1e-7) + floor(J, result.weights[i]), (i, ours, theirs)
    for name, method in METHODS.items():
        out = weigh(method(), J)
        assert out.diagnostics["solver_converged"], name
        assert_no_conflict(J, out.weights.numpy())
        assert float(out.weights.sum()) >= 1.0 - 1e-12  # W = 1 without conflict, ≥ 1 otherwise
    dual = weigh(mtlopt.DualProj(), J).weights.numpy()
    assert float(np.sum((J.T @ dual) ** 2)) <= nnls_objective(J, u) * (1 + 1e-7) + floor(J, dual)


@settings(max_examples=40, deadline=None)
@given(J=jacobians(max_tasks=2))
def test_the_two_task_closed_form_is_the_qp_optimum(J):
    u = np.array([[0.5, 0.0], [0.0, 0.5], [0.5, 0.5], [0.2, 0.7]])
    closed = _two_tasks(J @ J.T, u)
    for row, v in zip(u, closed.weights):
        assert (v >= row).all()
        assert float(np.sum((J.T @ v) ** 2)) <= nnls_objective(J, row) * (1 + 1e-9) + floor(J, v)
        assert_no_conflict(J, v)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_without_conflict_the_weights_are_the_preference(name):
    rng = np.random.default_rng(0)
    J = np.abs(rng.standard_normal((6, 5)))  # every inner product positive
    torch.testing.assert_close(
        weigh(METHODS[name](), J).weights, torch.full((6,), 1 / 6, dtype=torch.float64)
    )
    pref = [0.1, 0.2, 0.3, 0.1, 0.2, 0.1]
    out = weigh(METHODS[name](pref), J).weights
    torch.testing.assert_close(out, torch.tensor(pref, dtype=torch.float64))


def test_upgrad_of_two_conflicting_tasks_has_the_closed_form():
    g1, g2 = np.array([1.0, 0.0]), np.array([-1.0, 1.0])
    J = np.stack([g1, g2])
    w = weigh(mtlopt.UPGrad(), J).weights.numpy()
    # v1 = (1/2, 1/4): g2ᵀ(Jᵀv1) = 0; v2 = (1/2, 1/2): g1ᵀ(Jᵀv2) = 0.
    np.testing.assert_allclose(w, [1.0, 0.75], rtol=1e-14)
    d = w @ J
    assert float(d @ g1) > 0 and float(d @ g2) > 0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_zero_gradient_keeps_its_preference_and_constrains_nothing(name):
    J = np.array([[1.0, 0.0], [-1.0, 0.5], [0.0, 0.0], [0.3, 1.0]])
    out = weigh(METHODS[name](), J).weights.numpy()
    assert out[2] == pytest.approx(0.25, rel=1e-15)
    assert_no_conflict(J, out)


@pytest.mark.parametrize("case", sorted(GOLDEN["cases"]))
@pytest.mark.parametrize("name", sorted(METHODS))
def test_weights_agree_with_the_recorded_torchjd_values(name, case):
    J = np.array(GOLDEN["cases"][case]["J"])
    ours = weigh(METHODS[name](reg_eps=1e-4, norm_eps=1e-4), J).weights
    theirs = torch.tensor(GOLDEN["cases"][case]["torchjd"][name], dtype=torch.float64)
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-10)
    # The exact problem (the default) is solved at least as well: a lower objective on the same cone.
    exact = weigh(METHODS[name](), J).weights.numpy()
    assert_no_conflict(J, exact)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_weights_agree_with_the_live_torchjd(name):
    aggregation = pytest.importorskip(
        "torchjd.aggregation", reason="TorchJD not installed here (recorded values above)"
    )
    peer = {"upgrad": aggregation.UPGradWeighting, "dualproj": aggregation.DualProjWeighting}[name]()
    for case in GOLDEN["cases"].values():
        J = np.array(case["J"])
        theirs = peer(torch.from_numpy(J @ J.T))
        ours = weigh(METHODS[name](reg_eps=1e-4, norm_eps=1e-4), J).weights
        torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-10)


def test_the_update_through_backward_is_the_weighted_gradient_sum_and_heads_are_unweighted():
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 3).double()
    heads = [torch.nn.Linear(3, 1).double() for _ in range(3)]
    x = torch.randn(6, 4, dtype=torch.float64)
    z = shared(x)
    losses = [(head(z) ** 2).mean() * (t + 1) for t, head in enumerate(heads)]
    grads = [
        torch.cat([g.flatten() for g in torch.autograd.grad(L, list(shared.parameters()), retain_graph=True)])
        for L in losses
    ]
    head_grads = [
        torch.autograd.grad(L, list(h.parameters()), retain_graph=True) for L, h in zip(losses, heads)
    ]
    result = mtlopt.backward(losses, mtlopt.UPGrad(), shared_params=shared)
    expected = sum(w * g for w, g in zip(result.weights, grads))
    written = torch.cat([p.grad.flatten() for p in shared.parameters()])
    torch.testing.assert_close(written, expected, rtol=1e-12, atol=1e-14)
    for h, g in zip(heads, head_grads):
        for p, e in zip(h.parameters(), g):
            torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-14)
    J = torch.stack(grads)
    assert (J @ written >= -1e-12).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reg_eps": -1.0}, "reg_eps must be a float >= 0"),
        ({"norm_eps": "x"}, "norm_eps must be a float >= 0"),
        ({"pref_vector": [0.5, -0.1]}, "pref_vector must be finite, non-negative"),
        ({"head_weighting": "all"}, "head_weighting must be one of"),
        ({"max_iter": 0}, "max_iter must be an int >= 1"),
    ],
)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_bad_options_are_refused_by_name(name, options, message):
    with pytest.raises(ValueError, match=message):
        METHODS[name](**options)


def test_a_preference_vector_fixes_the_number_of_tasks():
    with pytest.raises(ValueError, match="pref_vector of 3 entries"):
        mtlopt.DualProj([0.2, 0.3, 0.5]).compute(torch.eye(2, dtype=torch.float64), torch.ones(2))
