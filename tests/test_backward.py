"""mtlopt.backward: the gradients it writes, checked against autograd and an independent QP solve."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mtlopt
from models import make_problem
from reference import reference_min_norm

NORMALIZATIONS = ["none", "l2", "loss", "loss+"]


def reference_weights(per_task: torch.Tensor, losses: torch.Tensor, normalization: str) -> torch.Tensor:
    """α of the normalized min-norm problem, from the reference QP solver (not mtlopt)."""
    flat = per_task.reshape(per_task.shape[0], -1)
    norms = flat.norm(dim=1)
    divisor = {
        "none": torch.ones_like(norms),
        "l2": norms,
        "loss": losses,
        "loss+": losses * norms,
    }[normalization]
    normalized = flat / divisor[:, None]
    alpha, _ = reference_min_norm((normalized @ normalized.T).numpy())
    return torch.from_numpy(alpha)


def head_gradients(model, losses):
    return [
        torch.autograd.grad(losses[t], list(head.parameters()), retain_graph=True)
        for t, head in enumerate(model.heads)
    ]


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("head_weighting", ["unweighted", "weighted"])
@pytest.mark.parametrize("method", ["batched", "loop"])
def test_mgda_writes_the_min_norm_combination_of_shared_gradients(normalization, head_weighting, method):
    model, x, y = make_problem(dropout=0.3)
    z = model.encoder(x)
    losses = model.losses(z, y)
    shared = list(model.encoder.parameters())
    # References on the same graph (same dropout masks), with plain autograd.
    g = [torch.autograd.grad(loss, shared, retain_graph=True) for loss in losses]
    J = torch.stack([torch.cat([t.reshape(-1) for t in row]) for row in g])
    loss_values = torch.stack(losses).detach()
    alpha = reference_weights(J, loss_values, normalization)
    heads = head_gradients(model, losses)

    weighting = mtlopt.MGDA(normalization=normalization, head_weighting=head_weighting)
    result = mtlopt.backward(losses, weighting, shared_params=model.encoder, method=method)

    torch.testing.assert_close(result.weights, alpha, rtol=0, atol=1e-7)
    for i, p in enumerate(shared):  # Σ α_t g_t with the weights actually used
        expected = sum(result.weights[t].item() * g[t][i] for t in range(3))
        torch.testing.assert_close(p.grad, expected, rtol=1e-10, atol=1e-13)
    for t, head in enumerate(model.heads):
        c = 1.0 if head_weighting == "unweighted" else result.weights[t].item()
        for p, expected in zip(head.parameters(), heads[t]):
            torch.testing.assert_close(p.grad, c * expected, rtol=1e-10, atol=1e-13)
    assert model.encoder.forward_calls == 1


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("head_weighting", ["unweighted", "weighted"])
@pytest.mark.parametrize("feature_batch", ["flatten", "sum"])
def test_mgda_ub_writes_the_min_norm_combination_through_the_representation(
    normalization, head_weighting, feature_batch
):
    model, x, y = make_problem(dropout=0.3)
    z = model.encoder(x)
    losses = model.losses(z, y)
    shared = list(model.encoder.parameters())
    dz = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0] for loss in losses])
    per_task = dz if feature_batch == "flatten" else dz.sum(dim=1)
    alpha = reference_weights(per_task, torch.stack(losses).detach(), normalization)
    heads = head_gradients(model, losses)

    weighting = mtlopt.MGDA(
        normalization=normalization, head_weighting=head_weighting, feature_batch=feature_batch
    )
    result = mtlopt.backward(losses, weighting, features=z, retain_graph=True)

    torch.testing.assert_close(result.weights, alpha, rtol=0, atol=1e-7)
    flat = per_task.reshape(3, -1)
    torch.testing.assert_close(result.gramian, flat @ flat.T, rtol=1e-12, atol=1e-14)
    combined = torch.tensordot(result.weights, dz, dims=1)
    expected = torch.autograd.grad(z, shared, grad_outputs=combined, retain_graph=True)
    for p, e in zip(shared, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-13)
    for t, head in enumerate(model.heads):
        c = 1.0 if head_weighting == "unweighted" else result.weights[t].item()
        for p, e in zip(head.parameters(), heads[t]):
            torch.testing.assert_close(p.grad, c * e, rtol=1e-10, atol=1e-13)


def test_mgda_ub_direction_decreases_every_task_in_representation_space():
    model, x, y = make_problem(num_tasks=4, seed=3)
    z = model.encoder(x)
    losses = model.losses(z, y)
    dz = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses])
    result = mtlopt.backward(losses, mtlopt.MGDA(), features=z)
    d = result.weights @ dz
    scale = dz.norm(dim=1).max() ** 2
    # KKT identity: every task's gradient has ⟨g_t, d⟩ ≥ ‖d‖² ≥ 0 (so −d decreases every L_t in Z).
    assert torch.all(dz @ d >= d @ d - 1e-10 * scale)


def test_mgda_ub_runs_the_encoder_once_and_updates_batchnorm_once():
    model, x, y = make_problem()
    bn = model.encoder.bn
    with torch.no_grad():
        conv_out = model.encoder.conv(x)
    expected_mean = 0.9 * bn.running_mean + 0.1 * conv_out.mean(dim=(0, 2, 3))
    z = model.encoder(x)
    mtlopt.backward(model.losses(z, y), mtlopt.MGDA(), features=z)
    assert model.encoder.forward_calls == 1
    assert bn.num_batches_tracked.item() == 1
    torch.testing.assert_close(bn.running_mean, expected_mean, rtol=1e-12, atol=1e-14)


def test_ew_equals_an_ordinary_backward_of_the_mean_loss():
    model, x, y = make_problem()
    reference, _, _ = make_problem()
    z = model.encoder(x)
    result = mtlopt.backward(model.losses(z, y), mtlopt.EW())
    torch.stack(reference.losses(reference.encoder(x), y)).mean().backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-15)
    assert result.weights.tolist() == pytest.approx([1 / 3] * 3)
    assert result.gramian is None


def test_fixed_weights_equal_a_backward_of_the_weighted_sum():
    model, x, y = make_problem()
    reference, _, _ = make_problem()
    c = [0.2, 0.5, 0.3]
    mtlopt.backward(model.losses(model.encoder(x), y), mtlopt.FixedWeights(c))
    losses = reference.losses(reference.encoder(x), y)
    sum(ci * li for ci, li in zip(c, losses)).backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-15)


def test_weight_scale_num_tasks_multiplies_the_update_by_k():
    model, x, y = make_problem()
    z = model.encoder(x)
    one = mtlopt.backward(model.losses(z, y), mtlopt.MGDA(), features=z, retain_graph=True)
    grads_one = [p.grad.clone() for p in model.encoder.parameters()]
    model.zero_grad()
    k = mtlopt.backward(model.losses(z, y), mtlopt.MGDA(weight_scale="num-tasks"), features=z)
    assert k.weights.sum().item() == pytest.approx(3.0)
    torch.testing.assert_close(k.weights, 3 * one.weights)
    for p, g in zip(model.encoder.parameters(), grads_one):
        torch.testing.assert_close(p.grad, 3 * g, rtol=1e-10, atol=1e-14)


def test_batched_and_loop_methods_write_the_same_gradients():
    grads = {}
    for method in ("batched", "loop"):
        model, x, y = make_problem()
        mtlopt.backward(
            model.losses(model.encoder(x), y), mtlopt.MGDA(), shared_params=model.encoder, method=method
        )
        grads[method] = [p.grad for p in model.parameters()]
    for a, b in zip(grads["batched"], grads["loop"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_gradients_accumulate_like_autograd():
    model, x, y = make_problem()
    for _ in range(2):
        z = model.encoder(x)
        mtlopt.backward(model.losses(z, y), mtlopt.MGDA(), shared_params=model.encoder)
    twice = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    z = model.encoder(x)
    mtlopt.backward(model.losses(z, y), mtlopt.MGDA(), shared_params=model.encoder)
    for a, b in zip(twice, model.parameters()):
        torch.testing.assert_close(a, 2 * b.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_normalization_is_safe_when_a_loss_or_gradient_is_exactly_zero(normalization):
    w = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    losses = {
        "zero-loss": (w * 0.0).sum(),  # loss 0 and gradient 0
        "flat": (w.detach() * 0 + 1.0).sum() + 0.0 * w.sum(),  # loss 1, gradient 0
        "real": (w**2).sum(),
    }
    result = mtlopt.backward(losses, mtlopt.MGDA(normalization=normalization), shared_params=[w])
    assert torch.isfinite(result.weights).all()
    assert torch.isfinite(w.grad).all()
    assert result.weights.sum().item() == pytest.approx(1.0)


def test_loss_normalization_rejects_negative_losses_by_task():
    w = nn.Parameter(torch.ones(2))
    losses = {"a": (w**2).sum(), "b": -(w.sum())}
    with pytest.raises(ValueError, match=r"task\(s\) \[1\].*negative"):
        mtlopt.backward(losses, mtlopt.MGDA(normalization="loss"), shared_params=[w])


def test_losses_as_mapping_or_tensor_name_the_tasks():
    model, x, y = make_problem(num_tasks=2)
    z = model.encoder(x)
    named = dict(zip(["left", "right"], model.losses(z, y)))
    result = mtlopt.backward(named, mtlopt.MGDA(), features=z, retain_graph=True)
    assert set(result.weights_by_task()) == {"left", "right"}
    stacked = torch.stack(model.losses(z, y))
    assert mtlopt.backward(stacked, mtlopt.EW()).task_names == ["0", "1"]


def test_shared_parameters_the_losses_do_not_reach_are_reported():
    model, x, y = make_problem()
    extra = nn.Parameter(torch.ones(2, dtype=torch.float64))
    z = model.encoder(x)
    params = [*model.encoder.parameters(), extra]
    result = mtlopt.backward(model.losses(z, y), mtlopt.MGDA(), shared_params=params)
    assert result.diagnostics["unreached_shared_params"] == ["shared_params[6]"]
    assert extra.grad is None


# --- errors ---------------------------------------------------------------------------------------


class NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.nan)


def test_nan_loss_is_an_error_naming_the_task():
    model, x, y = make_problem(num_tasks=2)
    z = model.encoder(x)
    losses = dict(zip(["left", "right"], model.losses(z, y)))
    losses["right"] = losses["right"] * float("nan")
    for weighting, kwargs in ((mtlopt.EW(), {}), (mtlopt.MGDA(), {"features": z})):
        with pytest.raises(mtlopt.NonFiniteError, match="'right' \\(nan\\)"):
            mtlopt.backward(losses, weighting, **kwargs)


@pytest.mark.parametrize("mode", ["shared", "features"])
def test_nan_gradient_is_an_error_naming_the_task(mode):
    model, x, y = make_problem(num_tasks=2)
    z = model.encoder(x)
    left, right = model.losses(z, y)
    right = F.cross_entropy(model.heads[1](NaNGradient.apply(z)), y[:, 1])
    kwargs = {"shared_params": model.encoder} if mode == "shared" else {"features": z}
    with pytest.raises(mtlopt.NonFiniteError, match="task\\(s\\) 'right'"):
        mtlopt.backward({"left": left, "right": right}, mtlopt.MGDA(), **kwargs)


def test_nan_gradient_with_ew_is_an_error_naming_the_parameter():
    model, x, y = make_problem(num_tasks=2)
    z = NaNGradient.apply(model.encoder(x))
    with pytest.raises(mtlopt.NonFiniteError, match=r"conv\.weight"):
        mtlopt.backward(model.losses(z, y), mtlopt.EW(), shared_params=model.encoder)


def test_check_finite_false_skips_the_checks():
    model, x, y = make_problem(num_tasks=2)
    z = NaNGradient.apply(model.encoder(x))
    mtlopt.backward(model.losses(z, y), mtlopt.EW(), check_finite=False)
    assert torch.isnan(model.encoder.conv.weight.grad).all()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda m, z, L: mtlopt.backward(L, mtlopt.FixedWeights([1, 1, 1])),
            ValueError,
            "FixedWeights was set up for 3 tasks but got 2 losses",
        ),
        (
            lambda m, z, L: mtlopt.backward([L[0], z.sum(1)], mtlopt.EW()),
            ValueError,
            r"loss of task '1' has shape \(16,\), expected a scalar",
        ),
        (
            lambda m, z, L: mtlopt.backward(L[:1], mtlopt.MGDA(), features=z),
            ValueError,
            "MGDA needs at least 2 tasks, got 1",
        ),
        (lambda m, z, L: mtlopt.backward(L, mtlopt.MGDA()), ValueError, "exactly one of shared_params"),
        (
            lambda m, z, L: mtlopt.backward(L, mtlopt.MGDA(), shared_params=m.encoder, features=z),
            ValueError,
            "exactly one of shared_params",
        ),
        (
            lambda m, z, L: mtlopt.backward(
                L, mtlopt.MGDA(), shared_params=[m.encoder.fc.weight, torch.ones(2)]
            ),
            ValueError,
            r"shared_params\[1\] \(shape \(2,\)\) does not require grad",
        ),
        (
            lambda m, z, L: mtlopt.backward(L, mtlopt.MGDA(), features=z.detach()),
            ValueError,
            "features .* does not require grad",
        ),
        (
            lambda m, z, L: mtlopt.backward([L[0], torch.tensor(1.0)], mtlopt.EW()),
            ValueError,
            "loss of task '1' does not require grad",
        ),
        (lambda m, z, L: mtlopt.backward([], mtlopt.EW()), ValueError, "no losses given"),
        (lambda m, z, L: mtlopt.backward(L, mtlopt.MGDA(), features=[z]), TypeError, "features must be one"),
        (lambda m, z, L: mtlopt.backward([L[0], 3.0], mtlopt.EW()), TypeError, "loss of task '1' is a float"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    model, x, y = make_problem(num_tasks=2)
    z = model.encoder(x)
    with pytest.raises(error, match=message):
        call(model, z, model.losses(z, y))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"solver": "fw"}, "solver must be one of"),
        ({"normalization": "L2"}, "normalization must be one of"),
        ({"head_weighting": "alpha"}, "head_weighting must be one of"),
        ({"feature_batch": "mean"}, "feature_batch must be one of"),
        ({"weight_scale": 2}, "weight_scale must be one of"),
        ({"clip": (0.9, 0.1)}, "clip must satisfy"),
    ],
)
def test_bad_mgda_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mtlopt.MGDA(**kwargs)


def test_fixed_weights_validation():
    with pytest.raises(ValueError, match=r"weight 1 is -0\.5"):
        mtlopt.FixedWeights([1.0, -0.5])
    with pytest.raises(ValueError, match="all weights are 0"):
        mtlopt.FixedWeights([0.0, 0.0])
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum'"):
        mtlopt.EW("max")  # type: ignore[arg-type]


def test_mgda_golden_weights_on_a_fixed_jacobian():
    """Golden values: MGDA weights for one fixed 3×4 Jacobian, for each option that changes them."""
    J = torch.tensor(
        [[1.0, 0.5, -0.2, 0.0], [0.3, -1.0, 0.4, 0.2], [-0.5, 0.2, 1.5, -0.3]], dtype=torch.float64
    )
    G = J @ J.T
    losses = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    golden = {
        "none": [0.4514887545526228, 0.32450343558742906, 0.22400780985994823],
        "l2": [0.39839660944855426, 0.26460178957756725, 0.33700160097387855],
        "loss": [0.7750505982480627, 0.06427917668058247, 0.16067022507135492],
        "loss+": [0.7040191933374148, 0.05535876839183904, 0.24062203827074613],
    }
    for normalization, expected in golden.items():
        weights = mtlopt.MGDA(normalization=normalization)(G, losses)
        np.testing.assert_allclose(weights.numpy(), expected, atol=1e-12)
