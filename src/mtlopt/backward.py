r"""One multi-task backward pass: per-task gradients → weights → ``.grad``.

:func:`backward` replaces ``loss.backward()`` in a training loop. It accumulates into ``.grad``

- of the shared parameters: :math:`\sum_t w_t \nabla_{\theta_{sh}} L_t`, with the weights
  :math:`w` chosen by the weighting;
- of every other parameter the losses reach (task heads): :math:`\sum_t c_t \nabla L_t` with
  :math:`c = w` or :math:`c = 1`, as the weighting's ``head_weighting`` says.

The path is chosen by what the method reads (see :mod:`mtlopt.weighting`) and where its gradients are
taken, never by which method it is:

a :class:`~mtlopt.LossWeighting` (EW, fixed weights, uncertainty weighting)
    One ordinary backward pass of the loss the method returns (:math:`\sum_t w_t L_t` by default).
a :class:`~mtlopt.GramianWeighting` with ``update="loss"`` (GradNorm)
    The Gramian of the task gradients at the method's own layer (its ``probe``), or at
    ``shared_params``/``features``, the weights, then one backward pass of :math:`\sum_t w_t L_t`.
a :class:`~mtlopt.GramianWeighting` with ``update="combined"`` and ``shared_params=...`` (exact MGDA)
    The K×P Jacobian w.r.t. the shared parameters (batched or looped autograd; the loop writes it into
    one matrix), its Gramian (one matmul), the weights, then :math:`\sum_t w_t g_t` (one
    matrix-vector product) written per parameter and one backward through the heads only.
the same with ``features=z`` (MGDA-UB)
    The per-task gradients w.r.t. the representation Z, its Gramian, the weights, and one backward
    pass of the encoder with :math:`\sum_t w_t \nabla_Z L_t` reaching Z. When every task reaches Z
    through nodes of its own (separate heads, the usual case), this is **one** backward pass, the one EW
    takes: hooks on the nodes that consume Z collect each task's :math:`\nabla_Z L_t` while the heads
    are differentiated, and a hook on the node that produced Z computes the Gramian and the weights and
    hands the combined gradient on to the encoder (with ``head_weighting="weighted"``, a
    ``GradScaler`` or several processes: one pass through the heads, then one through the encoder).
    Otherwise (a head shared by tasks, or ``method="loop"``/``"batched"``): K backward passes through
    the heads, then one full pass with the gradient reaching Z replaced. Either way the encoder runs
    forward once and backward once, so BatchNorm statistics and dropout masks are those of the user's
    single forward pass.
a :class:`~mtlopt.weighting.DirectionMethod` with ``shared_params=...`` (ExcessMTL, MoCo, DB-MTL)
    The K×P Jacobian (averaged across ranks, unscaled), the method's direction d written into the
    shared parameters' ``.grad``, one backward through the heads (see :mod:`mtlopt._direction`).
a :class:`~mtlopt.GramianWeighting` that reads several batches per step (``batch_roles``: MoDo, SDMGrad)
    ``losses`` and ``extra_losses`` are the step's batches 0, 1, ...: the Jacobians w.r.t. the shared
    parameters of the two batches its cross-Gramian :math:`A = J_i J_j^\top` reads (averaged across
    ranks), the weights from A, then :math:`\sum_t w_t \nabla L_t` of each update batch (from its
    Jacobian when it has one, else one backward pass of :math:`\sum_t w_t L_t` through the shared
    parameters) and one backward through the heads per head batch, reduced as the roles say. A method
    that samples tasks (``sampled_tasks``: SDMGrad-OS) gets the Jacobians of the drawn tasks only and
    a Gramian with zero rows for the others.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from ._checks import LossesLike, all_finite, as_loss_vector, as_tensors, check_finite_losses
from ._direction import direction_backward
from ._graph import HeadPlan, leaves, plan_head_pass
from ._options import choices
from ._task_step import StepContext, all_reduce_jacobian, checked_gramian, fill_nan, usable_step
from .distributed import Sync, all_reduce_mean_, any_rank, grads_of, resolve_group
from .distributed import scale_of as _scale_of
from .errors import NonFiniteError
from .gradients import Jacobian, choose_method, in_own_dtype
from .lean_gramian import LeanJacobian, cross_gramian, factorable_inputs, jacobian_fits
from .weighting._base import DirectionMethod, GramianWeighting, LossWeighting, Method, WeightingOutput
from .weighting._legacy import as_method

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["BackwardMethod", "BackwardResult", "backward"]

BackwardMethod = Literal["auto", "batched", "loop", "lean"]


@dataclass(frozen=True)
class BackwardResult:
    """What one :func:`backward` call did.

    Attributes:
        task_names: names of the K tasks (``"0"``, ``"1"``, ... for a sequence of losses).
        losses: the K loss values, detached.
        weights: the K weights applied to the shared gradients (float64, CPU).
        gramian: the K×K Gramian the weights were computed from (float64, CPU), or None; for a
            method that reads several batches per step, its cross-Gramian :math:`J_i J_j^T`.
        diagnostics: the method's diagnostics (e.g. solver iterations, KKT residual), and
            ``"weight_sum"``: the sum of the weights this update applied.
    """

    task_names: list[str]
    losses: Tensor
    weights: Tensor
    gramian: Tensor | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def weights_by_task(self) -> dict[str, float]:
        """The weights as a ``{task name: weight}`` dict (for logging); task names must be distinct."""
        _check_distinct_names(self.task_names)
        return {name: float(w) for name, w in zip(self.task_names, self.weights)}


def backward(
    losses: LossesLike,
    weighting: Method,
    *,
    shared_params: Iterable[Tensor] | nn.Module | None = None,
    features: Tensor | None = None,
    head_params: Iterable[Tensor] | None = None,
    method: BackwardMethod = "auto",
    check_finite: bool = True,
    retain_graph: bool = False,
    sync: Sync = "auto",
    scaler: torch.amp.GradScaler | None = None,
    weight_total: float | None = None,
    extra_losses: Sequence[LossesLike] = (),
) -> BackwardResult:
    r"""Accumulate the multi-task update of ``weighting`` into ``.grad``.

    Args:
        losses: K scalar losses (sequence, ``{name: loss}`` mapping, or a 1-D tensor).
        weighting: the method, e.g. :class:`mtlopt.EW` or :class:`mtlopt.MGDA`.
        shared_params: the shared parameters (a module or an iterable of tensors): per-task gradients
            are taken w.r.t. them (exact MGDA). Frozen parameters of a module are skipped; one that no
            loss reaches keeps its ``.grad`` and is listed in ``diagnostics["unreached_shared_params"]``
            (a ``ValueError`` when no loss reaches any of them).
        features: the shared representation Z: per-task gradients are taken w.r.t. it (MGDA-UB).
            A Gramian weighting needs exactly one of ``shared_params`` and ``features``, unless it
            names its own layer (GradNorm). A Z that no loss reaches is a ``ValueError``. A task whose
            gradient w.r.t. either is zero is warned about once (naming the task).
        head_params: the task-specific parameters, used with ``shared_params``; by default every
            other tensor requiring grad that the losses reach (found by walking the autograd graph).
            A method's own parameters (IMTL's scales) get their gradient with them in either case.
        method: how per-task gradients are computed: ``"auto"``, ``"batched"``, ``"loop"`` (see
            :mod:`mtlopt.gradients`) or ``"lean"``: a Gramian weighting's Gramian w.r.t. the shared
            parameters without the K×P Jacobian, layer by layer (:mod:`mtlopt.lean_gramian`;
            under several processes the ranks gather each other's layer factors; ``"auto"`` takes it
            when the Jacobian would take more than half the memory left on its device, on any
            rank). With ``features=`` ``"lean"`` is ``"auto"`` (the gradients w.r.t. Z are held);
            a direction method, which reads the Jacobian itself (ExcessMTL, MoCo, DB-MTL, GradDrop),
            refuses it. MoDo and SDMGrad get their cross-Gramian the same way.
        check_finite: raise :class:`mtlopt.NonFiniteError`, naming the task or parameter, when a loss
            or a gradient is NaN or infinite (costs one host synchronization). With a ``scaler``,
            non-finite gradients are left to the scaler, which skips the step.
        retain_graph: keep the graph after the call.
        sync: synchronize across processes (see :mod:`mtlopt.distributed`): ``"auto"`` (when
            ``torch.distributed`` runs more than one process), ``False``, or a process group. Every
            rank then writes the gradient one process would compute on the concatenated batches. Do
            not also wrap the model in ``DistributedDataParallel``.
        scaler: a ``torch.amp.GradScaler`` for float16 mixed precision. The losses are scaled before
            differentiation and the Gramian unscaled before the method sees it; ``.grad`` is left
            scaled for ``scaler.step(optimizer)``. On overflow ``.grad`` is set to NaN, so that the
            scaler skips the step and lowers its scale.
        weight_total: rescale this step's update so that its weights sum to this value (e.g. 1), for
            comparisons of methods at one learning rate (weights of both signs, as Pareto MTL's
            warm-up: :math:`\sum_t |w_t|`; all-zero weights stay zero); None (default): the method's own total
            (see its ``weight_sum``). The shared update and weighted heads are rescaled; so is a loss
            method's whole returned loss (a constant factor, which keeps its stationary points).
            A direction method's update is rescaled by ``weight_total / Σ_t |w_t|`` of its reported
            weights (ones for DB-MTL and GradDrop: d / K · weight_total).

    Returns:
        The weights, losses, Gramian and diagnostics of this step.
    """
    weighting = as_method(weighting)
    if method not in choices(BackwardMethod):
        expected = ", ".join(map(repr, choices(BackwardMethod)))
        raise ValueError(f"unknown method {method!r}; expected one of {expected}")
    names, items, loss_vector = as_loss_vector(losses)
    _check_distinct_names(names, losses)
    weighting.check_num_tasks(len(names), names)
    extra = _extra_batches(weighting, names, extra_losses)
    if weight_total is not None and not (weight_total > 0 and weight_total < float("inf")):
        raise ValueError(f"weight_total must be a finite number > 0 or None, got {weight_total!r}")
    group = resolve_group(sync)
    scale = _scale_of(scaler, loss_vector)
    check_grads = check_finite and scale == 1.0
    detached = loss_vector.detach().clone()
    extra_detached = [vector.detach().clone() for _, vector in extra]
    all_reduce_mean_([detached, *extra_detached], group)  # methods see the global batch's losses
    if check_finite:  # after the all-reduce: a NaN on one rank makes every rank raise, none waits
        check_finite_losses(names, detached if group is not None else loss_vector)
        for (_, vector), values in zip(extra, extra_detached):
            check_finite_losses(names, values if group is not None else vector)
    if isinstance(weighting, GramianWeighting):  # the losses it combines (IMTL: its scaled losses)
        transformed = weighting.transform_losses(items)
        if transformed is not items:
            items = list(transformed)
            loss_vector = torch.stack([loss.to(loss_vector.dtype) for loss in items])
    shared, shared_names = _shared_parameters(shared_params)
    if extra:  # the losses the method is given: the mean over the step's batches
        detached = torch.stack([detached, *extra_detached]).mean(dim=0)
    ctx = _Context(
        StepContext(names, items, scale, group, check_grads, "auto" if method == "lean" else method),
        loss_vector,
        weighting,
        retain_graph,
        detached,
        weight_total,
        method,
    )
    if isinstance(weighting, LossWeighting):
        output = weighting(loss_vector, detached)
        factor = ctx.factor(output.weights)
        leaves_ = leaves([output.loss]) if group is not None or not shared else shared
        _loss_backward(ctx, output.loss * factor, leaves_, shared_names if leaves_ is shared else None)
        return ctx.result(output.weights * factor, None, output.diagnostics)
    if method == "lean" and isinstance(weighting, DirectionMethod):
        raise ValueError(
            f"method='lean' gives a Gramian weighting its Gramian without the Jacobian, but "
            f"{type(weighting).__name__} reads the per-task gradients themselves; use 'auto', 'loop' or 'batched'"
        )
    if isinstance(weighting, DirectionMethod):
        return direction_backward(ctx, shared, shared_names, head_params, features)
    if not isinstance(weighting, GramianWeighting):
        raise TypeError(
            "the method must be a LossWeighting, a GramianWeighting or a DirectionMethod (e.g. mtlopt.EW(), "
            f"mtlopt.MGDA(), mtlopt.ExcessMTL()), "
            f"got {type(weighting).__name__}"
        )
    if extra:
        if features is not None or shared_params is None:
            raise ValueError(
                f"{type(weighting).__name__} reads {weighting.batches_per_step} batches per step from the "
                "Jacobians w.r.t. the shared parameters: pass shared_params=... (not features=...: the "
                "representations of different batches hold different samples)"
            )
        batches = [(items, loss_vector)] + [(list(its), vec) for its, vec in extra]
        return _multi_batch_backward(ctx, batches, shared, shared_names, head_params)
    probe = weighting.probe
    if probe is not None:
        if features is not None:
            raise ValueError(
                f"{type(weighting).__name__} reads its Gramian at its own layer: do not pass features=..."
            )
        _check_every_task_reaches(ctx.items, names, probe, type(weighting).__name__)
        result = _parameter_backward(ctx, list(probe), _names_of(probe, "probe"), head_params)
        return _warn_zero_gradients(result, "the layer the method reads its Gramian at")
    if (shared_params is None) == (features is None):
        raise ValueError(
            f"{type(weighting).__name__} needs per-task gradients: pass exactly one of "
            "shared_params=... (gradients w.r.t. the shared parameters, e.g. exact MGDA) or "
            "features=... (gradients w.r.t. the shared representation, e.g. MGDA-UB)"
        )
    if features is not None:
        return _warn_zero_gradients(_features_backward(ctx, features), "the features")
    result = _parameter_backward(ctx, shared, shared_names, head_params)
    return _warn_zero_gradients(result, "the shared parameters")


@dataclass
class _Context:
    step: StepContext
    loss_vector: Tensor
    weighting: GramianWeighting | LossWeighting | DirectionMethod
    retain_graph: bool
    global_losses: Tensor
    weight_total: float | None
    method: BackwardMethod = "auto"

    @property
    def items(self) -> list[Tensor]:
        return self.step.items

    @property
    def scale(self) -> float:
        return self.step.scale

    @property
    def group(self) -> ProcessGroup | None:
        return self.step.group

    def scaled(self) -> tuple[list[Tensor], Tensor]:
        if self.scale == 1.0:
            return self.items, self.loss_vector
        return self.step.scaled_items(), self.loss_vector * self.scale

    def factor(self, weights: Tensor) -> float:
        """The rescaling that gives the weights the total ``weight_total`` (1.0 without one)."""
        if self.weight_total is None:
            return 1.0
        total = float(weights.abs().sum())  # the sum itself for non-negative weights
        return self.weight_total / total if total > 0 else 1.0

    def weigh(self, G: Tensor) -> tuple[WeightingOutput, Tensor]:
        """The method's output and the weights to apply (rescaled to ``weight_total``)."""
        assert isinstance(self.weighting, GramianWeighting)
        if self.weighting.groups != "whole-model":
            raise ValueError(
                f"{type(self.weighting).__name__}(groups={self.weighting.groups!r}) weighs groups of shared "
                "parameters: pass shared_params=... (not features=...), or use groups='whole-model'"
            )
        output = self.weighting.compute(G, self.global_losses)
        return output, output.weights * self.factor(output.weights)

    def weigh_groups(self, gramians: list[Tensor]) -> tuple[WeightingOutput, Tensor]:
        """The method's output for one Gramian per parameter group and the (groups, K) weights to
        apply, each group's rescaled to ``weight_total``."""
        assert isinstance(self.weighting, GramianWeighting)
        output = self.weighting.compute_groups(gramians, self.global_losses)
        factors = torch.tensor([self.factor(row) for row in output.weights], dtype=torch.float64)
        return output, output.weights * factors[:, None]

    def head_coefficients(self, weights: Tensor, loss_vector: Tensor) -> Tensor:
        if self.weighting.head_weighting == "unweighted":
            return torch.ones_like(loss_vector)
        return weights.to(loss_vector.device, loss_vector.dtype)

    def result(self, weights: Tensor, G: Tensor | None, diagnostics: dict[str, Any]) -> BackwardResult:
        applied = weights.detach().to("cpu", torch.float64)
        return BackwardResult(
            task_names=self.step.names,
            losses=self.global_losses,
            weights=applied,
            gramian=G,
            diagnostics={**diagnostics, "weight_sum": float(applied.sum())},
        )

    def skip(self, params: Iterable[Tensor]) -> BackwardResult:
        """An overflow under a GradScaler: NaN gradients make ``scaler.step`` skip this step."""
        fill_nan(params)
        nan = torch.full((len(self.step.names),), float("nan"))
        return self.result(nan, None, {"skipped": "non-finite scaled gradients"})


