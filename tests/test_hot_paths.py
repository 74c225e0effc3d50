"""The fast paths give the results of the plain ones.

- MGDA-UB: the one-pass path (hooks collect each task's gradient w.r.t. Z while the heads are
  differentiated; the weights are computed before the encoder runs) and the head-pass path equal the
  K-backward-pass loop, for every option;
- the loop Jacobian is one (K, P) matrix whose per-parameter blocks are views;
- the active-set solver's dense start reaches the optimum the one-vertex start reaches;
- PCGrad's vectorized recursion equals the per-task recursion;
- the fused finiteness check finds NaN and inf and changes no value.
"""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mtlopt
from mtlopt._checks import all_finite
from mtlopt._graph import plan_head_pass
from mtlopt.gradients import Jacobian, jacobian_blocks
from mtlopt.min_norm import _active_set

backward_module = importlib.import_module("mtlopt.backward")


class Heads(nn.Module):
    """An encoder and K two-layer heads (each task reaches Z through its own nodes)."""

    def __init__(self, num_tasks: int = 3) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh())
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)) for _ in range(num_tasks)
        )


def forward(model: Heads, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    z = model.encoder(x)
    return z, [F.cross_entropy(head(z), y[:, t]) for t, head in enumerate(model.heads)]


def grads_after(model: Heads, method: str, weighting: mtlopt.MGDA, x, y) -> tuple[list, torch.Tensor]:
    model = copy.deepcopy(model)
    z, losses = forward(model, x, y)
    result = mtlopt.backward(losses, weighting, features=z, method=method)
    return [p.grad for p in model.parameters()], result.weights


@pytest.mark.parametrize(
    "options",
    [{}, {"head_weighting": "weighted"}, {"feature_batch": "sum"}, {"normalization": "loss+"}],
)
def test_mgda_ub_fast_paths_equal_the_loop(options):
    torch.manual_seed(0)
    model = Heads(3)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16, 3))
    fast, w_fast = grads_after(model, "auto", mtlopt.MGDA(**options), x, y)
    loop, w_loop = grads_after(model, "loop", mtlopt.MGDA(**options), x, y)
    assert torch.allclose(w_fast, w_loop, atol=1e-12)
    for a, b in zip(fast, loop):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_mgda_ub_takes_one_backward_pass(monkeypatch):
    torch.manual_seed(1)
    model = Heads(4)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8, 4))
    calls = {"backward": 0, "grad": 0}
    real_backward, real_grad = torch.autograd.backward, torch.autograd.grad

    def counting_backward(*args, **kwargs):
        calls["backward"] += 1
        return real_backward(*args, **kwargs)

    def counting_grad(*args, **kwargs):
        calls["grad"] += 1
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "backward", counting_backward)
    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    z, losses = forward(model, x, y)
    result = mtlopt.backward(losses, mtlopt.MGDA(), features=z)
    assert calls == {"backward": 1, "grad": 0}  # EW's single pass; no per-task pass
    assert result.gramian is not None and abs(float(result.weights.sum()) - 1) < 1e-12


def test_mgda_ub_falls_back_when_tasks_share_a_head():
    torch.manual_seed(2)
    encoder, head = nn.Linear(5, 4), nn.Linear(4, 3)  # one head, one output per task
    x = torch.randn(10, 5)
    z = encoder(x).tanh()
    out = head(z)
    losses = [out[:, t].pow(2).mean() for t in range(3)]
    assert plan_head_pass(losses, z, per_task_heads=False) is None
    J = mtlopt.feature_jacobian(losses, z)
    result = mtlopt.backward(losses, mtlopt.MGDA(), features=z)
    assert torch.allclose(result.gramian, mtlopt.gramian(J).double(), rtol=1e-6)


def test_mgda_ub_one_pass_names_the_task_with_a_non_finite_gradient():
    torch.manual_seed(3)
    model = Heads(3)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8, 3))
    z = model.encoder(x)
    losses = [F.cross_entropy(head(z), y[:, t]) for t, head in enumerate(model.heads)]
    losses[1] = losses[1] + 0.0 * torch.sqrt(z - z).sum()  # finite loss, infinite gradient (0 · ∞ = NaN)
    with pytest.raises(mtlopt.NonFiniteError, match="task\\(s\\) '1' w.r.t. the features"):
        mtlopt.backward(losses, mtlopt.MGDA(), features=z)


def test_mgda_ub_with_leaf_features_and_a_task_without_them():
    torch.manual_seed(4)
    z = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(4, 1, requires_grad=True)
    c = torch.randn((), requires_grad=True)

    def losses():
        return [(z @ w).pow(2).mean(), (z * z).mean() + z.sum() * 0.1, c.pow(2)]  # task 2 ignores z

    result = mtlopt.backward(losses(), mtlopt.MGDA(), features=z)
    grads = [t.grad.clone() for t in (z, w, c)]
    for t in (z, w, c):
        t.grad = None
    reference = mtlopt.backward(losses(), mtlopt.MGDA(), features=z, method="loop")
    assert torch.allclose(result.weights, reference.weights)
    for a, t in zip(grads, (z, w, c)):
        torch.testing.assert_close(a, t.grad)


