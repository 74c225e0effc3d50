"""Nash-MTL: the bargaining system Gα = 1/α, its weight convention (‖d‖ = √K, then the clip), its state,
degenerate Gramians, and agreement with TorchJD, LibMTL and the official code (recorded and live)."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from nash_checks import GOLDEN, gramians, has_scipy, relative_residual, run_linear, scipy_solution

import mtlopt
from mtlopt.weighting._power_system import solve_power_system

F64 = torch.float64


def weigh(method: mtlopt.NashMTL, G: np.ndarray) -> mtlopt.WeightingOutput:
    return method.compute(torch.from_numpy(G), torch.ones(len(G), dtype=F64))


def random_gramian(K: int, seed: int = 0, P: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((K, P or K + 4)) * np.geomspace(0.2, 5.0, K)[:, None]
    J[-1] = -0.6 * J[0] + 0.5 * J[-1]  # a conflict
    return J @ J.T


@pytest.mark.parametrize("K", [2, 3, 7, 40])
def test_the_weights_solve_the_bargaining_system_and_match_an_independent_solver(K):
    G = random_gramian(K, seed=K)
    out = weigh(mtlopt.NashMTL(max_norm=0), G)
    alpha = out.weights.numpy()
    assert out.diagnostics["solver_converged"] and (alpha > 0).all()
    assert relative_residual(G, alpha, 1.0) < 1e-10
    assert out.diagnostics["residual"] == pytest.approx(relative_residual(G, alpha, 1.0), abs=1e-12)
    tight = weigh(mtlopt.NashMTL(max_norm=0, ridge=1e-15, tol=1e-13), G).weights.numpy()
    assert relative_residual(G, tight, 1.0) < 1e-11
    if has_scipy():
        np.testing.assert_allclose(alpha, scipy_solution(G, 1.0), rtol=1e-7)
        np.testing.assert_allclose(tight, scipy_solution(G, 1.0), rtol=1e-9)


def test_the_two_task_closed_form_equals_newton():
    G = random_gramian(2, seed=5)
    closed = solve_power_system(G, 1.0, ridge=1e-10, tol=1e-13, max_iter=100, per_task_scaling=True)
    newton = solve_power_system(G, 1.0, ridge=1e-10, tol=1e-13, max_iter=100, per_task_scaling=False)
    np.testing.assert_allclose(closed.weights, newton.weights, rtol=1e-11)
    assert relative_residual(G, closed.weights, 1.0) < 1e-10


def test_orthogonal_gradients_get_the_inverse_norms():
    norms = np.array([0.5, 2.0, 7.0])
    out = weigh(mtlopt.NashMTL(max_norm=0), np.diag(norms**2))
    np.testing.assert_allclose(out.weights.numpy(), 1 / norms, rtol=1e-9)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_the_update_has_norm_sqrt_k_before_the_clip_and_max_norm_after(scale):
    """The weight convention: αᵀGα = K whatever the scale (α → α/s when G → s²G), then the clip."""
    K = 5
    G = random_gramian(K, seed=1) * scale**2
    free = weigh(mtlopt.NashMTL(max_norm=0), G)
    alpha = free.weights.numpy()
    assert math.sqrt(alpha @ G @ alpha) == pytest.approx(math.sqrt(K), rel=1e-9)
    assert free.diagnostics["update_norm"] == pytest.approx(math.sqrt(K), rel=1e-9)
    np.testing.assert_allclose(
        alpha * scale, weigh(mtlopt.NashMTL(max_norm=0), G / scale**2).weights, rtol=1e-9
    )
    clipped = weigh(mtlopt.NashMTL(), G)  # max_norm = 1: always active for K ≥ 2
    w = clipped.weights.numpy()
    assert math.sqrt(w @ G @ w) == pytest.approx(1.0, rel=1e-9)
    np.testing.assert_allclose(w, alpha / math.sqrt(K), rtol=1e-9)
    assert clipped.diagnostics["clip_factor"] == pytest.approx(1 / math.sqrt(K), rel=1e-9)
    loose = weigh(mtlopt.NashMTL(max_norm=10.0), G)  # a clip above √K does nothing
    np.testing.assert_allclose(loose.weights.numpy(), alpha, rtol=1e-12)


def test_the_heads_get_the_clipped_weights():
    """One weight vector for shared and task-specific parameters: with head_weighting='weighted' the heads
    receive the clipped α (the official code clips only the shared .grad; documented deviation)."""
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 3).double()
    heads = [torch.nn.Linear(3, 1).double() for _ in range(3)]
    x = torch.randn(8, 4, dtype=F64)
    z = shared(x)
    losses = [head(z).pow(2).mean() for head in heads]
    result = mtlopt.backward(losses, mtlopt.NashMTL(), shared_params=list(shared.parameters()))
    d = torch.cat([p.grad.flatten() for p in shared.parameters()])
    assert float(d.norm()) == pytest.approx(1.0, rel=1e-9)
    for t, head in enumerate(heads):
        (g,) = torch.autograd.grad(head(shared(x)).pow(2).mean(), head.weight)
        torch.testing.assert_close(head.weight.grad, result.weights[t] * g, rtol=1e-9, atol=1e-12)


def test_update_weights_every_reuses_the_solved_weights_and_clips_on_the_current_gramian():
    method = mtlopt.NashMTL(update_weights_every=3)
    Gs = [random_gramian(4, seed=s) for s in range(5)]
    outs = [weigh(method, G) for G in Gs]
    assert [o.diagnostics["updated"] for o in outs] == [True, False, False, True, False]
    solved0 = weigh(mtlopt.NashMTL(max_norm=0), Gs[0]).weights.numpy()
    w1 = outs[1].weights.numpy()
    np.testing.assert_allclose(w1 / np.linalg.norm(w1), solved0 / np.linalg.norm(solved0), rtol=1e-12)
    assert math.sqrt(w1 @ Gs[1] @ w1) == pytest.approx(1.0, rel=1e-9)
    np.testing.assert_allclose(outs[3].weights, weigh(mtlopt.NashMTL(), Gs[3]).weights, rtol=1e-12)
    assert method.step == 5


def test_state_dict_resumes_exactly_and_reset_forgets():
    Gs = [random_gramian(3, seed=s) for s in range(6)]
    straight = mtlopt.NashMTL(update_weights_every=2)
    expected = [weigh(straight, G).weights for G in Gs]
    first = mtlopt.NashMTL(update_weights_every=2)
    for G in Gs[:3]:
        weigh(first, G)
    state = json.loads(json.dumps({"step": first.step, "alpha": first.alpha.tolist()}))
    resumed = mtlopt.NashMTL(update_weights_every=2)
    resumed.load_state_dict({"step": state["step"], "alpha": torch.tensor(state["alpha"], dtype=F64)})
    for G, w in zip(Gs[3:], expected[3:]):
        assert torch.equal(weigh(resumed, G).weights, w)
    copy = mtlopt.NashMTL(update_weights_every=2)
    copy.load_state_dict(first.state_dict())
    assert copy.step == 3 and torch.equal(copy.alpha, first.alpha)
    first.reset()
    assert first.state_dict() == {"step": 0, "alpha": None}
    with pytest.raises(ValueError, match="keys"):
        first.load_state_dict({"step": 0})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_norm": -1.0}, "max_norm must be a finite number >= 0"),
        ({"update_weights_every": 0}, "update_weights_every must be an int >= 1"),
        ({"head_weighting": "both"}, "head_weighting"),
        ({"ridge": 0.0}, "ridge must be a finite number > 0"),
    ],
)
def test_bad_options_raise_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message):
        mtlopt.NashMTL(**options)


def test_degenerate_gramians_zero_rows_opposite_and_all_zero():
    """A zero gradient gets weight 0 (listed); opposite gradients (Pareto stationary) get finite weights
    and d ≈ 0; an all-zero Gramian gives zero weights."""
    G = random_gramian(3, seed=2)
    G0 = np.zeros((4, 4))
    G0[:3, :3] = G
    out = weigh(mtlopt.NashMTL(max_norm=0), G0)
    assert out.diagnostics["zero_gradient_tasks"] == [3] and float(out.weights[3]) == 0.0
    np.testing.assert_allclose(out.weights[:3], weigh(mtlopt.NashMTL(max_norm=0), G).weights, rtol=1e-12)
    g = np.array([[1.0, 2.0], [-1.0, -2.0]])
    opposite = weigh(mtlopt.NashMTL(), g @ g.T)
    assert torch.isfinite(opposite.weights).all() and (opposite.weights > 0).all()
    assert opposite.diagnostics["ridged"] and not out.diagnostics["ridged"]
    assert np.linalg.norm(opposite.weights.numpy() @ g) < 1e-3
    zero = weigh(mtlopt.NashMTL(), np.zeros((3, 3)))
    assert torch.equal(zero.weights, torch.zeros(3, dtype=F64))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gramians())
def test_any_gramian_gives_finite_nonnegative_weights_and_a_bounded_update(G):
    out = weigh(mtlopt.NashMTL(max_norm=0), G)
    alpha = out.weights.numpy()
    zero = np.diag(G) <= 0
    assert np.isfinite(alpha).all() and (alpha[~zero] > 0).all() and (alpha[zero] == 0).all()
    assert out.diagnostics["solver_converged"]
    K_left = int((~zero).sum())
    assert float(alpha @ G @ alpha) <= K_left * (1 + 1e-6)  # = K' minus the ridge's share
    clipped = weigh(mtlopt.NashMTL(), G).weights.numpy()
    assert float(clipped @ G @ clipped) <= 1 + 1e-6


# --- peers -------------------------------------------------------------------------------------------

CASES = sorted(GOLDEN["nash-mtl"])
PEERS = ["torchjd", "official", "libmtl"]


def peer_residual(G: np.ndarray, weights: np.ndarray) -> float:
    """The residual of a peer's clipped weights, unclipped first (αᵀGα = K at the solution)."""
    alpha = weights * math.sqrt(len(G) / float(weights @ G @ weights))
    return relative_residual(G, alpha, 1.0)


