"""Shared checks of the G w = w^{-1/a} solvers (Nash-MTL: a = 1, FairGrad): an independent scipy solve,
degenerate Gramians for hypothesis, and the peer golden values."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from hypothesis import strategies as st

import mtlopt

GOLDEN = json.loads(Path(__file__).with_name("peer_golden_nash.json").read_text())


def relative_residual(G: np.ndarray, w: np.ndarray, a: float) -> float:
    """max_t |w_t^{1/a} (G w)_t − 1| over the tasks with a nonzero gradient (scale-free)."""
    keep = np.diag(G) > 0
    return float(np.max(np.abs(w[keep] ** (1.0 / a) * (G @ w)[keep] - 1.0)))


def scipy_solution(G: np.ndarray, a: float) -> np.ndarray:
    """An independent solve: scipy's trust-region Newton (``trust-exact``) on F(w) in log variables
    w = exp(x), where ∇_x F = w ∘ (G w) − w^{1−1/a} and stationarity is w^{1/a}(Gw) = 1; G divided by its
    mean diagonal first (w = m^{−a/(1+a)} u is an exact symmetry of the system)."""
    from scipy.optimize import minimize

    m = float(np.diag(G).mean())
    A = G / m
    e = 1.0 - 1.0 / a

    def f(x: np.ndarray) -> float:
        u = np.exp(x)
        h = x.sum() if a == 1.0 else (u**e).sum() / e
        return float(0.5 * u @ A @ u - h)

    def grad(x: np.ndarray) -> np.ndarray:
        u = np.exp(x)
        return u * (A @ u) - u**e

    def hess(x: np.ndarray) -> np.ndarray:
        u = np.exp(x)
        return np.outer(u, u) * A + np.diag(u * (A @ u) - e * u**e)

    x0 = -a / (1.0 + a) * np.log(np.diag(A))
    x = minimize(f, x0, jac=grad, hess=hess, method="trust-exact", options={"gtol": 1e-13}).x
    return np.exp(x) * m ** (-a / (1.0 + a))


def has_scipy() -> bool:
    return importlib.util.find_spec("scipy") is not None


@st.composite
def gramians(draw: st.DrawFn) -> np.ndarray:
    """K×K Gramians of K in 2..64 gradients: full or deficient rank, duplicated or zero rows, scales
    1e-8..1e8 (one global scale and a per-task spread)."""
    K = draw(st.integers(2, 64))
    rank = draw(st.sampled_from([K, max(1, K // 2), 1]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((K, rank)) @ rng.standard_normal((rank, K + 3))
    J *= np.exp(rng.uniform(-2, 2, size=(K, 1)))
    if draw(st.booleans()):
        J[-1] = J[0]  # a duplicated task
    if draw(st.booleans()):
        J[draw(st.integers(0, K - 1))] = 0.0  # a zero gradient
    scale = 10.0 ** draw(st.sampled_from([-8, -3, 0, 3, 8]))
    return (scale * J) @ (scale * J).T


def run_linear(method: mtlopt.GramianWeighting, jacobians: list) -> tuple[np.ndarray, np.ndarray]:
    """mtlopt.backward on L_t = J_s[t]·θ (∇L_t = J_s[t]) for each step s: the weights and θ.grad."""
    weights, grads = [], []
    for J in jacobians:
        J = torch.tensor(J, dtype=torch.float64)
        theta = torch.nn.Parameter(torch.zeros(J.shape[1], dtype=torch.float64))
        result = mtlopt.backward(list((J @ theta).unbind()), method, shared_params=[theta])
        weights.append(result.weights.numpy())
        grads.append(theta.grad.numpy().copy())
    return np.array(weights), np.array(grads)
