"""Per-task gradients: Jacobian, representation Jacobian and Gramian against plain autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import make_problem
from mtlopt import feature_jacobian, gramian, jacobian
from mtlopt.gradients import choose_method, graph_has_slow_vmap_ops, jacobian_blocks


def per_task_gradients(losses, params):
    """Row t: the gradient of loss t, one autograd.grad call per task (zeros where unused)."""
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])
        )
    return torch.stack(rows)


@pytest.mark.parametrize("method", ["auto", "batched", "loop"])
def test_jacobian_rows_are_the_task_gradients(method: str) -> None:
    model, x, y = make_problem()
    losses = model.losses(model.encoder(x), y)
    params = list(model.encoder.parameters())
    expected = per_task_gradients(losses, params)
    J = jacobian(losses, params, method=method)
    assert J.shape == (3, sum(p.numel() for p in params))
    torch.testing.assert_close(J, expected, rtol=1e-12, atol=1e-14)


def test_jacobian_of_an_unused_parameter_is_zero() -> None:
    model, x, y = make_problem()
    z = model.encoder(x)
    losses = model.losses(z, y)
    head0 = list(model.heads[0].parameters())
    J = jacobian(losses, head0, method="batched")
    assert torch.count_nonzero(J[1:]) == 0  # tasks 1 and 2 do not use head 0
    assert torch.count_nonzero(J[0]) > 0


@pytest.mark.parametrize("method", ["batched", "loop"])
def test_feature_jacobian_differentiates_only_the_heads(method: str) -> None:
    model, x, y = make_problem()
    z = model.encoder(x)
    losses = model.losses(z, y)
    calls = []
    hooks = [p.register_hook(lambda g: calls.append(1)) for p in model.encoder.parameters()]
    Jz = feature_jacobian(losses, z, method=method)
    for hook in hooks:
        hook.remove()
    assert Jz.shape == (3, *z.shape)
    assert not calls, "the encoder was differentiated"
    assert model.encoder.forward_calls == 1
    for t, loss in enumerate(losses):
        (expected,) = torch.autograd.grad(loss, z, retain_graph=True)
        torch.testing.assert_close(Jz[t], expected, rtol=1e-12, atol=1e-14)


def test_gramian_of_blocks_equals_gramian_of_the_concatenated_jacobian() -> None:
    model, x, y = make_problem()
    losses = torch.stack(model.losses(model.encoder(x), y))
    params = list(model.encoder.parameters())
    blocks = jacobian_blocks(losses, params)
    J = torch.cat([b.reshape(3, -1) for b in blocks], dim=1)
    torch.testing.assert_close(gramian(blocks), J @ J.T, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gramian(J), J @ J.T, rtol=1e-12, atol=1e-14)


def test_auto_method_uses_the_loop_for_convolutions_only() -> None:
    model, x, y = make_problem()
    z = model.encoder(x)
    losses = torch.stack(model.losses(z, y))
    assert graph_has_slow_vmap_ops(losses, list(model.encoder.parameters()))
    assert not graph_has_slow_vmap_ops(losses, [z])  # heads only: linear layers
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    out = mlp(torch.randn(5, 4))
    assert not graph_has_slow_vmap_ops(out.pow(2).mean(0), list(mlp.parameters()))


def test_auto_method_follows_the_graph_structure() -> None:
    model, x, y = make_problem()
    z = model.encoder(x)
    separate_heads = model.losses(z, y)
    assert choose_method(separate_heads, list(model.encoder.parameters())) == "loop"  # convolution
    assert choose_method(separate_heads, [z]) == "loop"  # disjoint heads: K² head passes if batched
    shared_head = nn.Linear(12, 3).double()
    out = shared_head(z)
    one_head = [out[:, t].pow(2).mean() for t in range(3)]  # every task runs through the same head
    assert choose_method(one_head, [z]) == "batched"
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    hidden = mlp(torch.randn(5, 4))
    assert choose_method([hidden[:, 0].mean(), hidden[:, 1].mean()], list(mlp.parameters())) == "batched"
    assert choose_method(separate_heads[:1], [z]) == "loop"  # one task: nothing to batch


def test_inputs_that_do_not_require_grad_are_named() -> None:
    model, x, y = make_problem()
    losses = model.losses(model.encoder(x), y)
    frozen = torch.zeros(3)
    with pytest.raises(ValueError, match=r"params\[1\] \(shape \(3,\)\) does not require grad"):
        jacobian(losses, [model.encoder.conv.weight, frozen])
    with pytest.raises(ValueError, match="unknown Jacobian method 'vmap'"):
        jacobian(losses, model.encoder.parameters(), method="vmap")  # type: ignore[arg-type]
