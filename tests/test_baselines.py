"""Uncertainty weighting, GradNorm and PCGrad: closed forms, hand computations, independent references."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import mtlopt
from models import make_problem
from mtlopt.weighting.gradnorm import GradNorm
from mtlopt.weighting.pcgrad import PCGrad
from mtlopt.weighting.uw import UncertaintyWeighting

F64 = torch.float64


def scalar_losses(values, dtype=F64):
    """K losses L_t = θ_t: each ∇_θ L_t is the unit vector e_t, so θ.grad is the weight vector."""
    theta = nn.Parameter(torch.tensor(values, dtype=dtype))
    return theta, list(theta.unbind())


def per_task_gradients(losses, params):
    return [
        torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True, materialize_grads=True)
        for loss in losses
    ]


def set_log_variances(uw, values):
    with torch.no_grad():
        uw.log_variances.copy_(torch.tensor(values, dtype=F64))


# ---------------------------------------------------------------------------------------------------
# Uncertainty weighting


@settings(max_examples=150)
@given(st.data())
def test_uw_log_variance_gradient_is_the_closed_form(data):
    K = data.draw(st.integers(1, 6))
    values = data.draw(st.lists(st.floats(0.0, 1e3), min_size=K, max_size=K))
    s = data.draw(st.lists(st.floats(-5.0, 5.0), min_size=K, max_size=K))
    types = data.draw(st.lists(st.sampled_from(["regression", "classification"]), min_size=K, max_size=K))
    uw = UncertaintyWeighting(K, types).double()
    set_log_variances(uw, s)
    theta, losses = scalar_losses(values)

    result = mtlopt.backward(losses, uw)

    c = np.array([0.5 if kind == "regression" else 1.0 for kind in types])
    weights = c * np.exp(-np.array(s))  # regression ½e^{−s}, classification e^{−s}
    expected = -weights * np.array(values) + 0.5  # ∂/∂s of c·e^{−s}·L + ½s
    np.testing.assert_allclose(result.weights.numpy(), weights, rtol=1e-14, atol=0)
    np.testing.assert_allclose(
        uw.log_variances.grad.numpy(), expected, rtol=0, atol=1e-13 * (1 + weights * np.array(values)).max()
    )
    np.testing.assert_allclose(theta.grad.numpy(), result.weights.numpy(), rtol=1e-15, atol=0)


def test_uw_model_gradient_is_the_weighted_sum_of_task_gradients():
    model, x, y = make_problem()
    uw = UncertaintyWeighting(3, ["classification", "regression", "classification"]).double()
    set_log_variances(uw, [0.3, -0.7, 1.1])
    z = model.encoder(x)
    losses = model.losses(z, y)
    params = list(model.parameters())
    grads = per_task_gradients(losses, params)

    result = mtlopt.backward(losses, uw)

    w = result.weights.tolist()
    assert w == pytest.approx([math.exp(-0.3), 0.5 * math.exp(0.7), math.exp(-1.1)], rel=1e-15)
    for i, p in enumerate(params):
        expected = sum(w[t] * grads[t][i] for t in range(3))
        torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=1e-15)
    assert model.encoder.forward_calls == 1


def test_uw_golden_values():
    uw = UncertaintyWeighting(3, ["regression", "classification", "regression"]).double()
    set_log_variances(uw, [0.0, 0.5, -1.0])
    losses = torch.tensor([2.0, 0.5, 1.5], dtype=F64, requires_grad=True)
    output = uw.weigh(losses.detach())
    total = uw.objective(losses, output)
    total.backward()
    assert output.weights.dtype == F64
    assert output.weights.tolist() == pytest.approx([0.5, 0.6065306597126334, 1.3591409142295225], rel=1e-15)
    assert total.item() == pytest.approx(3.0919767012006005, rel=1e-15)
    assert uw.log_variances.grad.tolist() == pytest.approx(
        [-0.5, 0.1967346701436833, -1.538711371344284], rel=1e-14
    )
    assert losses.grad.tolist() == pytest.approx(output.weights.tolist(), rel=1e-15)
    assert uw(losses.detach()).weights.tolist() == output.weights.tolist()  # nn.Module.__call__ → forward


def test_uw_libmtl_convention():
    uw = UncertaintyWeighting(3, convention="libmtl")  # float32 parameters, as LibMTL
    assert uw.log_variances.tolist() == [-0.5, -0.5, -0.5]
    _, losses = scalar_losses([2.0, 0.5, 1.5], dtype=torch.float32)
    loss_vector = torch.stack(losses)
    total = uw.objective(loss_vector, uw.weigh(loss_vector.detach()))
    assert total.item() == pytest.approx(2.5474425414002564, rel=1e-6)  # Σ L/(2e^s) + s/2 at s = −½

    result = mtlopt.backward(losses, uw)

    assert result.weights.dtype == F64
    assert result.weights.tolist() == pytest.approx([0.8243606353500641] * 3, rel=1e-7)  # e^{½}/2
    expected = [-0.5 * math.exp(0.5) * L + 0.5 for L in (2.0, 0.5, 1.5)]
    assert uw.log_variances.grad.tolist() == pytest.approx(expected, rel=1e-6)
    # LibMTL's form is the paper's regression form: equal objectives at equal s for regression tasks.
    paper = UncertaintyWeighting(3, ["regression"] * 3, init=-0.5)
    assert paper.objective(loss_vector, paper.weigh(loss_vector.detach())).item() == total.item()
    # ... and half the paper's weight for a classification task.
    cls = UncertaintyWeighting(1, ["classification"], init=-0.5)
    assert cls(torch.ones(1)).weights.item() == pytest.approx(2 * result.weights[0].item(), rel=1e-7)
    with pytest.raises(ValueError, match="task_types"):
        UncertaintyWeighting(2, ["classification", "regression"], convention="libmtl")


def test_uw_trained_log_variances_reach_the_stationary_point():
    """With the losses fixed, SGD on uw.parameters() drives s_t to log(2 c_t L_t): c_t e^{−s_t} L_t = ½."""
    values = [0.2, 3.0, 40.0]
    uw = UncertaintyWeighting(3, ["regression", "classification", "regression"]).double()
    optimizer = torch.optim.SGD(uw.parameters(), lr=0.5)
    for _ in range(150):
        optimizer.zero_grad()
        _, losses = scalar_losses(values)
        mtlopt.backward(losses, uw)
        optimizer.step()
    c = [0.5, 1.0, 0.5]
    assert uw.log_variances.tolist() == pytest.approx(
        [math.log(2 * ci * L) for ci, L in zip(c, values)], abs=1e-9
    )
    weighted = uw.weigh(torch.tensor(values)).weights * torch.tensor(values, dtype=F64)
    assert weighted.tolist() == pytest.approx([0.5] * 3, abs=1e-9)


def test_uw_state_dict_is_the_modules_and_round_trips():
    # nn.Module comes first in the MRO: its state_dict/load_state_dict, not Weighting's stateless ones.
    assert UncertaintyWeighting.state_dict is nn.Module.state_dict
    assert UncertaintyWeighting.load_state_dict is nn.Module.load_state_dict
    uw = UncertaintyWeighting(2, ["classification", "regression"])
    assert isinstance(uw, mtlopt.Weighting) and isinstance(uw, nn.Module)
    assert [name for name, _ in uw.named_parameters()] == ["log_variances"]
    set_log_variances(uw, [0.25, -1.5])
    state = uw.state_dict()
    assert list(state) == ["log_variances"]  # the task-type coefficients are configuration, not state
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = UncertaintyWeighting(2, ["classification", "regression"])
    other.load_state_dict(torch.load(buffer))
    assert torch.equal(other.log_variances, uw.log_variances)
    losses = torch.tensor([1.0, 2.0])
    assert torch.equal(other.weigh(losses).weights, uw.weigh(losses).weights)
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.load_state_dict({"log_variances": torch.zeros(3)})
    uw.reset()
    assert uw.log_variances.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="3 tasks"):
        mtlopt.backward(scalar_losses([1.0, 2.0])[1], UncertaintyWeighting(3))


# ---------------------------------------------------------------------------------------------------
# GradNorm


class RegressionNet(nn.Module):
    """A two-layer tanh trunk (the second layer is the last shared layer) and one linear head per task."""

    def __init__(self, num_tasks: int = 3) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(num_tasks))

    @property
    def last_shared(self) -> nn.Module:
        return self.trunk[2]

    def losses(self, x, targets):
        z = self.trunk(x)
        return [F.mse_loss(head(z).squeeze(-1), targets[:, t]) for t, head in enumerate(self.heads)]


def regression_problem(seed=0, scales=(1.0, 100.0, 0.01), n=32):
    """Three regression tasks whose targets (and so losses) differ by orders of magnitude."""
    torch.manual_seed(seed)
    net = RegressionNet(len(scales)).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=F64)
    B = torch.randn(4, len(scales), generator=g, dtype=F64)
    targets = torch.tanh(x @ B) * torch.tensor(scales, dtype=F64)
    return net, x, targets


def gradnorm_reference_step(w_ref, optimizer_ref, losses, layer_params, initial, alpha):
    """One update of w by autograd on L_grad = Σ|‖∇_W(w_t L_t)‖ − const target|, clamp, renormalize."""
    norms = []
    for t, loss in enumerate(losses):
        grads = torch.autograd.grad(w_ref[t] * loss, layer_params, retain_graph=True, create_graph=True)
        norms.append(torch.cat([g.reshape(-1) for g in grads]).norm())
    G = torch.stack(norms)
    ratios = torch.stack(losses).detach() / initial
    target = (G.mean() * (ratios / ratios.mean()) ** alpha).detach()
    (grad,) = torch.autograd.grad((G - target).abs().sum(), w_ref, retain_graph=True)
    optimizer_ref.zero_grad()
    w_ref.grad = grad
    optimizer_ref.step()
    with torch.no_grad():
        w_ref.clamp_(min=1e-6)
        w_ref.mul_(len(losses) / w_ref.sum())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("alpha", [0.5, 1.5])
def test_gradnorm_update_matches_autograd_on_the_gradnorm_loss(optimizer, alpha):
    net, x, targets = regression_problem(seed=1, scales=(1.0, 3.0, 0.3))
    layer = list(net.last_shared.parameters())
    gn = GradNorm(3, net.last_shared, alpha=alpha, lr=0.025, optimizer=optimizer)
    w_ref = torch.ones(3, dtype=F64, requires_grad=True)
    optimizer_ref = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)([w_ref], lr=0.025)
    model_optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    initial = None
    for _ in range(6):
        losses = net.losses(x, targets)
        initial = torch.stack(losses).detach() if initial is None else initial
        used = w_ref.detach().clone()
        gradnorm_reference_step(w_ref, optimizer_ref, losses, layer, initial, alpha)
        model_optimizer.zero_grad()
        result = mtlopt.backward(losses, gn)
        model_optimizer.step()
        torch.testing.assert_close(result.weights, used, rtol=1e-12, atol=0)  # this step: w before update
        torch.testing.assert_close(gn.weights, w_ref.detach(), rtol=1e-10, atol=1e-12)
    assert gn.step_count == 6
    assert not torch.equal(gn.weights, torch.ones(3, dtype=F64))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_gradnorm_weights_stay_positive_and_sum_to_k_while_training(optimizer):
    net, x, targets = regression_problem()
    gn = GradNorm(3, net.last_shared, optimizer=optimizer)
    model_optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(120):
        model_optimizer.zero_grad()
        losses = net.losses(x, targets)
        first = [loss.item() for loss in losses] if first is None else first
        result = mtlopt.backward(losses, gn)
        model_optimizer.step()
        for w in (result.weights, gn.weights):
            assert torch.isfinite(w).all() and (w > 0).all()
            assert w.sum().item() == pytest.approx(3.0, rel=1e-12)
    last = [loss.item() for loss in net.losses(x, targets)]
    assert all(b < a for a, b in zip(first, last))
    # The task with 100× the targets has by far the largest gradients: GradNorm gives it the least weight.
    assert int(gn.weights.argmin()) == 1


def tiny_losses(W):
    """L_t = a_t W_t with a = (1, 2, 6): ‖∇_W L_t‖ = a_t exactly."""
    return [W[0] * 1.0, W[1] * 2.0, W[2] * 6.0]


def test_gradnorm_golden_values_on_a_tiny_problem():
    W = nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    gn = GradNorm(3, [W], optimizer="sgd")

    first = mtlopt.backward(tiny_losses(W), gn)
    # Step 1: L(0) = L, r = 1, targets mean(G) = 3, ∂L_grad/∂w = (−1, −2, 6), w = (1 − 0.025·that)·3/Σ.
    assert first.weights.tolist() == [1.0, 1.0, 1.0]
    assert first.diagnostics["gradnorm_loss"] == pytest.approx(6.0, rel=1e-15)
    assert W.grad.tolist() == [1.0, 2.0, 6.0]
    expected = [1.051282051282051, 1.0769230769230769, 0.8717948717948717]
    assert gn.weights.tolist() == pytest.approx(expected, rel=1e-15)
    assert gn.initial_losses.tolist() == [1.0, 4.0, 18.0]

    W.grad = None
    with torch.no_grad():
        W.copy_(torch.tensor([0.5, 2.0, 1.5]))  # loss ratios (0.5, 1, 0.5): r = (0.75, 1.5, 0.75)
    second = mtlopt.backward(tiny_losses(W), gn)
    assert second.weights.tolist() == pytest.approx(expected, rel=1e-15)
    assert W.grad.tolist() == pytest.approx([e * a for e, a in zip(expected, (1.0, 2.0, 6.0))], rel=1e-15)
    assert second.diagnostics["gradnorm_loss"] == pytest.approx(7.191552085741444, rel=1e-14)
    assert gn.weights.tolist() == pytest.approx(
        [1.1038790269559497, 1.1558185404339252, 0.7403024326101247], rel=1e-14
    )

    # Adam (the default): the first step is lr·g/(|g| + ε) per weight, about lr·sign(g), then ×3/Σ.
    V = nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    adam = GradNorm(3, [V])
    mtlopt.backward(tiny_losses(V), adam)
    assert adam.weights.tolist() == pytest.approx(
        [1.016528925483915, 1.0165289256078818, 0.9669421489082028], rel=1e-13
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_gradnorm_state_dict_round_trip_and_reset(optimizer):
    W = nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    a = GradNorm(3, [W], optimizer=optimizer)
    for values in ([1.0, 2.0, 3.0], [0.9, 1.0, 2.0], [0.5, 1.5, 1.0]):
        with torch.no_grad():
            W.copy_(torch.tensor(values))
        mtlopt.backward(tiny_losses(W), a)
    state = a.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    V = nn.Parameter(torch.tensor([0.4, 1.2, 0.8], dtype=F64))
    b = GradNorm(3, [V], optimizer=optimizer)
    b.load_state_dict(torch.load(buffer))
    with torch.no_grad():
        W.copy_(V)
    ra = mtlopt.backward(tiny_losses(W), a)
    rb = mtlopt.backward(tiny_losses(V), b)
    assert torch.equal(ra.weights, rb.weights) and torch.equal(a.weights, b.weights)
    for key, value in a.state_dict().items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(b.state_dict()[key])), key
    assert state["step"] == 3 and not torch.equal(state["weights"], a.weights)  # a copy, not a view
    if optimizer == "adam":
        assert state["exp_avg"].abs().sum() > 0

    a.reset()
    assert a.weights.tolist() == [1.0] * 3 and a.initial_losses is None and a.step_count == 0
    fresh = GradNorm(3, [V], optimizer=optimizer)
    mtlopt.backward(tiny_losses(W), a)
    mtlopt.backward(tiny_losses(V), fresh)
    assert torch.equal(a.weights, fresh.weights)
    with pytest.raises(ValueError, match="keys"):
        a.load_state_dict({"weights": torch.ones(3)})


def test_gradnorm_guards():
    W = nn.Parameter(torch.tensor([1.0, 2.0], dtype=F64))
    with pytest.raises(ValueError, match=r"initial loss.*task\(s\) \[1\]"):
        mtlopt.backward([W[0] * 1.0, W[1] * 0.0], GradNorm(2, [W]))
    assert W.grad is None  # refused before anything was written
    with pytest.raises(ValueError, match="initial loss"):
        GradNorm(2, [W], initial_losses=[1.0, 0.0])
    with pytest.raises(ValueError, match=r"eps must be > 0 with optimizer='adam'"):
        GradNorm(2, [W], eps=0.0)
    GradNorm(2, [W], eps=0.0, optimizer="sgd")  # no division by the second moment there
    with pytest.raises(ValueError, match=r"non-negative.*\[1\]"):
        mtlopt.backward([W[0] * 1.0, -W[1]], GradNorm(2, [W]))
    V = nn.Parameter(torch.ones(1, dtype=F64))
    with pytest.raises(ValueError, match="task 1 does not depend"):
        mtlopt.backward([W[0] * 1.0, V[0] * 1.0], GradNorm(2, [W]))
    nan_gradient = (W[0] - 1.0).abs().sqrt()  # loss 0, gradient 0·∞
    with pytest.raises(mtlopt.NonFiniteError, match=r"task\(s\) .0. w.r.t."):
        mtlopt.backward([nan_gradient, W[1] * 1.0], GradNorm(2, [W], initial_losses=[1.0, 1.0]))

    # A zero gradient norm: finite weights, that task gets no push.
    gn = GradNorm(2, [W])
    for _ in range(5):
        W.grad = None
        result = mtlopt.backward([W[0] * 3.0, W[1] * 0.0 + 1.0], gn)
        assert torch.isfinite(result.weights).all() and torch.isfinite(W.grad).all()
        assert torch.isfinite(gn.weights).all() and (gn.weights > 0).all()
    # Every gradient norm zero: nothing to balance, w stays 1.
    flat = GradNorm(2, [W])
    mtlopt.backward([W[0] * 0.0 + 1.0, W[1] * 0.0 + 2.0], flat)
    assert flat.weights.tolist() == [1.0, 1.0]
    # Every loss ratio zero (both losses reached 0): equal rates, no NaN.
    zero = GradNorm(2, [W], initial_losses=[1.0, 1.0])
    mtlopt.backward([W[0] - 1.0, W[1] - 2.0], zero)  # losses 0, gradient norms 1
    assert zero.weights.tolist() == [1.0, 1.0]


def test_gradnorm_through_backward_on_a_model():
    model, x, y = make_problem()
    gn = GradNorm(3, model.encoder.fc, optimizer="adam")
    params = list(model.parameters())
    for step in range(2):
        model.zero_grad()
        z = model.encoder(x)
        losses = model.losses(z, y)
        grads = per_task_gradients(losses, params)
        before = gn.weights.clone()
        result = mtlopt.backward(losses, gn)
        assert torch.equal(result.weights, before)
        if step == 0:
            assert before.tolist() == [1.0, 1.0, 1.0]
        w = result.weights.tolist()
        for i, p in enumerate(params):
            expected = sum(w[t] * grads[t][i] for t in range(3))
            torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=1e-15)
    assert model.encoder.forward_calls == 2
    assert not torch.equal(gn.weights, torch.ones(3, dtype=F64))


# ---------------------------------------------------------------------------------------------------
# PCGrad


def pcgrad_reference(J: np.ndarray, orders) -> np.ndarray:
    """Algorithm 1 of Yu et al. (2020) on the gradient vectors themselves: Σ_i g_i^PC."""
    projected = J.astype(np.float64).copy()
    for i in range(len(J)):
        for j in orders[i]:
            norm_sq = float(J[j] @ J[j])
            dot = float(projected[i] @ J[j])
            if dot < 0 and norm_sq > 0:
                projected[i] = projected[i] - dot / norm_sq * J[j]
    return projected.sum(axis=0)


def reference_orders(K, seed=0, order="shuffled", include_self=False, steps=1):
    """The documented draw: per step, for each i, torch.randperm over the candidates in index order."""
    generator = torch.Generator().manual_seed(seed)
    result = []
    for _ in range(steps):
        result = []
        for i in range(K):
            candidates = [j for j in range(K) if include_self or j != i]
            if order == "shuffled":
                candidates = [
                    candidates[p] for p in torch.randperm(len(candidates), generator=generator).tolist()
                ]
            result.append(candidates)
    return result


@st.composite
def jacobians(draw, min_tasks=2, max_tasks=6):
    """K gradients with shared and opposed components, zero and duplicated rows, scales 1e-6..1e6."""
    K = draw(st.integers(min_tasks, max_tasks))
    n = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    common = rng.standard_normal(n) * rng.uniform(-2.0, 2.0)
    J = (common + rng.standard_normal((K, n))) * 10.0 ** rng.uniform(-1.5, 1.5, size=(K, 1))
    for _ in range(draw(st.integers(0, 2))):
        J[rng.integers(K)] = 0.0
    for _ in range(draw(st.integers(0, 2))):
        J[rng.integers(K)] = J[rng.integers(K)] * rng.choice([-1.0, 1.0, 2.0])
    return J * 10.0 ** draw(st.floats(-6.0, 6.0))


COORDINATE = st.one_of(st.just(0.0), st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3))


def pcgrad_weights(G, **options):
    G = torch.as_tensor(G, dtype=F64)
    return PCGrad(**options)(G, torch.zeros(G.shape[0]))


@settings(max_examples=300)
@given(
    jacobians(),
    st.integers(0, 1000),
    st.sampled_from(["shuffled", "fixed"]),
    st.booleans(),
    st.sampled_from(["sum", "mean"]),
)
def test_pcgrad_weights_reproduce_the_vector_algorithm(J, seed, order, include_self, reduction):
    K = J.shape[0]
    w = pcgrad_weights(J @ J.T, seed=seed, order=order, include_self=include_self, reduction=reduction)
    expected = pcgrad_reference(J, reference_orders(K, seed, order, include_self))
    if reduction == "mean":
        expected = expected / K
    assert w.dtype == F64 and torch.isfinite(w).all()
    scale = float(np.linalg.norm(J, axis=1).max())
    np.testing.assert_allclose(w.numpy() @ J, expected, rtol=0, atol=1e-10 * scale)


@settings(max_examples=300)
@given(
    st.lists(COORDINATE, min_size=1, max_size=5).flatmap(
        lambda a: st.tuples(st.just(a), st.lists(COORDINATE, min_size=len(a), max_size=len(a)))
    ),
    st.floats(-6.0, 6.0),
)
def test_pcgrad_two_tasks_never_conflict_with_either_task(pair, exponent):
    J = np.array(pair, dtype=np.float64) * 10.0**exponent
    G = J @ J.T
    w = pcgrad_weights(G).numpy()
    d = w @ J
    norms_sq = np.diag(G)
    tol = 1e-12 * norms_sq.max()
    assert np.all(J @ d >= -tol)
    if G[0, 1] >= 0:  # no conflict: the plain sum
        assert w.tolist() == [1.0, 1.0]
    elif norms_sq.min() > 0:  # conflict: d·g_i = ‖g_i‖² − (g_1·g_2)²/‖g_j‖²
        expected = norms_sq - G[0, 1] ** 2 / norms_sq[::-1]
        np.testing.assert_allclose(J @ d, expected, rtol=0, atol=1e-9 * norms_sq.max())


@settings(max_examples=200)
@given(jacobians(), st.integers(-20, 20), st.integers(0, 2**32 - 1))
def test_pcgrad_scale_invariance_and_relabeling(J, power, perm_seed):
    K = J.shape[0]
    G = torch.from_numpy(J @ J.T)
    base = pcgrad_weights(G, order="fixed")
    # A common scale 2^power on the gradients (exact in floating point) does not change the weights.
    assert torch.equal(pcgrad_weights(G * 4.0**power, order="fixed"), base)
    # Relabeling the tasks, with each task's visiting order relabeled too, permutes the coefficients.
    perm = np.random.default_rng(perm_seed).permutation(K)
    orders = reference_orders(K, seed=perm_seed % 1000)
    inverse = np.argsort(perm)  # new label of old task k is inverse[k]
    relabeled_orders = [[int(inverse[j]) for j in orders[perm[i]]] for i in range(K)]
    pc = PCGrad()
    C = pc.coefficients(G, orders)
    C_perm = pc.coefficients(G[perm][:, perm], relabeled_orders)
    # (equal up to the summation order of the inner products)
    torch.testing.assert_close(C_perm, C[perm][:, perm], rtol=1e-9, atol=1e-9 * float(C.abs().max()))
    if K == 2:  # one other task: the order is irrelevant, swapping the tasks swaps the weights
        swapped = pcgrad_weights(G[[1, 0]][:, [1, 0]])
        assert swapped.tolist() == base.flip(0).tolist()


def test_pcgrad_zero_gradients_give_finite_weights():
    J = np.array([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.0]])
    for order in ("shuffled", "fixed"):
        w = pcgrad_weights(J @ J.T, order=order)
        assert torch.isfinite(w).all()
        assert w[0].item() == 1.0  # nothing projects on a zero gradient, and it projects on nothing
        np.testing.assert_allclose(w.numpy() @ J, pcgrad_reference(J, reference_orders(3, order=order)))
    assert pcgrad_weights(np.zeros((3, 3))).tolist() == [1.0, 1.0, 1.0]


def test_pcgrad_golden_values():
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]], dtype=F64)
    G = J @ J.T
    # By hand, index order: g1' = g1 + ½g2 + ½g3, g2' = g1 + g2 + g3, g3' = ½g2 + g3 (5 projections).
    result = PCGrad(order="fixed").compute(G, torch.zeros(3))
    assert result.weights.tolist() == [2.0, 2.0, 2.5]
    assert result.diagnostics["projections"] == 5
    assert PCGrad(order="fixed", reduction="mean")(G, torch.zeros(3)).tolist() == pytest.approx(
        [2 / 3, 2 / 3, 5 / 6]
    )
    assert PCGrad(seed=0)(G, torch.zeros(3)).tolist() == [2.5, 2.0, 2.5]
    J2 = torch.tensor([[3.0, 1.0, -2.0], [-1.0, 2.0, 1.0], [0.5, -3.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64)
    assert reference_orders(4, seed=7) == [[1, 2, 3], [2, 0, 3], [1, 3, 0], [2, 0, 1]]
    w = PCGrad(seed=7)(J2 @ J2.T, torch.zeros(4))
    expected = pcgrad_reference(J2.numpy(), reference_orders(4, seed=7))
    np.testing.assert_allclose(w.numpy() @ J2.numpy(), expected, rtol=0, atol=1e-14)
    assert w.tolist() == pytest.approx(GOLDEN_SEED_7, rel=1e-14)


# Exact rational arithmetic on the orders of seed 7 ([1, 2, 3], [2, 0, 3], [1, 3, 0], [2, 0, 1]).
GOLDEN_SEED_7 = [4121 / 2296, 29 / 12, 94 / 41, 1.0]


def test_pcgrad_state_dict_and_reset_reproduce_the_orders():
    rng = np.random.default_rng(0)
    J = rng.standard_normal((6, 4))
    G = torch.from_numpy(J @ J.T)
    losses = torch.zeros(6)
    a = PCGrad(seed=3)
    first = a(G, losses)
    a(G, losses)
    state = a.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    third = a(G, losses)
    b = PCGrad(seed=99)
    b.load_state_dict(torch.load(buffer))
    assert torch.equal(b(G, losses), third)
    assert not torch.equal(state["generator"], PCGrad(seed=3).generator.get_state())  # two draws later
    a.reset()
    assert torch.equal(a(G, losses), first)
    assert PCGrad(seed=0).orders(6) != PCGrad(seed=1).orders(6)
    assert PCGrad(order="fixed").orders(3) == [[1, 2], [0, 2], [0, 1]]
    with pytest.raises(ValueError, match="generator"):
        a.load_state_dict({})


@pytest.mark.parametrize("head_weighting", ["unweighted", "weighted"])
def test_pcgrad_through_backward_writes_the_projected_sum(head_weighting):
    model, x, y = make_problem(num_tasks=4, seed=1)
    z = model.encoder(x)
    losses = model.losses(z, y)
    shared = list(model.encoder.parameters())
    J = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in per_task_gradients(losses, shared)])
    heads = [
        per_task_gradients([losses[t]], list(head.parameters()))[0] for t, head in enumerate(model.heads)
    ]
    expected = pcgrad_reference(J.numpy(), reference_orders(4, seed=5))

    result = mtlopt.backward(
        losses, PCGrad(seed=5, head_weighting=head_weighting), shared_params=model.encoder
    )

    assert result.diagnostics["projections"] > 0  # the tasks do conflict here
    d = torch.cat([p.grad.reshape(-1) for p in shared])
    np.testing.assert_allclose(d.numpy(), expected, rtol=0, atol=1e-12 * float(J.norm(dim=1).max()))
    for t, head in enumerate(model.heads):
        c = 1.0 if head_weighting == "unweighted" else result.weights[t].item()
        for p, e in zip(head.parameters(), heads[t]):
            torch.testing.assert_close(p.grad, c * e, rtol=1e-12, atol=1e-15)


def test_pcgrad_on_every_parameter_is_the_full_vector_algorithm():
    model, x, y = make_problem(num_tasks=3, seed=2)
    losses = model.losses(model.encoder(x), y)
    params = [p for p in model.parameters() if p.requires_grad]
    J = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in per_task_gradients(losses, params)])
    expected = pcgrad_reference(J.numpy(), reference_orders(3, seed=0))
    mtlopt.backward(losses, PCGrad(), shared_params=model)
    d = torch.cat([p.grad.reshape(-1) for p in params])
    np.testing.assert_allclose(d.numpy(), expected, rtol=0, atol=1e-12 * float(J.norm(dim=1).max()))