def assert_agrees(case: dict, ours: tuple[np.ndarray, np.ndarray], theirs: dict) -> int:
    """Where the peer's CCP reached the solution (residual < 1e-3) the weights and the shared .grad
    agree to 1e-4 relative; where it stopped short, ours solves the system and theirs does not."""
    agreed = 0
    solved_ok = False
    for s, J in enumerate(case["jacobians"]):
        J = np.array(J)
        G = J @ J.T
        w, d = ours[0][s], ours[1][s]
        peer_w = np.array(theirs["weights"][s])
        if s % case["case"]["every"] == 0:  # a solved step (else the weights of the last one, reclipped)
            assert relative_residual(G, w * math.sqrt(len(G)), 1.0) < 1e-7  # ours: the clipped solution
            solved_ok = peer_residual(G, peer_w) < 1e-3
            if not solved_ok:
                assert peer_residual(G, peer_w) > 1e-2
        if solved_ok:
            np.testing.assert_allclose(w, peer_w, rtol=1e-4)
            np.testing.assert_allclose(d, theirs["grads"][s], rtol=1e-4, atol=1e-4 * np.abs(d).max())
            agreed += 1
    return agreed


@pytest.mark.parametrize("peer", PEERS)
def test_weights_and_grads_agree_with_the_recorded_peer(peer):
    agreed = total = 0
    for name in CASES:
        case = GOLDEN["nash-mtl"][name]
        ours = run_linear(mtlopt.NashMTL(update_weights_every=case["case"]["every"]), case["jacobians"])
        agreed += assert_agrees(case, ours, case["peers"][peer])
        total += len(case["jacobians"])
    assert agreed == total - 2  # the CCP stops short at two warm-started steps (K3 step 2, K5 step 1)


