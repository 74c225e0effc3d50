"""GradNorm: its update against autograd on the GradNorm loss, golden values, state, guards, the model update."""

from __future__ import annotations

import io

import pytest
import torch
from cases import per_task_gradients
from torch import nn
from torch.nn import functional as F

import mtlopt
from models import make_problem
from mtlopt.weighting.gradnorm import GradNorm

F64 = torch.float64


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
