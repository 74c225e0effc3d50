"""The total weight each method's default update puts on the tasks, measured on K identical tasks.

Every task's loss is the same function f(θ), so the shared update is c·∇f and c is the total weight.
The docs table (docs/conventions.md) lists every method's convention; it must agree with the
method's ``weight_sum`` and with what is measured here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from cases import BUILDERS
from torch import nn

import mtlopt

F64 = torch.float64
DOCS = Path(__file__).parents[2] / "docs" / "conventions.md"


def identical_tasks(K: int, batches: int = 1):
    theta = nn.Parameter(torch.tensor([0.3, -1.2, 0.7, 2.0, -0.4], dtype=F64))
    A = torch.arange(15, dtype=F64).reshape(3, 5).sin()

    def loss():
        return 0.5 * (A @ theta - 1.0).pow(2).sum() + 1.0

    (g,) = torch.autograd.grad(loss(), theta)
    return theta, [[loss() for _ in range(K)] for _ in range(batches)], g


def measured_total(name: str, K: int, **backward_options) -> tuple[float, mtlopt.BackwardResult]:
    """The total on identical tasks (and, for a method that reads several batches per step, identical
    batches: each its own forward pass of the same function)."""
    batches = BUILDERS[name][0](K).batches_per_step
    theta, (losses, *extra), g = identical_tasks(K, batches)
    method = BUILDERS[name][0](K, [theta])
    where = (
        {}
        if isinstance(method, mtlopt.LossWeighting) or getattr(method, "probe", None)
        else {"shared_params": [theta]}
    )
    if extra:
        where["extra_losses"] = extra
    result = mtlopt.backward(losses, method, **where, **backward_options)
    total = float(theta.grad @ g / (g @ g))
    torch.testing.assert_close(theta.grad, total * g, rtol=1e-10, atol=1e-12)  # the update is along ∇f
    return total, result


def on_gradients(method: mtlopt.Method) -> bool:
    """Whether the reported weights are those of the current gradients (not so for MoCo, DB-MTL)."""
    return not isinstance(method, mtlopt.DirectionMethod) or method.weights_on_gradients


def expected_total(method: mtlopt.Method, K: int) -> float | None:
    return {"1": 1.0, "K": float(K), "sum of the weights": None, "data-dependent": None}[method.weight_sum]


@pytest.mark.parametrize("K", [2, 4])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_the_total_weight_on_identical_tasks_is_the_documented_one(name, K):
    total, result = measured_total(name, K)
    method = BUILDERS[name][0](K)
    expected = expected_total(method, K)
    if method.weight_sum == "sum of the weights":
        expected = sum(method.weights)
    if expected is not None:
        assert total == pytest.approx(expected, rel=1e-10)
    if not on_gradients(method):  # the weights of the method's own vectors
        total = float(result.weights.sum())
    assert result.diagnostics["weight_sum"] == pytest.approx(total, rel=1e-10)
    assert float(result.weights.sum()) == pytest.approx(total, rel=1e-10)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_weight_total_rescales_every_method_to_one_common_total(name):
    total, result = measured_total(name, 3, weight_total=1.0)
    assert float(result.weights.abs().sum()) == pytest.approx(1.0, rel=1e-10)
    if not on_gradients(BUILDERS[name][0](3)):  # d rescaled with the weights of its own vectors
        plain, unscaled = measured_total(name, 3)
        assert total == pytest.approx(plain / float(unscaled.weights.sum()), rel=1e-10)
    elif bool((result.weights >= 0).all()):  # else (Pareto MTL's warm-up here) the signed total is smaller
        assert total == pytest.approx(1.0, rel=1e-10)
        assert result.diagnostics["weight_sum"] == pytest.approx(1.0, rel=1e-10)


def documented_conventions() -> dict[str, tuple[str, str]]:
    """method class → (convention, value on K identical tasks) from the docs table."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\|\s*`(\w+)`\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def test_the_docs_table_lists_every_method_with_its_convention_and_measured_total():
    rows = documented_conventions()
    assert sorted(rows) == sorted(BUILDERS)
    for name, (convention, on_identical) in rows.items():
        method = BUILDERS[name][0](4)
        assert convention == method.weight_sum, name
        total, _ = measured_total(name, 4)
        shown = on_identical.replace("K = 4: ", "")
        assert float(shown) == pytest.approx(total, rel=1e-3), name