def _loss_backward(ctx: _Context, total: Tensor, params: list[Tensor], names: Sequence[str] | None) -> None:
    """One ordinary backward pass of a (reweighted) loss, averaged across ranks and checked."""
    torch.autograd.backward(total * ctx.scale, retain_graph=ctx.retain_graph)
    all_reduce_mean_(grads_of(params), ctx.group)
    if ctx.step.check_finite:
        _check_finite_grads(params, names)


def _parameter_backward(
    ctx: _Context, shared: list[Tensor], shared_names: list[str], head_params: Iterable[Tensor] | None
) -> BackwardResult:
    assert isinstance(ctx.weighting, GramianWeighting)
    if not shared:
        raise ValueError("shared_params is empty: no parameter requires grad")
    shared_ids = {id(p) for p in shared}
    leaves_ = leaves(ctx.items)
    items, loss_vector = ctx.scaled()
    jac = _shared_jacobian(ctx, items, shared)
    G = checked_gramian(ctx.step, jac, "the shared parameters", shared)
    # Reached: autograd gave some task (on some rank) a gradient; the others keep their .grad.
    reached = [p for p, r in zip(shared, jac.reached) if r]
    unreached = [name for name, r in zip(shared_names, jac.reached) if not r]
    if not reached:  # the same on every rank: the flags were reduced with the Jacobian
        raise ValueError(
            f"no loss reaches shared_params ({_listed(shared_names)}): every task's gradient w.r.t. them "
            "is zero by construction; pass the shared parameters the losses were computed from "
            "(e.g. shared_params=model.encoder)"
        )
    heads = [p for p in leaves_ if id(p) not in shared_ids] if head_params is None else list(head_params)
    if head_params is not None and isinstance(ctx.weighting, nn.Module):  # e.g. IMTL's scales
        own = {id(p) for p in ctx.weighting.parameters()}
        listed = {id(p) for p in heads}
        heads += [p for p in leaves_ if id(p) in own and id(p) not in listed | shared_ids]
    if G is None:  # overflow under a GradScaler: NaN gradients make the scaler skip this step
        return ctx.skip(reached + heads)
    groups = parameter_groups(ctx.weighting.groups, shared_names)
    if groups is None:
        output, w = ctx.weigh(G)
        directions = jac.combine(w)
    else:  # one Gramian and one set of weights per group of shared parameters
        output, per_group = ctx.weigh_groups(
            [jac.gramian_of(group).detach().to("cpu", torch.float64) / ctx.scale**2 for group in groups]
        )
        w = per_group.mean(dim=0)
        group_of = {i: g for g, group in enumerate(groups) for i in group}
        directions = jac.combine_each([per_group[group_of[i]] for i in range(len(shared))])
    diagnostics = dict(output.diagnostics)
    if groups is not None:
        diagnostics["group_weights"] = per_group.tolist()
    if unreached:
        diagnostics["unreached_shared_params"] = unreached
    if isinstance(jac, LeanJacobian):
        diagnostics["lean_gramian"] = _lean_report(jac, shared_names)
    if ctx.weighting.update == "loss":  # GradNorm: one backward pass of the reweighted loss
        _loss_backward(ctx, _reweighted(w, ctx.loss_vector), leaves_, None)
        return ctx.result(w, G, diagnostics)
    for p, direction, r in zip(shared, directions, jac.reached):
        if not r:
            continue
        direction = direction.to(p.dtype)
        p.grad = direction if p.grad is None else p.grad.add_(direction)
    if heads:
        coefficients = ctx.head_coefficients(w, loss_vector)
        torch.autograd.backward(
            (coefficients * loss_vector).sum(), inputs=heads, retain_graph=ctx.retain_graph
        )
        all_reduce_mean_(grads_of(heads), ctx.group)
        if ctx.step.check_finite:
            _check_finite_grads(heads, None, what="task-specific parameter")
    return ctx.result(w, G, diagnostics)


