"""GradVac: agreement with the peers over several steps (the EMA targets), an independent J-space
reference, exact resume, the correction rule, degenerate inputs.

Peers (``peer_golden_aligned.json`` from ``tools/record_aligned_peers.py``; live when installed):
TorchJD 0.18.0 ``GradVac()`` (orders from the global generator seeded like mtlopt's), LibMTL HEAD
``GradVac`` (group type 0) and LibMTL 1.1.5 ``GradVac`` (targets updated only on a correction, no
epsilon: ``target_update="on-correction", eps=0``), their ``random.shuffle`` replaying mtlopt's orders.
"""

from __future__ import annotations

import importlib.util
import math

import aligned_scenario as sc
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlopt

F64 = torch.float64
GOLDEN = sc.golden()
CASES = [(name, peer) for name in ("gradvac", "gradvac-pypi") for peer in sc.PEERS[name]]
_RUNS: dict[str, dict] = {}


def ours(name: str) -> dict:
    if name not in _RUNS:
        _RUNS[name] = sc.run_mtlopt(name)
    return _RUNS[name]


@pytest.mark.parametrize(("name", "peer"), CASES)
def test_weights_and_grads_agree_with_the_recorded_peer_over_every_step(name, peer):
    sc.assert_agrees(ours(name), GOLDEN[name][peer])


@pytest.mark.parametrize(("name", "peer"), CASES)
def test_weights_and_grads_agree_with_the_live_peer(name, peer):
    sc.assert_agrees(ours(name), sc.live_peer(name, peer))


def test_the_scenario_exercises_the_targets_and_the_two_update_rules_differ():
    method, _ = sc.mtlopt_method("gradvac")
    net = sc.Model()
    corrections = []
    for step in range(sc.STEPS):
        x, y = sc.batch(step)
        for p in net.parameters():
            p.grad = None
        result = mtlopt.backward(net.task_losses(net.features(x), y), method, shared_params=net.encoder)
        corrections.append(result.diagnostics["corrections"])
        assert float(result.weights.sum()) >= sc.K - 1e-12  # every correction adds a positive weight
        with torch.no_grad():
            for p in net.parameters():
                p -= sc.LR * p.grad
    assert sum(c > 0 for c in corrections) >= 3 and method.targets is not None
    assert float(method.targets.abs().max()) > 0.05
    a, b = torch.tensor(ours("gradvac")["weights"]), torch.tensor(ours("gradvac-pypi")["weights"])
    assert not torch.allclose(a, b)  # LibMTL 1.1.5's rule is another method on this run


def test_same_orders_as_live_torchjd_on_a_sequence_of_gramians():
    if importlib.util.find_spec("torchjd") is None:
        pytest.skip("torchjd is not installed here")
    from torchjd.aggregation import GradVacWeighting

    torch.manual_seed(21)
    theirs = GradVacWeighting()
    mine = mtlopt.GradVac(seed=21)
    for step in range(6):
        J = sc.structured_jacobian(step, 5, 5)
        J[4] = -J[0] + 0.3 * J[4]
        G = J @ J.T
        torch.testing.assert_close(mine(G, torch.ones(5, dtype=F64)), theirs(G), rtol=1e-12, atol=1e-12)


def reference_step(J: torch.Tensor, orders: list[list[int]], targets: torch.Tensor, beta: float, eps: float):
    """GradVac on the gradients themselves (LibMTL HEAD's loop, zero gradients never corrected towards,
    roots clamped at 0); updates ``targets`` in place; returns d."""
    pc = J.clone()
    K = J.shape[0]
    for i in range(K):
        for j in orders[i]:
            norm_i, norm_j = float(pc[i].norm()), float(J[j].norm())
            denom = norm_i * norm_j + eps
            phi = float(pc[i] @ J[j]) / denom if denom > 0 else 0.0
            hat = float(targets[i, j])
            if phi < hat and norm_j > 0:
                root_phi, root_hat = math.sqrt(max(1 - phi * phi, 0.0)), math.sqrt(max(1 - hat * hat, 0.0))
                if norm_j * root_hat + eps > 0:
                    pc[i] = pc[i] + J[j] * norm_i * (hat * root_phi - phi * root_hat) / (
                        norm_j * root_hat + eps
                    )
            targets[i, j] = (1 - beta) * hat + beta * phi
    return pc.sum(0)


