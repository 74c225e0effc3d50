r"""One multi-task backward pass: per-task gradients → weights → ``.grad``.

:func:`backward` replaces ``loss.backward()`` in a training loop. It accumulates into ``.grad``

- of the shared parameters: :math:`\sum_t w_t \nabla_{\theta_{sh}} L_t`, with the weights
  :math:`w` chosen by the weighting;
- of every other parameter the losses reach (task heads): :math:`\sum_t c_t \nabla L_t` with
  :math:`c = w` or :math:`c = 1`, as the weighting's ``head_weighting`` says.

Three paths, by what the weighting needs:

``weighting.needs_gramian`` is False (EW, fixed weights)
    One ordinary backward pass of :math:`\sum_t w_t L_t`.
``shared_params=...`` (e.g. exact MGDA)
    The K×P Jacobian w.r.t. the shared parameters (batched or looped autograd; the loop writes it into
    one matrix), its Gramian (one matmul), the weights, then :math:`\sum_t w_t g_t` (one
    matrix-vector product) written per parameter and one backward through the heads only.
``features=z`` (e.g. MGDA-UB)
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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import LossesLike, all_finite, as_loss_vector, as_tensors, check_finite_losses, check_num_tasks
from .distributed import (
    all_reduce_mean_,
    all_reduce_sum_,
    grads_of,
    resolve_group,
    world_size,
)
from .distributed import (
    scale_of as _scale_of,
)
from .errors import NonFiniteError
from .gradients import JacobianMethod, choose_method, gramian, jacobian_blocks, jacobian_matrix
from .weighting._base import Weighting

__all__ = ["BackwardResult", "backward"]


@dataclass(frozen=True)
class BackwardResult:
    """What one :func:`backward` call did.

    Attributes:
        task_names: names of the K tasks (``"0"``, ``"1"``, ... for a sequence of losses).
        losses: the K loss values, detached.
        weights: the K weights applied to the shared gradients (float64, CPU).
        gramian: the K×K Gramian the weights were computed from (float64, CPU), or None.
        diagnostics: the weighting's diagnostics (e.g. solver iterations, KKT residual).
    """

    task_names: list[str]
    losses: Tensor
    weights: Tensor
    gramian: Tensor | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def weights_by_task(self) -> dict[str, float]:
        """The weights as a ``{task name: weight}`` dict (for logging)."""
        return {name: float(w) for name, w in zip(self.task_names, self.weights)}


def backward(
    losses: LossesLike,
    weighting: Weighting,
    *,
    shared_params: Iterable[Tensor] | nn.Module | None = None,
    features: Tensor | None = None,
    head_params: Iterable[Tensor] | None = None,
    method: JacobianMethod = "auto",
    check_finite: bool = True,
    retain_graph: bool = False,
    sync: Any = "auto",
    scaler: Any | None = None,
) -> BackwardResult:
    """Accumulate the multi-task update of ``weighting`` into ``.grad``.

    Args:
        losses: K scalar losses (sequence, ``{name: loss}`` mapping, or a 1-D tensor).
        weighting: e.g. :class:`mtlopt.EW` or :class:`mtlopt.MGDA`.
        shared_params: the shared parameters (a module or an iterable of tensors): per-task gradients
            are taken w.r.t. them (exact MGDA). Frozen parameters of a module are skipped.
        features: the shared representation Z: per-task gradients are taken w.r.t. it (MGDA-UB).
            Give exactly one of ``shared_params`` and ``features`` when the weighting needs the Gramian.
        head_params: the task-specific parameters, used with ``shared_params``; by default every
            other tensor requiring grad that the losses reach (found by walking the autograd graph).
        method: how per-task gradients are computed: ``"auto"``, ``"batched"`` or ``"loop"``.
        check_finite: raise :class:`mtlopt.NonFiniteError`, naming the task or parameter, when a loss
            or a gradient is NaN or infinite (costs one host synchronization). With a ``scaler``,
            non-finite gradients are left to the scaler, which skips the step.
        retain_graph: keep the graph after the call.
        sync: synchronize across processes (see :mod:`mtlopt.distributed`): ``"auto"`` (when
            ``torch.distributed`` runs more than one process), ``False``, or a process group. Every
            rank then writes the gradient one process would compute on the concatenated batches. Do
            not also wrap the model in ``DistributedDataParallel``.
        scaler: a ``torch.amp.GradScaler`` for float16 mixed precision. The losses are scaled before
            differentiation and the Gramian unscaled before the weighting sees it; ``.grad`` is left
            scaled for ``scaler.step(optimizer)``. On overflow ``.grad`` is set to NaN, so that the
            scaler skips the step and lowers its scale.

    Returns:
        The weights, losses, Gramian and diagnostics of this step.
    """
    names, items, loss_vector = as_loss_vector(losses)
    check_num_tasks(names, weighting.num_tasks, weighting.min_tasks, type(weighting).__name__)
    group = resolve_group(sync)
    scale = _scale_of(scaler, loss_vector)
    check_grads = check_finite and scale == 1.0
    detached = loss_vector.detach().clone()
    all_reduce_mean_([detached], group)  # weightings see the global batch's losses
    if check_finite:  # after the all-reduce: a NaN on one rank makes every rank raise, none waits
        check_finite_losses(names, detached if group is not None else loss_vector)
    shared, shared_names = _shared_parameters(shared_params)

    weighting.sync_group = group
    if not weighting.needs_gramian:
        weighting.prepare(items)
        output = weighting.compute(None, detached)
        objective = weighting.objective(loss_vector, output)
        # Leaves of the objective: the model's parameters and any the weighting adds (uncertainty's).
        leaves = _leaves([objective]) if group is not None or not shared else shared
        torch.autograd.backward(objective * scale, retain_graph=retain_graph)
        all_reduce_mean_(grads_of(leaves), group)
        if check_grads:
            _check_finite_grads(leaves, shared_names if leaves is shared else None)
        return _result(names, detached, output.weights, None, output.diagnostics)

    if (shared_params is None) == (features is None):
        raise ValueError(
            f"{type(weighting).__name__} needs per-task gradients: pass exactly one of "
            "shared_params=... (gradients w.r.t. the shared parameters, e.g. exact MGDA) or "
            "features=... (gradients w.r.t. the shared representation, e.g. MGDA-UB)"
        )
    context = _Context(
        names, items, loss_vector, weighting, method, check_grads, retain_graph, group, scale, detached
    )
    if features is not None:
        return _features_backward(context, features)
    return _shared_backward(context, shared, shared_names, head_params)


@dataclass
class _Context:
    names: list[str]
    items: list[Tensor]
    loss_vector: Tensor
    weighting: Weighting
    method: JacobianMethod
    check_finite: bool
    retain_graph: bool
    group: Any
    scale: float
    global_losses: Tensor

    def scaled(self) -> tuple[list[Tensor], Tensor]:
        if self.scale == 1.0:
            return self.items, self.loss_vector
        return [loss * self.scale for loss in self.items], self.loss_vector * self.scale


def _shared_backward(
    ctx: _Context, shared: list[Tensor], shared_names: list[str], head_params: Iterable[Tensor] | None
) -> BackwardResult:
    if not shared:
        raise ValueError("shared_params is empty: no parameter requires grad")
    shared_ids = {id(p) for p in shared}
    leaves = _leaves(ctx.items)
    method = choose_method(ctx.items, shared) if ctx.method == "auto" else ctx.method
    reached = {id(leaf) for leaf in leaves}
    unreached = [name for p, name in zip(shared, shared_names) if id(p) not in reached]
    items, loss_vector = ctx.scaled()
    matrix, blocks = jacobian_matrix(items, shared, method=method, retain_graph=True)
    # The global batch's per-task gradients, before any weighting (one tensor when there is a matrix).
    all_reduce_mean_(blocks if matrix is None else [matrix], ctx.group)
    G = _gramian_cpu(
        gramian(blocks if matrix is None else matrix), ctx, "the shared parameters", shared, matrix
    )
    heads = [p for p in leaves if id(p) not in shared_ids] if head_params is None else list(head_params)
    if G is None:  # overflow under a GradScaler: NaN gradients make the scaler skip this step
        return _skip_step(ctx, [p for p in shared if id(p) in reached] + heads)
    output = ctx.weighting.compute(G, ctx.global_losses)
    w = output.weights.to(blocks[0].device, blocks[0].dtype)
    if matrix is not None:  # one matrix-vector product; each parameter's slice is a view of it
        combined = w @ matrix
        directions, offset = [], 0
        for p in shared:
            directions.append(combined[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    else:
        directions = [torch.tensordot(w, block, dims=1) for block in blocks]
    for p, direction in zip(shared, directions):
        if id(p) not in reached:
            continue
        direction = direction.to(p.dtype)
        p.grad = direction if p.grad is None else p.grad.add_(direction)
    if heads:
        coefficients = _head_coefficients(ctx.weighting, output.weights, loss_vector)
        torch.autograd.backward(
            (coefficients * loss_vector).sum(), inputs=heads, retain_graph=ctx.retain_graph
        )
        all_reduce_mean_(grads_of(heads), ctx.group)
        if ctx.check_finite:
            _check_finite_grads(heads, None, what="task-specific parameter")
    diagnostics = dict(output.diagnostics)
    if unreached:
        diagnostics["unreached_shared_params"] = unreached
    return _result(ctx.names, ctx.global_losses, output.weights, G, diagnostics)


def _features_backward(ctx: _Context, features: Tensor) -> BackwardResult:
    if not isinstance(features, Tensor):
        raise TypeError(
            f"features must be one torch.Tensor (the shared representation), got {type(features).__name__}"
        )
    as_tensors(features, "features", hint="pass the encoder's output before any .detach()")
    if ctx.weighting.feature_batch == "sum" and features.ndim < 2:
        raise ValueError(
            f"feature_batch='sum' needs features of shape (batch, ...), got shape {tuple(features.shape)}"
        )
    items, loss_vector = ctx.scaled()
    plan = (
        _plan_head_pass(ctx.items, features, ctx.weighting.head_weighting) if ctx.method == "auto" else None
    )
    if _can_take_one_pass(ctx, features, plan):
        return _features_one_pass(ctx, features, plan)
    if plan is not None:
        block, head_grads = _head_pass(plan, items, features, ctx.retain_graph)
        exact = True
    else:
        (block,) = jacobian_blocks(items, [features], method=ctx.method, retain_graph=True)
        exact = ctx.method == "loop" or (ctx.method == "auto" and choose_method(items, [features]) == "loop")
    G = _gramian_cpu(_feature_gramian(ctx, block), ctx, "the features", [features], block if exact else None)
    if G is None:
        return _skip_step(ctx, _leaves(ctx.items))
    output = ctx.weighting.compute(G, ctx.global_losses)
    w = output.weights.to(block.device, block.dtype)
    feature_grad = torch.tensordot(w, block, dims=1).to(features.dtype)
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
        coefficients = _head_coefficients(ctx.weighting, output.weights, loss_vector)
        handle = features.register_hook(lambda _grad: feature_grad)
        try:
            torch.autograd.backward((coefficients * loss_vector).sum(), retain_graph=ctx.retain_graph)
        finally:
            handle.remove()
    if ctx.group is not None:
        all_reduce_mean_(grads_of(_leaves(ctx.items)), ctx.group)
    return _result(ctx.names, ctx.global_losses, output.weights, G, dict(output.diagnostics))


def _feature_gramian(ctx: _Context, block: Tensor) -> Tensor:
    """The Gramian of the representation gradients (K, B, ...), synchronized across processes."""
    if ctx.weighting.feature_batch == "sum":
        per_task = block.sum(dim=1)
        all_reduce_mean_([per_task], ctx.group)  # sums over each rank's samples of batch-mean losses
        return gramian(per_task)
    local_gramian = gramian(block)
    if ctx.group is not None:  # a sum over samples: Σ_r G_r / W² for the mean over W equal batches
        all_reduce_sum_([local_gramian], ctx.group)
        local_gramian = local_gramian / world_size(ctx.group) ** 2
    return local_gramian


def _can_take_one_pass(ctx: _Context, features: Tensor, plan: _HeadPlan | None) -> bool:
    """Whether :func:`_features_one_pass` applies; otherwise the head pass or the plain loop is used."""
    return (
        plan is not None  # every task reaches Z through consumers of its own
        and ctx.weighting.head_weighting == "unweighted"  # head gradients need no weights (not known yet)
        and ctx.group is None  # one process
        and ctx.scale == 1.0  # no GradScaler: a skipped step must write no gradient, and the heads' are
        and not features.is_leaf  # the weights are computed in a hook on the node that produced Z
        and any(plan.consumers)  # else no gradient reaches Z's node and its hook never runs
    )


def _features_one_pass(ctx: _Context, features: Tensor, plan: _HeadPlan) -> BackwardResult:
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

    def combine(grad_outputs: Any) -> Any:
        block = _stack_rows(collected, features)
        G = _gramian_cpu(_feature_gramian(ctx, block), ctx, "the features", [features], block)
        assert G is not None  # no scaler on this path: a non-finite Gramian raised above
        output = ctx.weighting.compute(G, ctx.global_losses)
        w = output.weights.to(block.device, block.dtype)
        found.update(G=G, output=output)
        grads = list(grad_outputs)
        grads[position] = torch.tensordot(w, block, dims=1).to(features.dtype)
        return tuple(grads)

    handles.append(node.register_prehook(combine))
    try:
        torch.autograd.backward(ctx.items, retain_graph=ctx.retain_graph)
    finally:
        for handle in handles:
            handle.remove()
    output = found["output"]
    return _result(ctx.names, ctx.global_losses, output.weights, found["G"], dict(output.diagnostics))


@dataclass
class _HeadPlan:
    """How one backward pass through the heads yields every task's gradient w.r.t. Z.

    Attributes:
        consumers: per task, the autograd nodes that take Z as an input (with the input positions);
            no node is a consumer for two tasks.
        heads: the leaves reached from the losses without passing through Z (task parameters).
        owners: per head leaf, the one task that reaches it, or None when several do.
    """

    consumers: list[list[tuple[Any, list[int]]]]
    heads: list[Tensor]
    owners: list[int | None]


def _plan_head_pass(items: list[Tensor], features: Tensor, head_weighting: str) -> _HeadPlan | None:
    """The plan of :func:`_head_pass`, or None when two tasks reach Z through a common node.

    One walk of each task's graph down to Z (the heads only). With ``head_weighting="weighted"``, a head
    parameter reached by two tasks needs per-task gradients: None as well (the loop is used).
    """
    edge = torch.autograd.graph.get_gradient_edge(features)
    target, target_nr = edge.node, edge.output_nr
    owner_of_consumer: dict[Any, int] = {}
    consumers: list[list[tuple[Any, list[int]]]] = []
    leaf_index: dict[int, int] = {}
    heads: list[Tensor] = []
    owners: list[int | None] = []
    for t, loss in enumerate(items):
        found = []
        # Walked inline, not with gradients.walk_graph: the generator and a second read of next_functions
        # (a new tuple per read) made this walk and _leaves' 1.5-2x slower (about 90 us a step at 40 heads).
        seen = {target}  # the nodes themselves (kept alive: identity is stable); Z's node is not entered
        stack = [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            children = node.next_functions
            if not children:  # a leaf's AccumulateGrad (or a node with no inputs to differentiate)
                variable = getattr(node, "variable", None)
                if isinstance(variable, Tensor):
                    index = leaf_index.get(id(variable))
                    if index is None:
                        leaf_index[id(variable)] = len(heads)
                        heads.append(variable)
                        owners.append(t)
                    elif owners[index] != t:
                        owners[index] = None
                continue
            positions = []
            for i, (child, nr) in enumerate(children):
                if child is target:
                    if nr == target_nr:
                        positions.append(i)
                else:
                    stack.append(child)
            if positions:
                if owner_of_consumer.setdefault(node, t) != t:
                    return None
                found.append((node, positions))
        consumers.append(found)
    if head_weighting != "unweighted" and any(owner is None for owner in owners):
        return None
    return _HeadPlan(consumers, heads, owners)


def _collect_consumer_grads(plan: _HeadPlan) -> tuple[list[list[Tensor]], list[Any]]:
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
    plan: _HeadPlan, items: list[Tensor], features: Tensor, retain_graph: bool
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


def _skip_step(ctx: _Context, params: Iterable[Tensor]) -> BackwardResult:
    """An overflow under a GradScaler: NaN gradients make ``scaler.step`` skip this step."""
    _fill_nan(params)
    return _result(
        ctx.names,
        ctx.global_losses,
        torch.full((len(ctx.names),), float("nan")),
        None,
        {"skipped": "non-finite scaled gradients"},
    )


def _fill_nan(params: Iterable[Tensor]) -> None:
    for p in params:
        p.grad = torch.full_like(p, float("nan"))


def _head_coefficients(weighting: Weighting, weights: Tensor, loss_vector: Tensor) -> Tensor:
    if weighting.head_weighting == "unweighted":
        return torch.ones_like(loss_vector)
    return weights.to(loss_vector.device, loss_vector.dtype)


def _gramian_cpu(
    G: Tensor, ctx: _Context, what: str, inputs: list[Tensor], rows: Tensor | None = None
) -> Tensor | None:
    """The unscaled float64 Gramian on the CPU; None on overflow under a scaler; errors otherwise.

    ``rows``: the per-task gradients (K, ...) when each row is exactly its task's (loop or head pass);
    the error path then reads the culprits from them instead of differentiating again.
    """
    G64 = G.detach().to("cpu", torch.float64) / ctx.scale**2
    if bool(torch.isfinite(G64).all()):
        return G64
    if ctx.scale != 1.0:
        return None
    if not ctx.check_finite:
        return G64
    bad = []
    if rows is not None:
        finite = torch.isfinite(rows.reshape(rows.shape[0], -1)).all(dim=1).tolist()
        bad = [name for name, ok in zip(ctx.names, finite) if not ok]
    else:
        # Recompute task by task, since a batched backward can spread one task's NaN to every row
        # (vmap sends all rows through every node, and 0 · inf = NaN).
        for name, loss in zip(ctx.names, ctx.items):
            grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
            if not all(g is None or bool(torch.isfinite(g).all()) for g in grads):
                bad.append(name)
    detail = f"task(s) {', '.join(map(repr, bad))}" if bad else "the tasks (combined)"
    raise NonFiniteError(f"the gradient of {detail} w.r.t. {what} contains NaN or inf")


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


def _leaves(items: list[Tensor]) -> list[Tensor]:
    """Leaf tensors requiring grad that the losses reach (one walk of the graph, inline for speed)."""
    leaves = []
    seen: set[Any] = set()  # the nodes themselves: keeps them alive, so identity is stable
    stack = [loss.grad_fn for loss in items]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        children = node.next_functions
        if children:
            stack.extend([child for child, _ in children])
        else:  # only AccumulateGrad nodes (leaves) have no inputs
            variable = getattr(node, "variable", None)
            if isinstance(variable, Tensor):
                leaves.append(variable)
    return leaves


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


def _result(
    names: list[str], losses: Tensor, weights: Tensor, G: Tensor | None, diagnostics: dict[str, Any]
) -> BackwardResult:
    return BackwardResult(
        task_names=names,
        losses=losses,
        weights=weights.detach().to("cpu", torch.float64),
        gramian=G,
        diagnostics=diagnostics,
    )