def _shared_jacobian(ctx: _Context, items: list[Tensor], shared: list[Tensor]) -> Jacobian | LeanJacobian:
    """Per-task gradients w.r.t. the shared parameters: held whole, or lean (without the K×P Jacobian:
    :mod:`mtlopt.lean_gramian`) when asked, or under ``"auto"`` when the whole one would not fit."""
    if _takes_lean(ctx, len(items), shared):
        return LeanJacobian.compute(items, shared, retain_graph=True, group=ctx.group)
    return Jacobian.compute(items, shared, method=ctx.step.method, retain_graph=True)


def _features_backward(ctx: _Context, features: Tensor) -> BackwardResult:
    if not isinstance(features, Tensor):
        raise TypeError(
            f"features must be one torch.Tensor (the shared representation), got {type(features).__name__}"
        )
    as_tensors(features, "features", hint="pass the encoder's output before any .detach()")
    assert isinstance(ctx.weighting, GramianWeighting)
    feature_batch = ctx.weighting.feature_batch
    if feature_batch == "sum" and features.ndim < 2:
        raise ValueError(
            f"feature_batch='sum' needs features of shape (batch, ...), got shape {tuple(features.shape)}"
        )
    items, loss_vector = ctx.scaled()
    combined = ctx.weighting.update == "combined"
    plan = None
    if ctx.step.method == "auto" and combined:
        plan = plan_head_pass(ctx.items, features, ctx.weighting.head_weighting != "unweighted")
    if plan is not None and not any(plan.consumers):
        raise _unreached_features(features)
    if plan is not None and _can_take_one_pass(ctx, features, plan):
        return _features_one_pass(ctx, features, plan)
    if plan is not None:
        block, head_grads = _head_pass(plan, items, features, ctx.retain_graph)
        jac = Jacobian([block])
    else:
        jac = Jacobian.compute(items, [features], method=ctx.step.method, retain_graph=True)
        if not jac.reached[0]:
            raise _unreached_features(features)
    G = checked_gramian(ctx.step, jac, "the features", [features], feature_batch)
    if G is None:
        return ctx.skip(leaves(ctx.items))
    output, w = ctx.weigh(G)
    if not combined:  # a reweighted loss, backpropagated through everything
        params = leaves(ctx.items)
        _loss_backward(ctx, _reweighted(w, ctx.loss_vector), params, None)
        return ctx.result(w, G, dict(output.diagnostics))
    (feature_grad,) = jac.combine(w)
    feature_grad = feature_grad.to(features.dtype)
    if plan is not None:
        # The heads are differentiated already: their gradients are written, and only the encoder is
        # left, backpropagated once from Z with the combined gradient.
        for p, grad, owner in zip(plan.heads, head_grads, plan.owners):
            if grad is None:
                continue
            if ctx.weighting.head_weighting != "unweighted":
                assert owner is not None  # the plan guarantees one task per head parameter here
                grad = grad * w[owner].to(grad.dtype)
            if p.grad is None:  # autograd.grad may return an expanded view; .grad is added to in place
                p.grad = grad if grad.is_contiguous() else grad.contiguous()
            else:
                p.grad.add_(grad)
        torch.autograd.backward(features, feature_grad, retain_graph=ctx.retain_graph)
    else:
        coefficients = ctx.head_coefficients(w, loss_vector)
        handle = features.register_hook(lambda _grad: feature_grad)
        try:
            torch.autograd.backward((coefficients * loss_vector).sum(), retain_graph=ctx.retain_graph)
        finally:
            handle.remove()
    if ctx.group is not None:
        all_reduce_mean_(grads_of(leaves(ctx.items)), ctx.group)
    return ctx.result(w, G, dict(output.diagnostics))