def test_a_moved_weight_fails_the_comparison():
    case = GOLDEN["nash-mtl"]["K10"]
    ours = run_linear(mtlopt.NashMTL(), case["jacobians"])
    ours[0][1][3] *= 1 + 1e-3
    with pytest.raises(AssertionError):
        assert_agrees(case, ours, case["peers"]["torchjd"])


@pytest.mark.skipif(importlib.util.find_spec("torchjd") is None, reason="TorchJD is not installed")
def test_live_torchjd_agrees():
    pytest.importorskip("cvxpy")
    from torchjd.aggregation import NashMTL as TJNashMTL

    for name in CASES:
        case = GOLDEN["nash-mtl"][name]
        K, every = case["case"]["K"], case["case"]["every"]
        tj = TJNashMTL(n_tasks=K, max_norm=1.0, update_weights_every=every, optim_niter=20)
        rows = [tj.weighting(torch.tensor(J, dtype=F64)).numpy() for J in case["jacobians"]]
        theirs = {"weights": rows, "grads": [r @ np.array(J) for r, J in zip(rows, case["jacobians"])]}
        ours = run_linear(mtlopt.NashMTL(update_weights_every=every), case["jacobians"])
        assert_agrees(case, ours, theirs)


# --- mixed precision ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_nash_mtl_and_fairgrad_train_one_epoch_without_nan_under_autocast(tmp_path, amp):
    from mtlopt.benchmarks.cli import main

    small = ["--benchmark", "multimnist", "--max-sources", "400", "--threads", "1", "--quiet", "--batch-size", "64"]  # fmt: skip
    out = tmp_path / amp
    args = [
        "compare",
        *small,
        "--methods",
        "nash-mtl,fairgrad",
        "--amp",
        amp,
        "--seeds",
        "1",
        "--epochs",
        "1",
    ]
    assert main([*args, "--out", str(out)]) == 0
    paths = list((out / "runs").glob("*/seed0/result.json"))
    assert {path.parent.parent.name.split("_")[0] for path in paths} == {"nash-mtl", "fairgrad"}
    for path in paths:
        result = json.loads(path.read_text())
        assert result["environment"]["amp"] == amp
        for values in result["final"]["test"].values():
            assert all(v == v and abs(v) < float("inf") for v in values.values()), (path, values)
        for record in result["history"]:
            for key, values in record["train"].items():
                assert all(v == v and abs(v) < float("inf") for v in values), (path, key, values)