jacobians = st.builds(
    lambda seed, K, rank, dup, zero, exponent: sc.structured_jacobian(
        seed, K, rank, dup, zero, 10.0**exponent, P=30
    ),
    seed=st.integers(0, 10_000),
    K=st.integers(2, 64),
    rank=st.integers(1, 64),
    dup=st.integers(0, 3),
    zero=st.integers(0, 3),
    exponent=st.sampled_from([-8, -4, 0, 4, 8]),
)


distinct = st.builds(  # no two rows parallel: every cosine is well defined by the data
    lambda seed, K, rank, zero, exponent: sc.structured_jacobian(
        seed, K, rank, 0, zero, 10.0**exponent, P=30
    ),
    seed=st.integers(0, 10_000),
    K=st.integers(2, 24),
    rank=st.integers(2, 24),
    zero=st.integers(0, 2),
    exponent=st.sampled_from([-8, -4, 0, 4, 8]),
)


def three_gramians(J: torch.Tensor) -> list[torch.Tensor]:
    """Three different Jacobians from J: the targets of one step act on the next."""
    K = J.shape[0]
    return [J, torch.cat([J[: K // 2], -J[K // 2 :]]), J + 0.5 * J.roll(1, 0)]


@settings(max_examples=8, deadline=None)
@given(J=distinct, beta=st.sampled_from([0.0, 0.5, 0.9]), seed=st.integers(0, 50))
def test_the_gramian_run_equals_the_gradient_space_reference_over_three_steps(J, beta, seed):
    K = J.shape[0]
    eps = 0.0  # exact cosines: the same rule at every scale
    method = mtlopt.GradVac(beta=beta, eps=eps, seed=seed)
    replay = mtlopt.GradVac(seed=seed)
    targets = torch.zeros(K, K, dtype=F64)
    for Js in three_gramians(J):
        out = method.compute(Js @ Js.T, torch.ones(K, dtype=F64))
        assert torch.isfinite(out.weights).all() and float(out.weights.sum()) >= K * (1 - 1e-12)
        d = reference_step(Js, replay.orders(K), targets, beta, eps)
        scale = float(Js.norm(dim=1).max()) * K + float(d.norm())
        torch.testing.assert_close(Js.T @ out.weights, d, rtol=0, atol=1e-7 * scale)
        torch.testing.assert_close(method.targets, targets, rtol=0, atol=1e-7)
        zero = (Js == 0).all(dim=1)
        assert torch.equal(
            out.weights[zero], torch.ones(int(zero.sum()), dtype=F64)
        )  # never corrected towards


@settings(max_examples=10, deadline=None)
@given(J=jacobians, eps=st.sampled_from([0.0, 1e-8]), seed=st.integers(0, 50))
def test_degenerate_jacobians_give_finite_weights_of_total_at_least_k(J, eps, seed):
    """Duplicated, opposite (after the sign flips), zero and rank-1 rows. Where a correction cancels g_i'
    (towards an opposite gradient), the later cosines of g_i' are rounding: no peer agrees there, and
    the stated rule is only finiteness and W >= K."""
    K = J.shape[0]
    method = mtlopt.GradVac(eps=eps, seed=seed)
    for Js in three_gramians(J):
        w = method(Js @ Js.T, torch.ones(K, dtype=F64))
        assert torch.isfinite(w).all() and float(w.sum()) >= K * (1 - 1e-12)
        assert method.targets is not None and torch.isfinite(method.targets).all()
        assert float(method.targets.abs().max()) <= 1 + 1e-9


@settings(max_examples=10, deadline=None)
@given(J=distinct, exponent=st.sampled_from([-6, 6]))
def test_with_eps_0_the_weights_are_scale_invariant_step_after_step(J, exponent):
    K = J.shape[0]
    a, b = mtlopt.GradVac(eps=0.0, seed=1), mtlopt.GradVac(eps=0.0, seed=1)
    for Js in three_gramians(J)[:2]:
        G = Js @ Js.T
        wa, wb = a(G, torch.ones(K, dtype=F64)), b(G * 10.0**exponent, torch.ones(K, dtype=F64))
        torch.testing.assert_close(wa, wb, rtol=1e-7, atol=1e-9)


def test_the_correction_reaches_the_target_cosine_exactly():
    """With a target φ̂ and φ < φ̂, one correction makes cos(g_i', g_j) = φ̂ (eps = 0)."""
    g1, g2 = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([-0.6, 0.8], dtype=F64) * 3
    J = torch.stack([g1, g2])
    method = mtlopt.GradVac(eps=0.0, beta=0.25)
    method.targets = torch.tensor([[0.0, 0.3], [0.3, 0.0]], dtype=F64)
    out = method.compute(J @ J.T, torch.ones(2, dtype=F64))
    assert out.diagnostics["corrections"] == 2
    # the corrected rows are g_i + c_i g_j with the weights w = (1 + c_2, 1 + c_1)
    c1, c2 = float(out.weights[1]) - 1, float(out.weights[0]) - 1
    for gi, gj, c in ((g1, g2, c1), (g2, g1, c2)):
        corrected = gi + c * gj
        assert float(corrected @ gj / (corrected.norm() * gj.norm())) == pytest.approx(0.3, abs=1e-12)
    updated = 0.75 * 0.3 + 0.25 * -0.6  # the EMA of the cosine measured before the correction
    torch.testing.assert_close(method.targets, torch.tensor([[0.0, updated], [updated, 0.0]], dtype=F64))


def test_no_conflict_and_zero_targets_give_exactly_k():
    J = sc.structured_jacobian(1, 5, 5).abs()  # non-negative rows: no negative cosine
    out = mtlopt.GradVac().compute(J @ J.T, torch.ones(5, dtype=F64))
    assert out.diagnostics["corrections"] == 0 and torch.equal(out.weights, torch.ones(5, dtype=F64))


def test_state_dict_resumes_exactly_and_reset_starts_over():
    grams = []
    for step in range(6):
        J = sc.structured_jacobian(step, 4, 3, zeros=step % 2)
        J[3] = -J[0] + 0.2 * J[3]
        grams.append(J @ J.T)
    L = torch.ones(4, dtype=F64)
    method = mtlopt.GradVac(seed=9)
    first = [method(G, L) for G in grams[:3]]
    saved = method.state_dict()
    rest = [method(G, L) for G in grams[3:]]
    resumed = mtlopt.GradVac(seed=9)
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, resumed(G, L)) for a, G in zip(rest, grams[3:]))
    method.reset()
    assert method.targets is None
    assert all(torch.equal(a, method(G, L)) for a, G in zip(first, grams[:3]))
    copy = method.state_dict()
    copy["targets"] += 1.0  # the state is a copy
    assert not torch.equal(copy["targets"], method.targets)
    with pytest.raises(ValueError, match="GradVac state must have the keys"):
        resumed.load_state_dict({"generator": saved["generator"]})
    with pytest.raises(
        ValueError,
        match=r"holds targets of shape \(4, 4\) but this step needs \(3, 3\) \(3 tasks\); call reset",
    ):
        method(torch.eye(3, dtype=F64), torch.ones(3, dtype=F64))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 1.5}, "beta must be a number in \\[0, 1\\]; got 1.5"),
        ({"eps": -1.0}, "eps must be a finite number >= 0; got -1.0"),
        ({"target_update": "never"}, "target_update must be one of 'always', 'on-correction'; got 'never'"),
        ({"groups": "rows"}, "groups must be one of 'whole-model', 'layer', 'tensor'; got 'rows'"),
        ({"head_weighting": "x"}, "head_weighting must be one of"),
    ],
)
def test_bad_options_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        mtlopt.GradVac(**kwargs)
    assert "\n" not in str(info.value) and "GradVac" in str(info.value)