def _extra_batches(
    weighting: Method, names: list[str], extra_losses: Sequence[LossesLike]
) -> list[tuple[list[Tensor], Tensor]]:
    """The items and loss vectors of the step's other batches, checked against the method's count."""
    who = type(weighting).__name__
    if isinstance(extra_losses, (Tensor, Mapping)) or not isinstance(extra_losses, Sequence):
        raise TypeError(
            f"extra_losses must be a sequence of loss collections (one per extra batch), got "
            f"{type(extra_losses).__name__}"
        )
    wanted = weighting.batches_per_step - 1
    if len(extra_losses) != wanted:
        if wanted == 0:
            raise ValueError(
                f"{who} reads one batch per step: extra_losses is for methods with batches_per_step > 1 "
                f"(MoDo, SDMGrad), got {len(extra_losses)} extra batch(es)"
            )
        raise ValueError(
            f"{who} reads {wanted + 1} independent batches per step: pass the losses of the other "
            f"{wanted} as extra_losses=[...], got {len(extra_losses)}"
        )
    out = []
    for b, batch in enumerate(extra_losses, 1):
        batch_names, items, vector = as_loss_vector(batch)
        if batch_names != names:
            raise ValueError(
                f"extra_losses[{b - 1}] has the tasks {batch_names}, expected those of losses: {names}"
            )
        out.append((items, vector))
    return out