def test_loop_jacobian_is_one_matrix_with_views_as_blocks():
    torch.manual_seed(5)
    model = Heads(3)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8, 3))
    params = list(model.encoder.parameters())
    _, losses = forward(model, x, y)
    jac = Jacobian.compute(losses, params, method="loop")
    matrix, blocks = jac.matrix(), jac.blocks
    assert matrix is not None and matrix.shape == (3, sum(p.numel() for p in params))
    for block, p in zip(blocks, params):
        assert block.shape == (3, *p.shape)
        assert block.untyped_storage().data_ptr() == matrix.untyped_storage().data_ptr()
    batched = jacobian_blocks(losses, params, method="batched")
    for a, b in zip(blocks, batched):
        torch.testing.assert_close(a, b)
    assert torch.equal(mtlopt.jacobian(losses, params, method="loop"), matrix)


def test_exact_mgda_writes_the_combination_of_the_matrix_rows():
    torch.manual_seed(6)
    model = Heads(3)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8, 3))
    grads = {}
    for method in ("loop", "batched"):
        copy_ = copy.deepcopy(model)
        _, losses = forward(copy_, x, y)
        result = mtlopt.backward(losses, mtlopt.MGDA(), shared_params=copy_.encoder, method=method)
        grads[method] = ([p.grad.clone() for p in copy_.parameters()], result.weights)
    assert torch.allclose(grads["loop"][1], grads["batched"][1], atol=1e-9)
    for a, b in zip(grads["loop"][0], grads["batched"][0]):
        torch.testing.assert_close(a, b)


def dense_and_sparse_gramians() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(4):
        J = rng.normal(size=(30, 400)) + 0.5  # most tasks active at the optimum
        out.append(J @ J.T)
        J = rng.normal(size=(30, 4)) + 2.0  # a few active
        out.append(J @ J.T)
        J = rng.normal(size=(20, 60))
        J[1] = J[0]  # duplicated task: singular Gramian
        out.append(J @ J.T)
    return out


def cold_active_set(G: np.ndarray) -> np.ndarray:
    """Wolfe's start only (the dense start disabled)."""
    module = importlib.import_module("mtlopt.min_norm")
    original = module._DENSE_START_ROUNDS
    module._DENSE_START_ROUNDS = 0
    try:
        return mtlopt.min_norm(G, solver="active-set").weights.numpy()
    finally:
        module._DENSE_START_ROUNDS = original


@pytest.mark.parametrize("index", range(12))
def test_dense_start_reaches_the_optimum_of_the_vertex_start(index):
    G = dense_and_sparse_gramians()[index]
    result = mtlopt.min_norm(G, solver="active-set")
    cold = cold_active_set(G)
    f, f_cold = result.objective, float(cold @ G @ cold)
    assert f <= f_cold * (1 + 1e-10) + 1e-14 * np.max(np.diag(G))
    assert result.kkt_residual < 1e-9


def test_dense_start_needs_few_iterations_when_most_tasks_are_active():
    rng = np.random.default_rng(8)
    J = rng.normal(size=(40, 1000)) + 0.5
    G = J @ J.T
    alpha, iterations, converged = _active_set(G, 1e-12, 1000)
    assert converged and iterations <= 3 and (alpha > 0).sum() > 20


@pytest.mark.parametrize("include_self", [False, True])
def test_pcgrad_vectorized_recursion_equals_algorithm_1(include_self):
    rng = np.random.default_rng(9)
    K = 12
    J = rng.normal(size=(K, 30))
    J[3] = 0.0  # a zero gradient: never projected on
    weighting = mtlopt.PCGrad(seed=4, include_self=include_self)
    orders = weighting.orders(K)
    weights = weighting.coefficients(torch.from_numpy(J @ J.T), orders).sum(dim=0).numpy()
    # Algorithm 1 on the gradients themselves.
    total = np.zeros(J.shape[1])
    for i in range(K):
        g = J[i].copy()
        for j in orders[i]:
            norm = J[j] @ J[j]
            if norm > 0 and g @ J[j] < 0:
                g -= (g @ J[j]) / norm * J[j]
        total += g
    np.testing.assert_allclose(weights @ J, total, rtol=1e-10, atol=1e-10)


def test_all_finite_detects_and_preserves():
    tensors = [
        torch.tensor([1.0, -0.0, 3e38]),
        torch.randn(3, 4, dtype=torch.float64),
        torch.ones(2).bfloat16(),
    ]
    before = [t.clone() for t in tensors]
    assert all_finite(tensors)
    for a, b in zip(tensors, before):
        assert torch.equal(a, b) and torch.equal(a.sign(), b.sign())  # -0.0 stays -0.0
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = [t.clone() for t in tensors]
        broken[1][2, 3] = bad
        assert not all_finite(broken)


def test_mgda_ub_when_no_task_reaches_the_features():
    """Z's node never runs (the one-pass hook cannot fire): the fast path and the loop refuse it alike."""
    for method in ("auto", "loop"):
        torch.manual_seed(10)
        encoder = nn.Linear(3, 2)
        z = encoder(torch.randn(4, 3)).tanh()
        a, b = torch.randn((), requires_grad=True), torch.randn((), requires_grad=True)
        losses = [a.pow(2), b.pow(2) + 0.0 * encoder.weight.sum()]  # the encoder's weight as a "head"
        with pytest.raises(ValueError, match="no loss reaches features="):
            mtlopt.backward(losses, mtlopt.MGDA(), features=z, method=method)
        assert a.grad is None and b.grad is None and encoder.weight.grad is None
