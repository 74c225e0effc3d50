"""SDMGrad-OS (``SDMGrad(objectives=n)``): the official code's objective sampling, the sampled-tasks
path of mtlopt.backward, resume and the one-line errors.

Reference: an independent transcription of the official ``mtrl_files/sdmgrad.py::sdmgrad_os`` rule
(its torch SGD on the objective, a bisection projection), fed the same draws; the per-task Jacobians
from plain autograd; the draw frequencies against the rule's closed form.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_modo_sdmgrad import Net, jacobian, simplex_by_bisection

import mtlopt

F64 = torch.float64


def draws(seed: int, K: int, n: int, steps: int) -> list[list[int]]:
    """The official rule's tasks per step: each with probability n/K, redrawn while none is drawn."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        while True:
            drawn = (torch.rand(K, generator=g, dtype=F64) < n / K).nonzero().flatten().tolist()
            if drawn:
                out.append(drawn)
                break
    return out


def official_os(
    gramians: list[torch.Tensor], drawn: list[list[int]], n: int, lam: float
) -> list[torch.Tensor]:
    """The official sdmgrad_os coefficients per step: zero rows for the tasks not drawn, A scaled by
    mean √(diag + 1e-4), 20 steps of torch SGD (lr 10, momentum 0.5) on ½wᵀAw + λwᵀĀ + ½λ²ā with a
    simplex projection after each, then c = (K/n)(w + λ/K)/(1 + λ) on the drawn tasks."""
    K = gramians[0].shape[0]
    w = torch.full((K,), 1.0 / K, dtype=F64)
    out = []
    for G, S in zip(gramians, drawn, strict=True):
        mask = torch.zeros(K, dtype=F64)
        mask[S] = 1.0
        A = G * mask[:, None] * mask[None, :]
        A = A / (A.diagonal() + 1e-4).sqrt().mean() ** 2
        row_mean = A.mean(dim=1)
        w = w.clone().requires_grad_(True)
        opt = torch.optim.SGD([w], lr=10, momentum=0.5)
        for _ in range(20):
            opt.zero_grad()
            obj = 0.5 * w @ A @ w + lam * w @ row_mean + 0.5 * lam**2 * row_mean.mean()
            obj.backward()
            opt.step()
            with torch.no_grad():
                w.copy_(simplex_by_bisection(w.detach()))
        w = w.detach()
        out.append((K / n) * (w + lam / K) / (1 + lam) * mask)
    return out