def _multi_batch_backward(
    ctx: _Context,
    batches: list[tuple[list[Tensor], Tensor]],
    shared: list[Tensor],
    shared_names: list[str],
    head_params: Iterable[Tensor] | None,
) -> BackwardResult:
    """A Gramian weighting that reads several batches per step (see the module docstring)."""
    method = ctx.weighting
    assert isinstance(method, GramianWeighting) and method.batch_roles is not None
    roles = method.batch_roles
    if not shared:
        raise ValueError("shared_params is empty: no parameter requires grad")
    shared_ids = {id(p) for p in shared}
    leaves_ = leaves([loss for items, _ in batches for loss in items])
    heads = [p for p in leaves_ if id(p) not in shared_ids] if head_params is None else list(head_params)
    scale = ctx.scale
    scaled = [(items if scale == 1.0 else [loss * scale for loss in items]) for items, _ in batches]
    K = len(scaled[0])
    sampled = method.sampled_tasks(K)
    rows = list(range(K)) if sampled is None else _checked_sample(method, sampled, K)
    # The Jacobians (and the cross-Gramian) hold the sampled tasks' rows only.
    sampled_items = [[items[t] for t in rows] for items in scaled]
    jacobians = _batch_jacobians(ctx, sampled_items, sorted(set(roles.gramian)), shared)
    reached = [any(jac.reached[i] for jac in jacobians.values()) for i in range(len(shared))]
    if not any(reached):
        raise ValueError(
            f"no loss reaches shared_params ({_listed(shared_names)}): every task's gradient w.r.t. them "
            "is zero by construction; pass the shared parameters the losses were computed from "
            "(e.g. shared_params=model.encoder)"
        )
    reached_params = [p for p, r in zip(shared, reached) if r]
    for b, jac in jacobians.items():
        step = replace(ctx.step, items=batches[b][0])
        if not usable_step(
            step, all_finite(jac.tensors()), jac, f"the shared parameters (batch {b})", shared
        ):
            return ctx.skip(reached_params + heads)
    i, j = roles.gramian
    ji, jj = jacobians[i], jacobians[j]
    if isinstance(ji, LeanJacobian) and isinstance(jj, LeanJacobian):
        A = cross_gramian(ji, jj)
    else:
        assert isinstance(ji, Jacobian) and isinstance(jj, Jacobian)
        Ji, Jj = ji.matrix(), jj.matrix()
        with in_own_dtype(Ji):
            A = Ji @ Jj.T
    A = A.detach().to("cpu", torch.float64) / scale**2
    if scale != 1.0 and not bool(torch.isfinite(A).all()):  # an overflow under a GradScaler: skip the step
        return ctx.skip(reached_params + heads)
    drawn = torch.zeros(K, dtype=torch.bool)
    drawn[rows] = True
    if sampled is not None:  # zero rows and columns for the tasks not drawn
        index = torch.tensor(rows)
        full = torch.zeros(K, K, dtype=torch.float64)
        full[index[:, None], index[None, :]] = A
        A = full

    def share(count: int) -> float:
        return 1.0 / count if roles.reduction == "mean" else 1.0

    r = share(len(roles.update))
    # The reported weights are those of the update batches' mean gradient: ×(number of update
    # batches) under reduction="sum"; weight_total rescales that total.
    per_mean = r * len(roles.update)
    output = method.compute(A, ctx.global_losses)
    w = output.weights * ctx.factor(output.weights * per_mean)
    if bool(w[~drawn].ne(0).any()):
        raise RuntimeError(
            f"{type(method).__name__} sampled the tasks {rows} but weighted the others: {w.tolist()}"
        )
    for b in roles.update:
        if b in jacobians:
            directions = [d for d, ok in zip(jacobians[b].combine(w[rows] * r), reached) if ok]
        else:  # one backward pass of Σ_t w_t L_t through the shared parameters (no Jacobian)
            vector = torch.stack(scaled[b])
            total = (w.to(vector.device, vector.dtype) * r * vector).sum()
            directions = list(
                torch.autograd.grad(
                    total, reached_params, retain_graph=True, allow_unused=True, materialize_grads=True
                )
            )
            all_reduce_mean_(directions, ctx.group)
        for p, direction in zip(reached_params, directions):
            direction = direction.to(p.dtype)
            p.grad = direction.clone() if p.grad is None else p.grad.add_(direction)
    if ctx.step.check_finite:  # an update batch without a Jacobian was not checked above
        _check_finite_grads(reached_params, [n for n, ok in zip(shared_names, reached) if ok])
    if heads:
        r = share(len(roles.heads))
        for n, b in enumerate(roles.heads, 1):
            vector = batches[b][1] * scale if scale != 1.0 else batches[b][1]
            coefficients = ctx.head_coefficients(w, vector) * r
            last = n == len(roles.heads)  # a caller may pass one batch's losses twice
            torch.autograd.backward(
                (coefficients * vector).sum(), inputs=heads, retain_graph=ctx.retain_graph or not last
            )
        all_reduce_mean_(grads_of(heads), ctx.group)
        if ctx.step.check_finite:
            _check_finite_grads(heads, None, what="task-specific parameter")
    diagnostics = dict(output.diagnostics)
    diagnostics["batches"] = len(batches)
    if isinstance(ji, LeanJacobian):
        diagnostics["lean_gramian"] = _lean_report(ji, shared_names)
    unreached = [name for name, ok in zip(shared_names, reached) if not ok]
    if unreached:
        diagnostics["unreached_shared_params"] = unreached
    return ctx.result(w * per_mean, A, diagnostics)


