"""The direction methods (ExcessMTL, MoCo, DB-MTL) and their path in mtlopt.backward.

Peers (``direction_scenario.py``, recorded by ``tools/record_direction_peers.py`` into
``peer_golden_direction.json``, and live when they import here): TorchJD 0.18.0 ``ExcessMTL`` and
LibMTL HEAD's ``ExcessMTL``, ``MoCo``, ``DB_MTL``, over STEPS consecutive training steps (the state
matters): the reported weights and every parameter's ``.grad`` within 1e-6 relative. Independent
references of each rule (numpy, written from the papers / official code's description) check more
configurations; the backward path is checked for GradScaler, weight_total, dtypes, non-finite
gradients, refused inputs and exact resume.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import direction_scenario as sc
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mtlopt
from mtlopt.weighting._state import projection_simplex

F64 = torch.float64
GOLDEN = json.loads(Path(__file__).with_name("peer_golden_direction.json").read_text())
METHODS = {
    "excess-mtl": lambda: mtlopt.ExcessMTL(0.5),
    "moco": lambda: mtlopt.MoCo(0.5, 0.5, rho=0.1),
    "db-mtl": lambda: mtlopt.DBMTL(0.5),
    "graddrop-shared": lambda: mtlopt.GradDrop("parameters", leak=0.1, seed=2),
}


def assert_run_agrees(ours, peer, rtol=1e-6):
    for key in ("weights", "grads"):
        a, b = torch.tensor(ours[key], dtype=F64), torch.tensor(peer[key], dtype=F64)
        assert a.shape == b.shape, key
        # elementwise, relative to each step's largest entry (entries near 0 carry no relative meaning)
        scale = b.abs().amax(dim=1, keepdim=True)
        assert bool(((a - b).abs() <= rtol * scale).all()), (key, float(((a - b).abs() / scale).max()))


_OURS: dict[str, dict] = {}


def ours(case: str) -> dict:
    if case not in _OURS:
        _OURS[case] = sc.run_mtlopt(case)
    return _OURS[case]


# ---------------------------------------------------------------- peer agreement


def test_the_recorded_peers_cover_every_case():
    assert sorted(GOLDEN["runs"]) == sorted(sc.cases())


@pytest.mark.parametrize("case", sorted(sc.cases()))
def test_weights_and_grads_agree_with_the_recorded_peer_over_every_step(case):
    run, peer = ours(case), GOLDEN["runs"][case]
    assert_run_agrees(run, peer)
    weights = torch.tensor(peer["weights"], dtype=F64)
    grads = torch.tensor(peer["grads"], dtype=F64)
    assert (grads[1:] - grads[:-1]).abs().max() > 1e-3  # the runs move: the state is exercised
    if not case.startswith(("db-mtl", "graddrop")):
        assert (weights[-1] - weights[0]).abs().max() > 1e-4


def test_a_moved_grad_fails_the_comparison():
    moved = json.loads(json.dumps(GOLDEN["runs"]["moco-libmtl"]))
    row = moved["grads"][4]
    big = max(range(len(row)), key=lambda i: abs(row[i]))
    row[big] *= 1 + 2e-6
    with pytest.raises(AssertionError):
        assert_run_agrees(ours("moco-libmtl"), moved)


def _peer_available(case: str) -> None:
    from mtlopt.benchmarks.speed import import_peer

    peer = sc.cases()[case][1]
    if peer.startswith("torchjd") and import_peer("torchjd") is None:
        pytest.skip("TorchJD is not installed here (tools/record_direction_peers.py runs it elsewhere)")
    if peer.startswith("libmtl") and not sc.libmtl_available(case):
        pytest.skip("LibMTL or the mirror of its GitHub HEAD is not here")


@pytest.mark.parametrize("case", sorted(sc.cases()))
def test_weights_and_grads_agree_with_the_live_peer(case):
    _peer_available(case)
    assert_run_agrees(ours(case), sc.run_peer(case))


# ---------------------------------------------------------------- the rules, independently


def random_jacobians(steps=5, K=3, P=7, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((K, P)) * np.array([[1.0], [3.0], [0.2]])[:K] for _ in range(steps)]


def excess_reference(Js, eta, K):
    S, w, e0, out = 0.0, np.ones(K), None, []
    for J in Js:
        S = S + J**2
        e = (J**2 / np.sqrt(S + 1e-7)).sum(axis=1)
        if e0 is None:
            e0 = e
        else:
            w = w * np.exp(eta * e / e0)
            w = w / w.sum() * K
        out.append((w.copy(), w @ J))
    return out


def test_excess_mtl_follows_the_official_rule_step_by_step():
    Js = random_jacobians()
    method = mtlopt.ExcessMTL(0.7)
    for J, (w, d) in zip(Js, excess_reference(Js, 0.7, 3)):
        out = method.compute(torch.from_numpy(J), torch.ones(3, dtype=F64))
        np.testing.assert_allclose(out.weights.numpy(), w, rtol=1e-12)
        np.testing.assert_allclose(out.direction.numpy(), d, rtol=1e-12)
    assert out.weights.sum() == pytest.approx(3.0)


def test_excess_mtl_one_scale_and_warmup_average():
    Js = random_jacobians(6)
    one = mtlopt.ExcessMTL(0.7, weight_scale="one", warmup_steps=3)
    S, e_sum = 0.0, 0.0
    w = np.full(3, 1 / 3)
    for step, J in enumerate(Js):
        S = S + J**2
        e = (J**2 / np.sqrt(S + 1e-7)).sum(axis=1)
        out = one.compute(torch.from_numpy(J), torch.ones(3, dtype=F64))
        if step < 3:
            e_sum = e_sum + e
            assert out.diagnostics["warmup"] and torch.equal(out.weights, torch.full((3,), 1 / 3, dtype=F64))
        else:
            w = w * np.exp(0.7 * e / (e_sum / 3))
            w = w / w.sum()
            np.testing.assert_allclose(out.weights.numpy(), w, rtol=1e-12)
    assert out.weights.sum() == pytest.approx(1.0)


def test_excess_mtl_a_task_without_baseline_takes_ratio_zero_and_stays_finite():
    J0 = torch.randn(3, 5, dtype=F64)
    J0[1] = 0
    method = mtlopt.ExcessMTL(1.0)
    method.compute(J0, torch.ones(3, dtype=F64))
    out = method.compute(torch.randn(3, 5, dtype=F64), torch.ones(3, dtype=F64))
    assert out.diagnostics["zero_baseline_tasks"] == [1] and out.diagnostics["ratio"][1] == 0.0
    assert bool(torch.isfinite(out.weights).all()) and out.weights.sum() == pytest.approx(3.0)


def moco_reference(Js, losses, beta, gamma, rho, beta_decay=0.0, gamma_decay=0.0):
    K, P = Js[0].shape
    Y, lam, out = np.zeros((K, P)), np.full(K, 1 / K), []
    for k, J in enumerate(Js):
        Y = Y - beta / (1 + k) ** beta_decay * (Y - J)
        v = lam - gamma / (1 + k) ** gamma_decay * ((Y @ Y.T + rho * np.eye(K)) @ lam)
        u = np.sort(v)[::-1]  # the sort-based projection onto the simplex
        css = np.cumsum(u) - 1
        r = np.nonzero(u - css / np.arange(1, K + 1) > 0)[0][-1]
        lam = np.maximum(v - css[r] / (r + 1), 0)
        out.append((lam.copy(), Y.T @ lam))
    return out


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_moco_follows_the_official_tracking_step_by_step(decay):
    Js = random_jacobians(6)
    method = mtlopt.MoCo(0.6, 0.3, beta_decay=decay, gamma_decay=decay, rho=0.05)
    reference = moco_reference(Js, None, 0.6, 0.3, 0.05, decay, decay)
    for J, (lam, d) in zip(Js, reference):
        out = method.compute(torch.from_numpy(J), torch.ones(3, dtype=F64))
        np.testing.assert_allclose(out.weights.numpy(), lam, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(out.direction.numpy(), d, rtol=1e-12, atol=1e-15)
    assert min(lam) == 0.0 or max(lam) < 1  # the projection, not a softmax
    scaled = mtlopt.MoCo(0.6, 0.3, weight_scale="num-tasks")
    plain = mtlopt.MoCo(0.6, 0.3)
    a = scaled.compute(torch.from_numpy(Js[0]), torch.ones(3, dtype=F64))
    b = plain.compute(torch.from_numpy(Js[0]), torch.ones(3, dtype=F64))
    torch.testing.assert_close(a.direction, 3 * b.direction, rtol=1e-14, atol=0)


def test_moco_normalizations():
    J = torch.from_numpy(random_jacobians(1)[0])
    L = torch.tensor([0.5, 2.0, 1.5], dtype=F64)
    unit = J / (J.norm(dim=1, keepdim=True) + 1e-8)
    for normalize, expected in (("l2", unit), ("unit-times-loss", unit * L[:, None])):
        method = mtlopt.MoCo(1.0, 0.1, normalize=normalize)
        method.compute(J, L)
        torch.testing.assert_close(method.y, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("seed", range(5))
def test_the_simplex_projection_meets_its_optimality_conditions(seed):
    v = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(seed)) * 3
    p = projection_simplex(v)
    assert p.sum() == pytest.approx(1.0) and bool((p >= 0).all())
    theta = (v - p)[p > 0]  # KKT: v - p = θ on the support, v ≤ θ off it
    assert float(theta.max() - theta.min()) < 1e-12
    assert bool((v[p == 0] <= theta[0] + 1e-12).all())


def test_db_mtl_follows_algorithm_1_on_log_loss_gradients():
    Js = random_jacobians(5)
    losses = [np.array([0.5, 2.0, 1.2]) * (1 + 0.1 * k) for k in range(5)]
    method = mtlopt.DBMTL(0.6, beta_decay=0.5)
    buffer = np.zeros_like(Js[0])
    for k, (J, L) in enumerate(zip(Js, losses), start=1):
        g = J / (L + 1e-8)[:, None]
        beta = 0.6 / k**0.5
        buffer = beta * buffer + (1 - beta) * g
        norms = np.linalg.norm(buffer, axis=1)
        d = (norms.max() / (norms + 1e-8)) @ buffer
        out = method.compute(torch.from_numpy(J), torch.from_numpy(L))
        np.testing.assert_allclose(out.direction.numpy(), d, rtol=1e-12)
        torch.testing.assert_close(out.head_weights, torch.from_numpy(1 / (L + 1e-8)))
    assert np.linalg.norm(d) <= 3 * norms.max() * (1 + 1e-12)


def graddrop_reference(S, seed, leak=0.0, eps=0.0):
    """Algorithm 1's masks on signed gradients S (K, ...), U from a generator seeded as GradDrop's."""
    P = 0.5 * (1 + S.sum(0) / (np.abs(S).sum(0) + eps))
    U = torch.rand(P.shape, generator=torch.Generator().manual_seed(seed), dtype=F64).numpy()
    M = (P > U) * (S > 0) + (P < U) * (S < 0)
    return leak + (1 - leak) * M


def test_graddrop_on_the_jacobian_follows_algorithm_1():
    J = random_jacobians(1, P=40)[0]
    out = mtlopt.GradDrop("parameters", leak=0.25, seed=9).compute(
        torch.from_numpy(J), torch.ones(3, dtype=F64)
    )
    mask = graddrop_reference(J, 9, 0.25)
    np.testing.assert_allclose(out.direction.numpy(), (mask * J).sum(0), rtol=1e-13)
    assert 0 < min(out.diagnostics["kept"]) and max(out.diagnostics["kept"]) < 1  # it drops something
    same = np.tile(J[:1], (3, 1))  # identical tasks: nothing dropped, the sum
    agree = mtlopt.GradDrop("parameters").compute(torch.from_numpy(same), torch.ones(3, dtype=F64))
    np.testing.assert_allclose(agree.direction.numpy(), 3 * J[0], rtol=1e-14)


def test_graddrop_at_the_features_masks_elements_and_backpropagates_once():
    net = Net()
    x, y = data()
    z = net.encoder(x)
    losses = [((h(z).squeeze(1) - y[:, t]) ** 2).mean() + 0.1 for t, h in enumerate(net.heads)]
    per_task = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0] for loss in losses])
    signed = (per_task * z.detach().sign()).sum(1).numpy()
    mask = torch.from_numpy(graddrop_reference(signed, 4, 0.1))
    expected_z = (mask[:, None, :] * per_task).sum(0)
    reference = Net()
    z_ref = reference.encoder(x)
    z_ref.backward(expected_z)
    sum(
        ((h(z_ref.detach()).squeeze(1) - y[:, t]) ** 2).mean() for t, h in enumerate(reference.heads)
    ).backward()
    result = mtlopt.backward(losses, mtlopt.GradDrop(leak=0.1, seed=4), features=z)
    for p, q in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-15)
    assert result.weights.tolist() == [1.0, 1.0, 1.0] and result.diagnostics["weight_sum"] == 3.0


def test_graddrop_draws_are_resumed_and_reset():
    method = mtlopt.GradDrop("parameters", seed=1)
    J = torch.from_numpy(random_jacobians(1, P=30)[0])
    method.compute(J, torch.ones(3, dtype=F64))
    saved = copy.deepcopy(method.state_dict())
    second = method.compute(J, torch.ones(3, dtype=F64)).direction
    other = mtlopt.GradDrop("parameters", seed=1)
    other.load_state_dict(saved)
    assert torch.equal(other.compute(J, torch.ones(3, dtype=F64)).direction, second)
    method.reset()
    first = mtlopt.GradDrop("parameters", seed=1).compute(J, torch.ones(3, dtype=F64)).direction
    assert torch.equal(method.compute(J, torch.ones(3, dtype=F64)).direction, first)
    assert not torch.equal(first, second)


def test_graddrop_level_and_inputs_must_match():
    net = Net()
    x, y = data()
    with pytest.raises(
        ValueError, match="GradDrop reads the per-task gradients w.r.t. the shared representation"
    ):
        mtlopt.backward(net.losses(x, y), mtlopt.GradDrop(), shared_params=net.encoder)
    with pytest.raises(ValueError, match="level='features'.*pass features"):
        mtlopt.GradDrop().compute(torch.ones(3, 4, dtype=F64), torch.ones(3, dtype=F64))
    z = net.encoder(x)
    with pytest.raises(ValueError, match=r"GradDrop needs features of shape \(batch, ...\)"):
        mtlopt.backward([z.sum() * 0 + z[0, 0], z[0, 1]], mtlopt.GradDrop(), features=z[0])
    with pytest.raises(ValueError, match="GradDrop was set up for 2 tasks but got 3 losses"):
        mtlopt.backward(net.losses(x, y), mtlopt.GradDrop(leak=[0.1, 0.2]), features=z)
    with pytest.raises(ValueError, match=r"GradDrop leak must be a number in \[0, 1\]"):
        mtlopt.GradDrop(leak=1.5)


def test_graddrop_features_under_a_grad_scaler():
    runs = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        net = Net()
        x, y = data()
        z = net.encoder(x)
        losses = [((h(z).squeeze(1) - y[:, t]) ** 2).mean() + 0.1 for t, h in enumerate(net.heads)]
        mtlopt.backward(losses, mtlopt.GradDrop(seed=3), features=z, scaler=scaler)
        runs.append(grads(net))
    for a, b in zip(*runs):
        torch.testing.assert_close(b, a * 2.0**10, rtol=1e-10, atol=1e-12)


def test_db_mtl_refuses_losses_below_minus_eps():
    with pytest.raises(ValueError, match=r"DBMTL takes log\(L \+ 1e-08\).*task\(s\) \[1\]"):
        mtlopt.DBMTL().compute(torch.ones(2, 3, dtype=F64), torch.tensor([1.0, -0.5], dtype=F64))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: mtlopt.ExcessMTL(0.0), "ExcessMTL step_size must be a finite number > 0, got 0.0"),
        (lambda: mtlopt.ExcessMTL(warmup_steps=0), "ExcessMTL warmup_steps must be an integer >= 1"),
        (lambda: mtlopt.ExcessMTL(weight_scale="sum"), "weight_scale"),
        (lambda: mtlopt.ExcessMTL(baseline_eps=-1.0), "ExcessMTL baseline_eps must be"),
        (lambda: mtlopt.MoCo(beta=1.5), r"MoCo beta must be in \(0, 1\]"),
        (lambda: mtlopt.MoCo(gamma=-1.0), "MoCo gamma must be a finite number > 0"),
        (lambda: mtlopt.MoCo(rho=float("nan")), "MoCo rho must be a finite number >= 0"),
        (lambda: mtlopt.MoCo(lambda_map="argmax"), "lambda_map"),
        (lambda: mtlopt.MoCo(normalize="loss"), "normalize"),
        (lambda: mtlopt.DBMTL(beta=1.0), r"DBMTL beta must be in \[0, 1\)"),
        (lambda: mtlopt.DBMTL(eps=0.0), "DBMTL eps must be > 0"),
    ],
)
def test_bad_options_are_refused_naming_the_value(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_a_jacobian_of_another_shape_after_the_first_step_is_refused():
    for name, build in METHODS.items():
        if name.startswith("graddrop"):  # no per-parameter state
            continue
        method = build()
        method.compute(torch.randn(3, 4, dtype=F64), torch.ones(3, dtype=F64))
        with pytest.raises(ValueError, match="call reset"):
            method.compute(torch.randn(3, 5, dtype=F64), torch.ones(3, dtype=F64))


# ---------------------------------------------------------------- the backward path


class Net(nn.Module):
    def __init__(self, dtype=F64):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(5, 1) for _ in range(3))
        self.to(dtype)

    def losses(self, x, y):
        z = self.encoder(x)
        return [((h(z).squeeze(1) - y[:, t]) ** 2).mean() + 0.1 for t, h in enumerate(self.heads)]


def data(dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 4, generator=g).to(dtype), torch.randn(8, 3, generator=g).to(dtype)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def grads(net):
    return [p.grad.clone() for p in net.parameters()]


def step(net, method, seed=0, **kwargs):
    net.zero_grad(set_to_none=True)
    return mtlopt.backward(net.losses(*data(seed=seed)), method, shared_params=net.encoder, **kwargs)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_shared_grad_is_the_direction_and_heads_follow_head_weighting(name):
    net, method = Net(), METHODS[name]()
    reference = copy.deepcopy(method)
    losses = net.losses(*data())
    params = list(net.encoder.parameters())
    J = mtlopt.jacobian(losses, params)
    values = torch.stack([loss.detach() for loss in losses])
    out = reference.compute(J, values)
    result = mtlopt.backward(losses, method, shared_params=net.encoder)
    shared = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(shared, out.direction, rtol=1e-13, atol=1e-15)
    net2 = Net()
    heads = (
        out.head_weights
        if out.head_weights is not None
        else (out.weights if method.head_weighting == "weighted" else torch.ones(3, dtype=F64))
    )
    sum(c * loss for c, loss in zip(heads, net2.losses(*data()))).backward()
    for p, q in zip(net.heads.parameters(), net2.heads.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-13, atol=1e-15)
    assert result.gramian is None and result.diagnostics["direction_norm"] == pytest.approx(
        float(out.direction.norm())
    )
    assert torch.equal(result.weights, out.weights)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_state_dict_resumes_exactly_through_backward(name):
    net, method = Net(), METHODS[name]()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for seed in range(3):
        step(net, method, seed)
        optimizer.step()
    saved_net, saved_method = copy.deepcopy(net.state_dict()), copy.deepcopy(method.state_dict())
    first = []
    for seed in range(3, 6):
        step(net, method, seed)
        first.append(grads(net))
        optimizer.step()
    again_net, again_method = Net(), METHODS[name]()
    again_net.load_state_dict(saved_net)
    again_method.load_state_dict(saved_method)
    optimizer = torch.optim.SGD(again_net.parameters(), lr=0.1)
    for seed, expected in zip(range(3, 6), first):
        step(again_net, again_method, seed)
        assert all(torch.equal(a, b) for a, b in zip(grads(again_net), expected))
        optimizer.step()
    with pytest.raises(KeyError, match="expects the keys"):
        again_method.load_state_dict({"step": 1})
    again_method.reset()
    assert same_state(again_method.state_dict(), METHODS[name]().state_dict())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_grad_scaler_gets_the_unscaled_state_and_scaled_grads(name):
    plain_net, plain = Net(), METHODS[name]()
    scaled_net, scaled = Net(), METHODS[name]()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for seed in range(3):
        a = step(plain_net, plain, seed)
        b = step(scaled_net, scaled, seed, scaler=scaler)
        torch.testing.assert_close(b.weights, a.weights, rtol=1e-12, atol=1e-15)
        for ga, gb in zip(grads(plain_net), grads(scaled_net)):
            torch.testing.assert_close(gb, ga * 2.0**10, rtol=1e-10, atol=1e-12)
    for key, value in plain.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(scaled.state_dict()[key], value, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_an_overflow_under_a_grad_scaler_skips_the_step_and_leaves_the_state(name):
    net, method = Net(torch.float32), METHODS[name]()
    x, y = data(torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    result = mtlopt.backward(net.losses(x, y * 1e6), method, shared_params=net.encoder, scaler=scaler)
    assert result.diagnostics["skipped"] and bool(torch.isnan(result.weights).all())
    assert all(bool(torch.isnan(p.grad).all()) for p in net.parameters())
    assert same_state(method.state_dict(), METHODS[name]().state_dict())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_weight_total_rescales_the_direction_by_the_reported_weights(name):
    a_net, b_net = Net(), Net()
    a = step(a_net, METHODS[name]())
    b = step(b_net, METHODS[name](), weight_total=1.0)
    factor = 1.0 / float(a.weights.abs().sum())
    assert float(b.weights.sum()) == pytest.approx(1.0)
    for p, q in zip(a_net.encoder.parameters(), b_net.encoder.parameters()):
        torch.testing.assert_close(q.grad, p.grad * factor, rtol=1e-12, atol=1e-15)
    head_factor = factor if METHODS[name]().head_weighting == "weighted" else 1.0
    for p, q in zip(a_net.heads.parameters(), b_net.heads.parameters()):
        torch.testing.assert_close(q.grad, p.grad * head_factor, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_is_kept_in_the_model_dtype_at_least_float32(dtype):
    net, method = Net(dtype), mtlopt.MoCo()
    x, y = data(dtype)
    mtlopt.backward(net.losses(x, y), method, shared_params=net.encoder)
    assert method.y.dtype == torch.float32 and method.lambd.dtype == F64
    assert all(p.grad.dtype == dtype for p in net.parameters())


def test_non_finite_gradients_name_the_task_and_features_are_refused():
    theta = nn.Parameter(torch.zeros(2, dtype=F64))
    losses = [theta.sum() + 1.0, theta.abs().sqrt().sum() + 1.0]  # finite loss, NaN gradient
    with pytest.raises(mtlopt.NonFiniteError, match="task\\(s\\) '1'"):
        mtlopt.backward(losses, mtlopt.MoCo(), shared_params=[theta])
    net = Net()
    x, y = data()
    z = net.encoder(x)
    losses = [((h(z).squeeze(1) - y[:, t]) ** 2).mean() for t, h in enumerate(net.heads)]
    with pytest.raises(ValueError, match="MoCo reads the Jacobian of the shared parameters.*shared_params"):
        mtlopt.backward(losses, mtlopt.MoCo(), features=z)
    with pytest.raises(ValueError, match="ExcessMTL needs per-task gradients: pass shared_params"):
        mtlopt.backward(losses, mtlopt.ExcessMTL())


def test_unreached_shared_params_keep_their_grad_and_are_listed():
    net = Net()
    extra = nn.Parameter(torch.ones(2, dtype=F64))
    x, y = data()
    result = mtlopt.backward(
        net.losses(x, y), mtlopt.DBMTL(), shared_params=[*net.encoder.parameters(), extra]
    )
    assert extra.grad is None and result.diagnostics["unreached_shared_params"] == ["shared_params[2]"]


# ---------------------------------------------------------------- the benchmark runners


def make_runner(name, options=None):
    from mtlopt.benchmarks.methods import OptimizerSettings, get_method

    class Tasks:
        task_types = ("regression",) * 3

        def losses(self, outputs, targets):
            return [((o.squeeze(1) - targets[:, t]) ** 2).mean() + 0.1 for t, o in enumerate(outputs)]

    runner = get_method(name)(options or {}, num_tasks=3, seed=3)
    runner.steps_per_epoch = 2
    runner.build(Net, OptimizerSettings("sgd", lr=0.05), total_steps=12, tasks=Tasks())
    return runner


@pytest.mark.parametrize(
    "name, options, check",
    [
        ("excess-mtl", {"step-size": 0.5, "weight-scale": "one", "warmup-steps": 2}, ("step_size", 0.5)),
        ("moco", {"lambda-map": "softmax", "normalize": "l2", "gamma": 0.2}, ("lambda_map", "softmax")),
        ("db-mtl", {"beta": 0.5, "beta-decay": 0.5}, ("beta_decay", 0.5)),
        ("graddrop", {"level": "parameters", "leak": 0.2}, ("level", "parameters")),
    ],
)
def test_runners_pass_their_options_and_resume_exactly(name, options, check):
    runner = make_runner(name, options)
    assert getattr(runner._weighting, check[0]) == check[1]
    assert runner.backward_kwargs(torch.zeros(1)) == {"shared_params": runner.model.encoder}
    batches = [data(seed=s) for s in range(6)]
    for x, y in batches[:3]:
        runner.train_step(x, y)
    saved = copy.deepcopy(runner.state_dict())
    logged = [runner.train_step(x, y) for x, y in batches[3:]]
    resumed = make_runner(name, options)
    resumed.load_state_dict(saved)
    again = [resumed.train_step(x, y) for x, y in batches[3:]]
    for a, b in zip(runner.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for first, second in zip(logged, again, strict=True):
        assert torch.equal(first["weights"], second["weights"])


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_the_runners_train_one_epoch_under_mixed_precision(tmp_path, monkeypatch, amp):
    """bf16 autocast, and fp16 autocast with a GradScaler (J unscaled before the method, overflow skipped)."""
    import math

    from mtlopt.benchmarks.cli import main

    monkeypatch.setenv("MTLOPT_CACHE", str(tmp_path / "cache"))
    small = [
        "--benchmark",
        "multimnist",
        "--max-sources",
        "400",
        "--threads",
        "1",
        "--quiet",
        "--batch-size",
        "64",
    ]
    methods = "excess-mtl,moco,db-mtl,graddrop,graddrop[level=parameters]"
    out = tmp_path / amp
    args = [
        "compare",
        *small,
        "--methods",
        methods,
        "--amp",
        amp,
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    paths = sorted((out / "runs").glob("*/seed0/result.json"))
    assert len(paths) == 5
    for path in paths:
        result = json.loads(path.read_text())
        assert result["environment"]["amp"] == amp
        for values in result["final"]["test"].values():
            assert all(math.isfinite(v) for v in values.values()), (path, values)


@settings(max_examples=15, deadline=None)
@given(
    K=st.integers(2, 64),
    seed=st.integers(0, 2**16),
    log_scales=st.lists(st.floats(-8, 8), min_size=64, max_size=64),
    zero_row=st.booleans(),
)
def test_excess_mtl_weights_ignore_per_task_gradient_scales(K, seed, log_scales, zero_row):
    """e_t and e⁰_t both scale with c_t when task t's gradients do: the ratio, and the weights, do not
    (up to the 1e-7 inside the square root: compared for c ≥ 1, finite for every c)."""
    g = torch.Generator().manual_seed(seed)
    # entries of magnitude 0.5-1.5, so that S ≫ 1e-7 in every coordinate (c ≥ 1)
    Js = [
        torch.randn(K, 9, generator=g, dtype=F64).sign() * (0.5 + torch.rand(K, 9, generator=g, dtype=F64))
        for _ in range(3)
    ]
    if zero_row:
        Js[0][0] = 0  # no baseline for task 0: ratio 0 in every run
    c = 10.0 ** torch.tensor(log_scales[:K], dtype=F64)
    scales = (torch.ones(K, dtype=F64), c, c.clamp(min=1.0))
    runs = [mtlopt.ExcessMTL(0.5) for _ in scales]
    for J in Js:
        wa, wb, wc = (
            m.compute(J * s[:, None], torch.ones(K, dtype=F64)).weights for m, s in zip(runs, scales)
        )
    assert bool(torch.isfinite(wb).all()) and wb.sum() == pytest.approx(K)
    torch.testing.assert_close(wc, wa, rtol=1e-6, atol=0)


@settings(max_examples=15, deadline=None)
@given(
    K=st.integers(2, 64),
    seed=st.integers(0, 2**16),
    log_scales=st.lists(st.floats(-8, 8), min_size=64, max_size=64),
)
def test_db_mtl_is_invariant_to_the_scale_of_each_loss(K, seed, log_scales):
    """log(c L) = log c + log L: the gradients DB-MTL reads do not depend on c (up to ε = 1e-8:
    compared for c ≥ 0.1, finite for every c)."""
    g = torch.Generator().manual_seed(seed)
    c = 10.0 ** torch.tensor(log_scales[:K], dtype=F64)
    scales = (torch.ones(K, dtype=F64), c, c.clamp(min=0.1))
    runs = [mtlopt.DBMTL(0.5) for _ in scales]
    for _ in range(3):
        J = torch.randn(K, 9, generator=g, dtype=F64)
        L = torch.rand(K, generator=g, dtype=F64) + 0.5
        da, db, dc = (m.compute(J * s[:, None], L * s).direction for m, s in zip(runs, scales))
    assert bool(torch.isfinite(db).all())
    torch.testing.assert_close(dc, da, rtol=1e-6, atol=1e-9 * float(da.abs().max()))