def gramians(K: int, steps: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        J = torch.randn(K, 9, generator=g, dtype=F64) * torch.logspace(-1, 1, K, dtype=F64)[:, None]
        out.append(J @ J.T)
    return out


@pytest.mark.parametrize(("K", "n"), [(10, 4), (5, 1), (3, 2)])
def test_the_weights_are_the_official_os_rule_on_the_same_draws(K, n):
    Gs = gramians(K, 6)
    method = mtlopt.SDMGrad(objectives=n, seed=7, scale="official")
    outputs = [method.compute(G, torch.ones(K, dtype=F64)) for G in Gs]
    expected = official_os(Gs, draws(7, K, n, 6), n, 0.3)
    for out, c, S in zip(outputs, expected, draws(7, K, n, 6), strict=True):
        assert out.diagnostics["sampled_tasks"] == S
        torch.testing.assert_close(out.weights, c, rtol=1e-9, atol=1e-12)
        assert bool((out.weights[[t for t in range(K) if t not in S]] == 0).all())
    assert method.weight_sum == "data-dependent" and mtlopt.SDMGrad().weight_sum == "1"


def test_with_every_task_drawn_it_is_sdmgrad_exactly():
    Gs = gramians(4, 5)
    full, sampled = mtlopt.SDMGrad(), mtlopt.SDMGrad(objectives=4)
    for G in Gs:
        a, b = full.compute(G, torch.ones(4, dtype=F64)), sampled.compute(G, torch.ones(4, dtype=F64))
        torch.testing.assert_close(b.weights, a.weights, rtol=0, atol=0)
        assert b.diagnostics["sampled_tasks"] == [0, 1, 2, 3]


def test_each_task_is_drawn_with_the_rules_frequency():
    """P(t ∈ S) = (n/K) / (1 − (1 − n/K)^K) under the redraw of an empty S."""
    K, n, steps = 10, 2, 4000
    method = mtlopt.SDMGrad(objectives=n, seed=3)
    counts = torch.zeros(K)
    for _ in range(steps):
        counts[method.sampled_tasks(K)] += 1
    p = (n / K) / (1 - (1 - n / K) ** K)
    sigma = math.sqrt(p * (1 - p) / steps)
    assert bool(((counts / steps - p).abs() < 4 * sigma).all()), (counts / steps).tolist()


def test_backward_differentiates_only_the_drawn_tasks_and_writes_the_full_paths_step():
    """The cross-Gramian's batches are differentiated for the drawn tasks only (counted by hooks on
    their losses); the .grad is Jᵀc with c from a twin method given the full J₁J₂ᵀ (it masks it
    itself), so the step is the same whether or not the gradients of the others are computed."""
    net = Net()
    method = mtlopt.SDMGrad(objectives=1, seed=11)
    twin = copy.deepcopy(method)
    for _ in range(4):
        net.zero_grad(set_to_none=True)
        batches = [net.losses(b) for b in range(3)]
        calls = [[0, 0, 0] for _ in range(3)]
        for b in (1, 2):
            for t, loss in enumerate(batches[b]):
                loss.register_hook(lambda grad, row=calls[b], t=t: row.__setitem__(t, row[t] + 1))
        result = mtlopt.backward(
            batches[0], method, shared_params=net.encoder, extra_losses=batches[1:], method="loop"
        )
        S = result.diagnostics["sampled_tasks"]
        assert calls[1] == calls[2] == [int(t in S) for t in range(3)]
        J = {b: jacobian(net, b) for b in range(3)}
        A = J[1] @ J[2].T
        expected = twin.compute(A, torch.zeros(3, dtype=F64))
        assert expected.diagnostics["sampled_tasks"] == S
        torch.testing.assert_close(result.weights, expected.weights, rtol=1e-12, atol=1e-15)
        mask = torch.zeros(3, dtype=F64)
        mask[S] = 1.0
        torch.testing.assert_close(result.gramian, A * mask[:, None] * mask[None, :], rtol=1e-12, atol=1e-14)
        shared = torch.cat([p.grad.reshape(-1) for p in net.encoder.parameters()])
        torch.testing.assert_close(shared, J[0].T @ expected.weights, rtol=1e-12, atol=1e-14)
        assert result.diagnostics["weight_sum"] == pytest.approx(float(expected.weights.sum()))


def test_state_resumes_the_draws_and_reset_restarts_them():
    Gs = gramians(6, 8)
    a = mtlopt.SDMGrad(objectives=2, seed=5)
    for G in Gs[:3]:
        a.compute(G, torch.ones(6, dtype=F64))
    saved = copy.deepcopy(a.state_dict())
    assert set(saved) == {"w", "step", "seed", "generator"}
    b = mtlopt.SDMGrad(objectives=2, seed=99)
    b.load_state_dict(saved)
    for G in Gs[3:]:
        x, y = a.compute(G, torch.ones(6, dtype=F64)), b.compute(G, torch.ones(6, dtype=F64))
        assert x.diagnostics["sampled_tasks"] == y.diagnostics["sampled_tasks"]
        torch.testing.assert_close(x.weights, y.weights, rtol=0, atol=0)
    a.reset()
    fresh = mtlopt.SDMGrad(objectives=2, seed=5)
    for G in Gs[:3]:
        torch.testing.assert_close(
            a.compute(G, torch.ones(6, dtype=F64)).weights, fresh.compute(G, torch.ones(6, dtype=F64)).weights
        )
    with pytest.raises(KeyError, match=r"expects the keys \['generator', 'seed', 'step', 'w'\]"):
        fresh.load_state_dict(mtlopt.SDMGrad().state_dict())


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_a_bad_objectives_is_a_one_line_error(bad):
    with pytest.raises(ValueError, match=r"SDMGrad objectives must be None or an integer >= 1, got "):
        mtlopt.SDMGrad(objectives=bad)


def test_more_objectives_than_tasks_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"SDMGrad objectives must be at most the number of tasks 3, got 5"):
        mtlopt.SDMGrad(objectives=5).compute(torch.eye(3, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match=r"SDMGrad seed must be an int >= 0, got -1"):
        mtlopt.SDMGrad(objectives=1, seed=-1)