def _checked_sample(method: GramianWeighting, sampled: list[int], num_tasks: int) -> list[int]:
    """The sorted, distinct task indices a method's :meth:`~GramianWeighting.sampled_tasks` drew."""
    if not sampled or sorted(set(sampled)) != list(sampled) or not all(0 <= t < num_tasks for t in sampled):
        raise RuntimeError(
            f"{type(method).__name__}.sampled_tasks gave {sampled!r}: expected sorted distinct task indices "
            f"in [0, {num_tasks})"
        )
    return list(sampled)


def _batch_jacobians(
    ctx: _Context, scaled: list[list[Tensor]], batches: list[int], shared: list[Tensor]
) -> dict[int, Jacobian | LeanJacobian]:
    """The Jacobians of the batches a cross-Gramian reads (the global batch's on every rank): held, or
    lean with the weights both batches can factor (one chunk each, for their cross-Gramian)."""
    if _takes_lean(ctx, len(scaled[batches[0]]) * len(batches), shared):
        common = set.intersection(*(factorable_inputs(scaled[b], shared, ctx.group) for b in batches))
        return {
            b: LeanJacobian.compute(scaled[b], shared, chunks=1, factor=common, group=ctx.group)
            for b in batches
        }
    jacobians: dict[int, Jacobian | LeanJacobian] = {}
    for b in batches:
        how = choose_method(scaled[b], shared) if ctx.step.method == "auto" else ctx.step.method
        jac = Jacobian.compute(scaled[b], shared, method=how, retain_graph=True)
        all_reduce_jacobian(jac, ctx.group)
        jacobians[b] = jac
    return jacobians