# --- the benchmark runner -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "options"), [("nash-mtl", {"update-weights-every": 3}), ("fairgrad", {})])
def test_the_runner_resumes_exactly_from_a_checkpoint(name, options):
    """The CLI runner with bracketed options; its Nash-MTL state (step, cached α) survives a checkpoint."""
    import copy

    from torch.nn import functional as F

    from mtlopt.benchmarks.methods import OptimizerSettings, get_method
    from mtlopt.benchmarks.models import SenerLeNet

    class TwoDigits:
        task_types = ("classification", "classification")

        def losses(self, outputs, targets):
            return [F.cross_entropy(o, targets[:, t]) for t, o in enumerate(outputs)]

    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8, 2), generator=g)) for _ in range(6)
    ]

    def make():
        runner = get_method(name)(options, num_tasks=2, seed=3)
        runner.steps_per_epoch = 6
        torch.manual_seed(0)
        runner.build(SenerLeNet, OptimizerSettings("sgd", lr=0.05), total_steps=6, tasks=TwoDigits())
        return runner

    runner = make()
    for x, y in data[:4]:
        runner.train_step(x, y)
    saved = copy.deepcopy(runner.state_dict())
    logged = [runner.train_step(x, y) for x, y in data[4:]]
    resumed = make()
    resumed.load_state_dict(saved)
    again = [resumed.train_step(x, y) for x, y in data[4:]]
    for first, second in zip(logged, again, strict=True):
        assert torch.equal(first["weights"], second["weights"]) and torch.isfinite(first["weights"]).all()
    for a, b in zip(runner.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