@pytest.mark.parametrize("name", ["gradvac", "aligned-mtl-ub", "config"])
def test_the_benchmark_runner_resumes_exactly(name):
    """The runner's checkpoint carries the weighting's state (GradVac: targets and order generator)."""
    import copy

    from test_benchmark_methods import batches, make_runner, parameters

    data = batches(4)
    runner = make_runner(name, {})
    for x, y in data[:2]:
        runner.train_step(x, y)
    saved = copy.deepcopy(runner.state_dict())
    for x, y in data[2:]:
        logged = runner.train_step(x, y)
    assert all(torch.isfinite(v).all() for v in logged.values())
    resumed = make_runner(name, {})
    resumed.load_state_dict(saved)
    for x, y in data[2:]:
        resumed.train_step(x, y)
    for a, b in zip(parameters(runner), parameters(resumed), strict=True):
        assert torch.equal(a, b)
    if name == "gradvac":
        assert runner._weighting.seed == 3 and runner._weighting.targets is not None


# --- parameter groups (LibMTL GradVac_group_type 1 and 2) ---------------------------------------------


def _grouped_reference(grads, spans, targets, orders, beta, eps=1e-8):
    """LibMTL's GradVac loop on the flattened per-task gradients (K, P), one target per (i, j, group)."""
    pc = grads.clone()
    K = grads.shape[0]
    for i in range(K):
        for j in orders[i]:
            for k, (beg, end) in enumerate(spans):
                gi, gj = pc[i, beg:end], grads[j, beg:end]
                rho = gi.dot(gj) / (gi.norm() * gj.norm() + eps)
                target = targets[i, j, k]
                if rho < target:
                    w = gi.norm() * (target * (1 - rho**2).sqrt() - rho * (1 - target**2).sqrt())
                    pc[i, beg:end] += gj * (w / (gj.norm() * (1 - target**2).sqrt() + eps))
                targets[i, j, k] = (1 - beta) * target + beta * rho
    return pc.sum(dim=0)