def _lean_report(jac: LeanJacobian, names: Sequence[str]) -> dict[str, Any]:
    return {"factored_params": [names[i] for i in jac.factored_inputs], "chunks": jac.chunks}


def _takes_lean(ctx: _Context, rows: int, shared: list[Tensor]) -> bool:
    """Whether the per-task gradients are held lean: asked for, or under ``"auto"`` when ``rows`` rows
    of the Jacobian would not fit (on any rank: the ranks take the same path)."""
    if ctx.method != "auto":
        return ctx.method == "lean"
    return any_rank(not jacobian_fits(rows, shared), ctx.group, shared[0].device)


def parameter_groups(groups: str, names: Sequence[str]) -> list[list[int]] | None:
    """Indices of the shared parameters per group, in order of first appearance; None: one group.

    ``"tensor"``: one per parameter; ``"layer"``: one per owning module, from the parameter names of
    ``shared_params=module`` (``"0.weight"`` and ``"0.bias"`` share the module ``"0"``)."""
    if groups == "whole-model":
        return None
    if groups == "tensor":
        return [[i] for i in range(len(names))]
    if any(name.startswith("shared_params[") for name in names):
        raise ValueError(
            "groups='layer' needs shared_params=<the shared module>: the layers are read from its "
            "parameter names (a list of tensors has none); use groups='tensor' for one group per tensor"
        )
    by_module: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_module.setdefault(name.rpartition(".")[0], []).append(i)
    return list(by_module.values())


def _check_distinct_names(names: Sequence[str], losses: object = None) -> None:
    """Task names are ``str()`` of the mapping's keys: two keys with one ``str()`` would be one task."""
    if len(set(names)) == len(names):
        return
    keys = list(losses) if isinstance(losses, Mapping) else list(names)
    clash = next(name for name in names if names.count(name) > 1)
    same = [repr(key) for key, name in zip(keys, names) if name == clash]
    raise ValueError(
        f"task names must be distinct after str(): the keys {' and '.join(same)} all give {clash!r}; "
        "give the losses distinct string keys"
    )


def _warn_zero_gradients(result: BackwardResult, what: str) -> BackwardResult:
    """Warn, once per task name and call site (Python's warning registry), about zero task gradients."""
    if result.gramian is not None:
        for t in (result.gramian.diagonal() == 0).nonzero()[:, 0].tolist():
            warnings.warn(
                f"the gradient of task {result.task_names[t]!r} w.r.t. {what} is zero (its loss does not "
                "reach them, or its gradient vanished): this update does not train them for that task",
                stacklevel=3,
            )
    return result


def _unreached_features(features: Tensor) -> ValueError:
    return ValueError(
        f"no loss reaches features= (a tensor of shape {tuple(features.shape)}): every task's gradient "
        "w.r.t. it would read as zero; pass the representation the task heads were computed from in "
        "this forward pass (not another layer's output, not a second forward's; under torch.compile, "
        "compile the encoder and the heads separately and pass the encoder's output)"
    )


def _reweighted(weights: Tensor, loss_vector: Tensor) -> Tensor:
    return (weights.to(loss_vector.device, loss_vector.dtype) * loss_vector).sum()


def _can_take_one_pass(ctx: _Context, features: Tensor, plan: HeadPlan) -> bool:
    """Whether :func:`_features_one_pass` applies; otherwise the head pass or the plain loop is used."""
    return (
        ctx.weighting.head_weighting == "unweighted"  # head gradients need no weights (not known yet)
        and ctx.weight_total is None  # likewise
        and ctx.group is None  # one process
        and ctx.scale == 1.0  # no GradScaler: a skipped step must write no gradient, and the heads' are
        and not features.is_leaf  # the weights are computed in a hook on the node that produced Z
        and any(plan.consumers)  # else no gradient reaches Z's node and its hook never runs
    )


