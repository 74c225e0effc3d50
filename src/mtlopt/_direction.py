r"""The path of :func:`mtlopt.backward` for a :class:`~mtlopt.weighting.DirectionMethod`.

The K×P Jacobian w.r.t. the shared parameters (the machinery of :mod:`mtlopt.gradients`), averaged
across ranks (every rank's method then holds the same state), unscaled (a ``GradScaler``) and
promoted to at least float32, then the method's direction d written into ``.grad`` of the shared
parameters and one backward pass through the heads with the coefficients ``head_weighting`` says.

- ``weight_total``: d and the head coefficients are multiplied by ``weight_total / Σ_t |w_t|``,
  w the method's reported weights (the rule of the other paths; DB-MTL reports ones, so its d is
  divided by K / weight_total).
- ``GradScaler``: J of the scaled losses is unscaled before the method sees it; d is written scaled
  again (``.grad`` stays scaled for ``scaler.step``). Non-finite J → NaN ``.grad`` and the method is
  not called (its state does not move): the scaler skips the step.
- ``check_finite``: non-finite J raises :class:`mtlopt.NonFiniteError` naming the tasks.

A method that ``reads="features"`` (GradDrop) gets instead the per-task gradients w.r.t. the
representation Z, shape (K, *Z.shape) (K backward passes through the heads, the encoder not
entered), unscaled, with Z and a ``reduce`` that averages its batch statistics across ranks; its
gradient for Z then replaces Z's in one backward pass of :math:`\sum_t c_t L_t` (the heads' coefficients
as above), so the encoder runs backward once. A non-finite row on any rank makes every rank skip or
raise (the flags are summed across ranks first).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ._checks import all_finite, as_tensors
from ._graph import leaves
from ._task_step import all_reduce_jacobian, usable_step
from .distributed import all_reduce_mean_, all_reduce_sum_, grads_of
from .errors import NonFiniteError
from .gradients import Jacobian, choose_method
from .weighting._base import DirectionMethod, DirectionOutput, _weights64

if TYPE_CHECKING:
    from .backward import BackwardResult, _Context

__all__ = ["direction_backward", "working_dtype"]


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a direction method computes in: the model's, at least float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def direction_backward(
    ctx: _Context,
    shared: list[Tensor],
    shared_names: list[str],
    head_params: Iterable[Tensor] | None,
    features: Tensor | None,
) -> BackwardResult:
    """Write the direction of ``ctx.weighting`` into the shared parameters' ``.grad`` and the heads'."""
    method = ctx.weighting
    assert isinstance(method, DirectionMethod)
    who = type(method).__name__
    if method.reads == "features":
        if features is None:
            raise ValueError(
                f"{who} reads the per-task gradients w.r.t. the shared representation: pass features=... "
                "(the encoder's output), or build it with level='parameters' for shared_params=..."
            )
        return _features_direction(ctx, method, features)
    if features is not None:
        raise ValueError(
            f"{who} reads the Jacobian of the shared parameters (its state is per parameter): pass "
            "shared_params=... instead of features=..."
        )
    if not shared:
        raise ValueError(f"{who} needs per-task gradients: pass shared_params=... (the shared parameters)")
    shared_ids = {id(p) for p in shared}
    leaves_ = leaves(ctx.items)
    how = choose_method(ctx.items, shared) if ctx.step.method == "auto" else ctx.step.method
    items, loss_vector = ctx.scaled()
    jac = Jacobian.compute(items, shared, method=how, retain_graph=True)
    all_reduce_jacobian(jac, ctx.group)  # the global batch's J on every rank: one state everywhere
    reached = [p for p, r in zip(shared, jac.reached) if r]
    unreached = [name for name, r in zip(shared_names, jac.reached) if not r]
    if not reached:
        raise ValueError(
            f"no loss reaches shared_params ({', '.join(shared_names[:4])}{', ...' if len(shared_names) > 4 else ''}): "
            "pass the shared parameters the losses were computed from (e.g. shared_params=model.encoder)"
        )
    heads = [p for p in leaves_ if id(p) not in shared_ids] if head_params is None else list(head_params)
    if head_params is not None and isinstance(method, nn.Module):
        own = {id(p) for p in method.parameters()}
        listed = {id(p) for p in heads}
        heads += [p for p in leaves_ if id(p) in own and id(p) not in listed | shared_ids]
    if not usable_step(ctx.step, all_finite(jac.tensors()), jac, "the shared parameters", shared):
        return ctx.skip(reached + heads)
    J = jac.matrix()
    J = J.to(working_dtype(J.dtype))
    if ctx.scale != 1.0:
        J = J / ctx.scale
    output = method.compute(J, ctx.global_losses)
    factor = ctx.factor(output.weights)
    d = output.direction * (factor * ctx.scale)
    offset = 0
    for p, r in zip(shared, jac.reached):
        size = p.numel()
        if r:
            part = d[offset : offset + size].view(p.shape).to(p.dtype)
            p.grad = part.clone() if p.grad is None else p.grad.add_(part)
        offset += size
    weights = output.weights * factor
    if heads:
        coefficients = _head_coefficients(ctx, method, output, factor, loss_vector)
        torch.autograd.backward(
            (coefficients * loss_vector).sum(), inputs=heads, retain_graph=ctx.retain_graph
        )
        all_reduce_mean_(grads_of(heads), ctx.group)
        if ctx.step.check_finite:
            from .backward import _check_finite_grads

            _check_finite_grads(heads, None, what="task-specific parameter")
    diagnostics: dict[str, Any] = dict(output.diagnostics)
    diagnostics["direction_norm"] = float(output.direction.norm()) * factor
    if unreached:
        diagnostics["unreached_shared_params"] = unreached
    return ctx.result(weights, None, diagnostics)


def _head_coefficients(
    ctx: _Context, method: DirectionMethod, output: DirectionOutput, factor: float, loss_vector: Tensor
) -> Tensor:
    """The heads' coefficients: the method's own (DB-MTL: 1/(L_t + ε)), else as head_weighting says."""
    if output.head_weights is None:
        return ctx.head_coefficients(output.weights * factor, loss_vector)
    given = output.head_weights * (factor if method.head_weighting == "weighted" else 1.0)
    return given.to(loss_vector.device, loss_vector.dtype)


def _features_direction(ctx: _Context, method: DirectionMethod, features: Tensor) -> BackwardResult:
    """Per-task gradients w.r.t. Z, the method's gradient for Z, one backward pass with it reaching Z."""
    from .backward import _check_finite_grads, _unreached_features

    who = type(method).__name__
    if not isinstance(features, Tensor):
        raise TypeError(
            f"features must be one torch.Tensor (the shared representation), got {type(features).__name__}"
        )
    as_tensors(features, "features", hint="pass the encoder's output before any .detach()")
    if features.ndim < 2:
        raise ValueError(f"{who} needs features of shape (batch, ...), got shape {tuple(features.shape)}")
    items, loss_vector = ctx.scaled()
    jac = Jacobian.compute(items, [features], method=ctx.step.method, retain_graph=True)
    if not jac.reached[0]:
        raise _unreached_features(features)
    grads = jac.blocks[0]
    grads = grads.to(working_dtype(grads.dtype))
    if ctx.scale != 1.0:
        grads = grads / ctx.scale
    rows = torch.isfinite(grads.reshape(grads.shape[0], -1)).all(dim=1)
    bad = torch.logical_not(rows).to(torch.float64)
    all_reduce_sum_([bad], ctx.group)  # every rank takes the same branch (no rank waits alone)
    if bool(bad.any()):
        if ctx.scale != 1.0:
            return ctx.skip(leaves(ctx.items))
        if ctx.step.check_finite:
            names = [name for name, b in zip(ctx.step.names, bad.tolist()) if b]
            raise NonFiniteError(
                f"the gradient of task(s) {', '.join(map(repr, names))} w.r.t. the features contains NaN or inf"
            )

    def reduce(tensor: Tensor) -> Tensor:
        all_reduce_mean_([tensor], ctx.group)
        return tensor

    output = method.direct_features(grads, features.detach(), ctx.global_losses, reduce)
    if output.direction.shape != features.shape:
        raise RuntimeError(
            f"{who} returned a feature gradient of shape {tuple(output.direction.shape)} for features of "
            f"shape {tuple(features.shape)}"
        )
    weights = _weights64(output.weights)
    factor = ctx.factor(weights)
    feature_grad = (output.direction * (factor * ctx.scale)).to(features.dtype)
    output = DirectionOutput(output.direction, weights, output.diagnostics, output.head_weights)
    coefficients = _head_coefficients(ctx, method, output, factor, loss_vector)
    handle = features.register_hook(lambda _grad: feature_grad)
    try:
        torch.autograd.backward((coefficients * loss_vector).sum(), retain_graph=ctx.retain_graph)
    finally:
        handle.remove()
    params = leaves(ctx.items)
    all_reduce_mean_(grads_of(params), ctx.group)
    if ctx.step.check_finite:
        _check_finite_grads(params, None)
    diagnostics: dict[str, Any] = dict(output.diagnostics)
    diagnostics["direction_norm"] = float(output.direction.norm()) * factor
    return ctx.result(weights * factor, None, diagnostics)