@pytest.mark.parametrize("groups", ["layer", "tensor"])
def test_groups_equal_libmtls_loop_on_the_flattened_gradients(groups):
    torch.manual_seed(0)
    K, steps = 3, 6
    encoder = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    heads = torch.nn.ModuleList(torch.nn.Linear(3, 1) for _ in range(K))
    shared = list(encoder.parameters())
    sizes = [p.numel() for p in shared]
    layer_of = [0, 0, 1, 1] if groups == "layer" else [0, 1, 2, 3]
    spans = []
    for g in sorted(set(layer_of)):  # contiguous in parameter order
        members = [i for i, x in enumerate(layer_of) if x == g]
        spans.append((sum(sizes[: members[0]]), sum(sizes[: members[-1] + 1])))
    method = mtlopt.GradVac(beta=0.5, seed=3, groups=groups)
    replay = torch.Generator().manual_seed(3)
    targets = torch.zeros(K, K, len(spans), dtype=torch.float64)
    for _ in range(steps):
        x, y = torch.randn(16, 5), torch.randn(16, K)
        z = encoder(x)
        losses = [((heads[t](z).squeeze(1) - y[:, t]) ** 2).mean() for t in range(K)]
        grads = torch.stack(
            [
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(L, shared, retain_graph=True)])
                for L in losses
            ]
        ).double()
        orders = []
        for i in range(K):
            others = [j for j in range(K) if j != i]
            orders.append([others[p] for p in torch.randperm(K - 1, generator=replay).tolist()])
        expected = _grouped_reference(grads, spans, targets, orders, beta=0.5)
        encoder.zero_grad()
        heads.zero_grad()
        result = mtlopt.backward(losses, method, shared_params=encoder)
        got = torch.cat([p.grad.reshape(-1) for p in shared]).double()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
        assert torch.tensor(result.diagnostics["group_weights"]).shape == (len(spans), K)
        group_weights = torch.tensor(result.diagnostics["group_weights"], dtype=torch.float64)
        torch.testing.assert_close(result.weights, group_weights.mean(0))
    assert result.diagnostics["corrections"] > 0  # the targets took effect
    torch.testing.assert_close(method.targets.permute(1, 2, 0), targets)  # the same targets, per group


def test_groups_resume_exactly_and_need_a_shared_module():
    torch.manual_seed(1)
    encoder = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3))
    batches = [torch.randn(8, 4) for _ in range(4)]

    def step(method, x):
        encoder.zero_grad()
        z = encoder(x)
        mtlopt.backward(
            [z[:, 0].pow(2).mean(), z[:, 1].sin().mean(), z[:, 2].mean()], method, shared_params=encoder
        )
        return torch.cat([p.grad.reshape(-1) for p in encoder.parameters()])

    straight = mtlopt.GradVac(groups="layer")
    reference = [step(straight, x) for x in batches]
    first = mtlopt.GradVac(groups="layer")
    for x in batches[:2]:
        step(first, x)
    resumed = mtlopt.GradVac(groups="layer")
    resumed.load_state_dict(first.state_dict())
    assert resumed.targets.shape == (2, 3, 3)
    for x, expected in zip(batches[2:], reference[2:]):
        assert torch.equal(step(resumed, x), expected)
    z = encoder(batches[0])
    losses = [z[:, 0].mean(), z[:, 1].mean()]
    with pytest.raises(ValueError, match="groups='layer' needs shared_params=<the shared module>"):
        mtlopt.backward(losses, mtlopt.GradVac(groups="layer"), shared_params=list(encoder.parameters()))
    z = encoder(batches[0])
    with pytest.raises(ValueError, match=r"GradVac\(groups='tensor'\) weighs groups of shared parameters"):
        mtlopt.backward([z[:, 0].mean(), z[:, 1].mean()], mtlopt.GradVac(groups="tensor"), features=z)