def _features_one_pass(ctx: _Context, features: Tensor, plan: HeadPlan) -> BackwardResult:
    r"""MGDA-UB in one backward pass, the pass EW takes (one process, no scaler, unweighted heads).

    Hooks on the consumers of Z collect each task's gradient w.r.t. Z while the heads are
    differentiated; a hook on the node that produced Z runs once they have all reported (the engine
    runs a node after every gradient flowing into it): it computes the Gramian and the weights and
    hands the encoder :math:`\sum_t w_t \nabla_Z L_t` in place of the plain sum. The heads receive
    :math:`\nabla L_t` from the same pass.
    """
    edge = torch.autograd.graph.get_gradient_edge(features)
    node, position = edge.node, edge.output_nr
    collected, handles = _collect_consumer_grads(plan)
    found: dict[str, Any] = {}
    assert isinstance(ctx.weighting, GramianWeighting)
    feature_batch = ctx.weighting.feature_batch

    def combine(grad_outputs: Any) -> Any:
        jac = Jacobian([_stack_rows(collected, features)])
        G = checked_gramian(ctx.step, jac, "the features", [features], feature_batch)
        assert G is not None  # no scaler on this path: a non-finite Gramian raised above
        output, w = ctx.weigh(G)
        found.update(G=G, output=output, w=w)
        grads = list(grad_outputs)
        grads[position] = jac.combine(w)[0].to(features.dtype)
        return tuple(grads)

    handles.append(node.register_prehook(combine))
    try:
        torch.autograd.backward(ctx.items, retain_graph=ctx.retain_graph)
    finally:
        for handle in handles:
            handle.remove()
    return ctx.result(found["w"], found["G"], dict(found["output"].diagnostics))


def _collect_consumer_grads(plan: HeadPlan) -> tuple[list[list[Tensor]], list[Any]]:
    """Hooks on the consumers of Z that append the gradient each sends to Z to its task's list."""
    collected: list[list[Tensor]] = [[] for _ in plan.consumers]
    handles = []
    for t, task_consumers in enumerate(plan.consumers):
        for node, positions in task_consumers:

            def report(
                grad_inputs: Any, grad_outputs: Any, t: int = t, positions: list[int] = positions
            ) -> None:
                collected[t].extend(grad_inputs[i] for i in positions if grad_inputs[i] is not None)

            handles.append(node.register_hook(report))
    return collected, handles


def _stack_rows(collected: list[list[Tensor]], features: Tensor) -> Tensor:
    rows = []
    for parts in collected:
        if not parts:  # the task's loss does not depend on Z
            rows.append(torch.zeros_like(features))
            continue
        row = parts[0]
        for part in parts[1:]:
            row = row + part
        rows.append(row)
    return torch.stack(rows)


def _head_pass(
    plan: HeadPlan, items: list[Tensor], features: Tensor, retain_graph: bool
) -> tuple[Tensor, list[Tensor | None]]:
    r"""Every task's gradient w.r.t. Z, shape (K, *Z.shape), and the head parameters' gradients of
    :math:`\sum_t L_t`, from one backward pass through the heads (the encoder is not entered).

    Each consumer of Z reports, through a hook on its autograd node, the gradient it sends to Z; the
    consumers of task t are task t's alone (the plan checks it), so their sum is :math:`\partial L_t /
    \partial Z`.
    """
    collected, handles = _collect_consumer_grads(plan)
    try:
        grads = torch.autograd.grad(
            items, [features, *plan.heads], retain_graph=retain_graph, allow_unused=True
        )
    finally:
        for handle in handles:
            handle.remove()
    return _stack_rows(collected, features), list(grads[1:])


def _shared_parameters(
    shared_params: Iterable[Tensor] | nn.Module | None,
) -> tuple[list[Tensor], list[str]]:
    if shared_params is None:
        return [], []
    if isinstance(shared_params, nn.Module):
        named = [(n, p) for n, p in shared_params.named_parameters() if p.requires_grad]
        return [p for _, p in named], [n for n, _ in named]
    params = as_tensors(
        shared_params,
        "shared_params",
        hint="pass only trainable shared parameters (or the shared module: its frozen ones are skipped)",
    )
    return params, [f"shared_params[{i}]" for i in range(len(params))]


def _check_finite_grads(
    params: Sequence[Tensor], names: Sequence[str] | None, what: str = "parameter"
) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or all_finite(grads):
        return
    # A float64 sum is non-finite exactly when an element is (it cannot overflow): one kernel each.
    finite = torch.isfinite(torch.stack([g.sum(dtype=torch.float64) for g in grads]))
    if bool(finite.all()):
        return
    labels = list(names) if names is not None else [f"{what} of shape {tuple(p.shape)}" for p in params]
    with_grad = [label for p, label in zip(params, labels) if p.grad is not None]
    bad = [label for label, ok in zip(with_grad, finite.tolist()) if not ok]
    raise NonFiniteError(f"the gradient of {', '.join(bad)} contains NaN or inf (the losses were finite)")


def _check_every_task_reaches(
    items: Sequence[Tensor], names: Sequence[str], probe: Sequence[Tensor], who: str
) -> None:
    """A method that reads its Gramian at its own layer needs every task's loss to go through it."""
    wanted = {id(p) for p in probe}
    for name, loss in zip(names, items):
        if not wanted & {id(leaf) for leaf in leaves([loss])}:
            raise ValueError(
                f"{who}: the loss of task {name} does not depend on the parameters the method reads its "
                "Gramian at (its probe); pass a shared layer that every task's loss goes through "
                "(GradNorm: the last shared layer)"
            )


def _listed(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def _names_of(tensors: Sequence[Tensor], what: str) -> list[str]:
    return [f"{what}[{i}]" for i in range(len(tensors))]
