r"""Per-task gradients: the Jacobian of K losses and its Gramian.

For losses :math:`L_1, \dots, L_K` and inputs :math:`\theta` (shared parameters, or a shared
representation :math:`Z`), the Jacobian stacks the task gradients as rows,
:math:`J = [\nabla_\theta L_1; \dots; \nabla_\theta L_K] \in \mathbb{R}^{K \times P}`, and the Gramian is
:math:`G = J J^\top \in \mathbb{R}^{K \times K}`.

Two ways to compute J, with the same result:

- ``"batched"``: one call of ``torch.autograd.grad(..., is_grads_batched=True)`` (vmap over the K
  one-hot output gradients);
- ``"loop"``: K calls of ``torch.autograd.grad``, each writing its row of one preallocated K×P matrix
  (:func:`jacobian_matrix`): the Jacobian is held once, and its per-parameter blocks are views.

``"auto"`` (:func:`choose_method`) decides from the structure of the graph, with no timing:

- a convolution anywhere in the differentiated graph → loop: on the CPU, convolution backward under
  vmap measured 2.5–4× slower than a loop of backward calls;
- inputs that are leaves (shared parameters) → batched: every task's path runs through the shared
  layers, which vmap processes for all K rows at once (an MLP encoder at K = 40: 50 ms vs 74 ms);
- inputs that are intermediate tensors (a representation Z) → loop, unless the tasks' subgraphs are
  mostly shared: vmap sends all K rows through every task's head (K² head passes, 5.3 ms vs 0.5 ms
  for ten LeNet heads), while the loop differentiates each task's own head once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ._checks import LossesLike, as_loss_vector, as_tensors

__all__ = ["JacobianMethod", "feature_jacobian", "gramian", "jacobian"]

JacobianMethod = Literal["auto", "batched", "loop"]
_METHODS = ("auto", "batched", "loop")
# Backward nodes for which vmap over the backward pass is slower than a loop of backward calls.
_SLOW_UNDER_VMAP = ("Convolution", "Conv2D", "Conv3D", "SlowConv", "Cudnn", "Mkldnn")


def jacobian(
    losses: LossesLike,
    params: Iterable[Tensor],
    *,
    method: JacobianMethod = "auto",
    retain_graph: bool = True,
) -> Tensor:
    """The K×P Jacobian of K scalar losses w.r.t. ``params`` (flattened and concatenated in order).

    Args:
        losses: K scalar tensors (a sequence, or a mapping from task name to loss).
        params: tensors that require grad (e.g. ``model.encoder.parameters()``).
        method: ``"auto"``, ``"batched"`` or ``"loop"`` (see the module docstring).
        retain_graph: keep the graph for a later backward (default True).

    Returns:
        Tensor of shape (K, P). A task whose loss does not depend on a parameter gets zeros there.
    """
    _, items, _ = as_loss_vector(losses)
    inputs = as_tensors(params, "params")
    matrix, blocks = jacobian_matrix(items, inputs, method=method, retain_graph=retain_graph)
    if matrix is not None:
        return matrix
    return torch.cat([b.reshape(b.shape[0], -1) for b in blocks], dim=1)


def feature_jacobian(
    losses: LossesLike,
    features: Tensor,
    *,
    method: JacobianMethod = "auto",
    retain_graph: bool = True,
) -> Tensor:
    """Per-task gradients w.r.t. a shared representation Z (the MGDA-UB quantity).

    Only the part of the graph between the losses and Z is differentiated (the task heads); the
    encoder that produced Z is neither run again nor differentiated.

    Returns:
        Tensor of shape (K, *features.shape): row t is :math:`\\partial L_t / \\partial Z`.
    """
    _, items, _ = as_loss_vector(losses)
    (feature,) = as_tensors(features, "features")
    return jacobian_blocks(items, [feature], method=method, retain_graph=retain_graph)[0]


def gramian(jacobian: Tensor | Sequence[Tensor]) -> Tensor:
    """The K×K Gramian :math:`J J^\\top`.

    Args:
        jacobian: a (K, ...) tensor, or a sequence of blocks of shape (K, ...) (e.g. one per
            parameter) whose Gramians are summed; no concatenated copy is made.
    """
    blocks = [jacobian] if isinstance(jacobian, Tensor) else list(jacobian)
    if not blocks:
        raise ValueError("gramian() needs at least one Jacobian block")
    K = blocks[0].shape[0]
    total: Tensor | None = None
    for block in blocks:
        if block.shape[0] != K:
            raise ValueError(f"Jacobian blocks disagree on the number of tasks: {block.shape[0]} vs {K}")
        flat = block.reshape(K, -1)
        product = flat @ flat.T
        total = product if total is None else total + product
    assert total is not None
    return total


def jacobian_blocks(
    losses: Sequence[Tensor],
    inputs: Sequence[Tensor],
    *,
    method: JacobianMethod = "auto",
    retain_graph: bool = True,
) -> list[Tensor]:
    """Per-input Jacobian blocks of shape (K, *input.shape) for K scalar losses."""
    return jacobian_matrix(losses, inputs, method=method, retain_graph=retain_graph)[1]


def jacobian_matrix(
    losses: Sequence[Tensor],
    inputs: Sequence[Tensor],
    *,
    method: JacobianMethod = "auto",
    retain_graph: bool = True,
) -> tuple[Tensor | None, list[Tensor]]:
    """The K×P Jacobian (when it is one tensor) and its per-input blocks of shape (K, *input.shape).

    With the loop method (and inputs of one dtype and device), each task's gradients are written into
    one preallocated (K, P) matrix and the blocks are views of it: the Jacobian is held once (not as K
    rows plus a stacked copy), its Gramian is one matmul, and a combination of its rows one
    matrix-vector product. The batched method returns one block per input (the matrix is None).
    """
    if method not in _METHODS:
        raise ValueError(f"unknown Jacobian method {method!r}; expected one of {', '.join(_METHODS)}")
    K = len(losses)
    if method == "auto":
        method = choose_method(losses, inputs)
    if method == "loop" and len({(t.dtype, t.device) for t in inputs}) == 1:
        sizes = [t.numel() for t in inputs]
        matrix = torch.empty(K, sum(sizes), dtype=inputs[0].dtype, device=inputs[0].device)
        for t, loss in enumerate(losses):
            grads = torch.autograd.grad(
                loss,
                inputs,
                retain_graph=retain_graph or t < K - 1,
                allow_unused=True,
                materialize_grads=True,
            )
            torch.cat([g.reshape(-1) for g in grads], out=matrix[t])
        blocks, offset = [], 0
        for tensor, size in zip(inputs, sizes):
            blocks.append(matrix[:, offset : offset + size].view(K, *tensor.shape))
            offset += size
        return matrix, blocks
    return None, _jacobian_blocks(losses, inputs, method, retain_graph)


def _jacobian_blocks(
    losses: Sequence[Tensor], inputs: Sequence[Tensor], method: str, retain_graph: bool
) -> list[Tensor]:
    K = len(losses)
    if method == "batched":
        loss_vector = torch.stack(list(losses))
        identity = torch.eye(K, dtype=loss_vector.dtype, device=loss_vector.device)
        grads = torch.autograd.grad(
            loss_vector,
            inputs,
            grad_outputs=identity,
            is_grads_batched=True,
            retain_graph=retain_graph,
            allow_unused=True,
            materialize_grads=True,
        )
        return list(grads)
    rows = [
        torch.autograd.grad(
            loss,
            inputs,
            retain_graph=retain_graph or t < K - 1,
            allow_unused=True,
            materialize_grads=True,
        )
        for t, loss in enumerate(losses)
    ]
    return [torch.stack([row[i] for row in rows]) for i in range(len(inputs))]


def choose_method(losses: Sequence[Tensor], inputs: Sequence[Tensor]) -> Literal["batched", "loop"]:
    """The method ``"auto"`` stands for (see the module docstring); walks the graph, runs nothing."""
    K = len(losses)
    if K == 1:
        return "loop"
    stops = {t.grad_fn for t in inputs if t.grad_fn is not None}
    if not stops:  # leaf inputs: per-task subgraphs overlap in the shared layers
        return "loop" if graph_has_slow_vmap_ops(losses, inputs) else "batched"
    union: set[object] = set()
    visits = 0
    for loss in losses:
        nodes = set(walk_graph([loss.grad_fn], stops))
        if any(_is_slow_under_vmap(node) for node in nodes - union):
            return "loop"
        visits += len(nodes)
        union |= nodes
    # Loop cost ~ node visits summed over tasks; batched ~ K rows through the union of the subgraphs.
    return "batched" if visits >= 0.5 * K * len(union) else "loop"


def graph_has_slow_vmap_ops(losses: Tensor | Sequence[Tensor], inputs: Sequence[Tensor]) -> bool:
    """Whether the graph from the losses down to ``inputs`` contains a convolution backward node."""
    stops = {t.grad_fn for t in inputs if t.grad_fn is not None}
    roots = [losses] if isinstance(losses, Tensor) else list(losses)
    return any(_is_slow_under_vmap(node) for node in walk_graph([r.grad_fn for r in roots], stops))


def _is_slow_under_vmap(node: object) -> bool:
    name = type(node).__name__
    return any(marker in name for marker in _SLOW_UNDER_VMAP)


def walk_graph(roots: Sequence[object], stops: set[object] | None = None) -> Iterable[object]:
    """Depth-first walk over autograd nodes from ``roots``, not entering nodes in ``stops``."""
    stops = stops or set()
    seen: set[object] = set()  # the nodes themselves: keeps them alive, so identity is stable
    stack = list(roots)
    pop, push, mark = stack.pop, stack.extend, seen.add
    while stack:
        node = pop()
        if node is None or node in seen or node in stops:
            continue
        mark(node)
        yield node
        push([child for child, _ in node.next_functions])
