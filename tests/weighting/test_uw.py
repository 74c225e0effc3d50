"""Uncertainty weighting: the closed-form gradients, golden values, LibMTL's convention, the stationary point, state."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from cases import per_task_gradients, scalar_losses, set_log_variances
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mtlopt
from models import make_problem
from mtlopt.weighting.uw import UncertaintyWeighting

F64 = torch.float64


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
