r"""Per-task gradients: the Jacobian of K losses and its Gramian.

For losses :math:`L_1, \dots, L_K` and inputs :math:`\theta` (shared parameters, or a shared
representation :math:`Z`), the Jacobian stacks the task gradients as rows,
:math:`J = [\nabla_\theta L_1; \dots; \nabla_\theta L_K] \in \mathbb{R}^{K \times P}`, and the Gramian is
:math:`G = J J^\top \in \mathbb{R}^{K \times K}`.

Two ways to compute J, with the same result:

- ``"batched"``: one call of ``torch.autograd.grad(..., is_grads_batched=True)`` (vmap over the K
  one-hot output gradients);
- ``"loop"``: K calls of ``torch.autograd.grad``, each writing its row of one preallocated K×P matrix
  (:class:`Jacobian`): the Jacobian is held once, and its per-parameter blocks are views.

``"auto"`` (:func:`choose_method`) decides from the structure of the graph, with no timing:

- a convolution anywhere in the differentiated graph → loop: on the CPU, convolution backward under
  vmap is slower than a loop of backward calls;
- a ``torch.compile``'d module in it → loop: torch cannot vmap its compiled backward (``"batched"``
  then raises a ``ValueError`` naming ``"loop"``);
- inputs that are leaves (shared parameters) → batched: every task's path runs through the shared
  layers, which vmap processes for all K rows at once;
- inputs that are intermediate tensors (a representation Z) → loop, unless the tasks' subgraphs are
  mostly shared: vmap sends all K rows through every task's head (K² head passes), while the loop
  differentiates each task's own head once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ._checks import LossesLike, as_loss_vector, as_tensors
from ._graph import walk_graph
from ._options import choices

__all__ = ["Jacobian", "JacobianMethod", "feature_jacobian", "gramian", "jacobian"]

JacobianMethod = Literal["auto", "batched", "loop"]
# Backward nodes for which vmap over the backward pass is slower than a loop of backward calls.
_SLOW_UNDER_VMAP = ("Convolution", "Conv2D", "Conv3D", "SlowConv", "Cudnn", "Mkldnn")
# Backward nodes vmap cannot run at all: the compiled backward of a torch.compile'd module.
_NOT_UNDER_VMAP = ("CompiledFunction",)


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
    return Jacobian.compute(items, inputs, method=method, retain_graph=retain_graph).matrix()


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


def in_own_dtype(tensor: Tensor) -> torch.autocast:
    """Autocast off on ``tensor``'s device: products of (scaled) gradients in their own dtype, since an
    autocast float16 matmul of a GradScaler-scaled Jacobian overflows where J itself is finite."""
    return torch.autocast(tensor.device.type, enabled=False)


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
        with in_own_dtype(flat):
            product = flat @ flat.T
        total = product if total is None else total + product
    assert total is not None
    return total


class Jacobian:
    """Per-task gradients w.r.t. some inputs: one block of shape (K, *input.shape) per input.

    With the loop method (and inputs of one dtype and device) each task's gradients are written into
    one preallocated (K, P) matrix and the blocks are views of it: the Jacobian is held once, its
    Gramian is one matmul and a combination of its rows one matrix-vector product. Call sites use the
    methods below and never ask which of the two layouts they have.

    Attributes:
        blocks: the per-input blocks.
        exact_rows: whether row t is task t's gradient alone (loop); a batched computation may spread
            one task's NaN to every row (vmap sends all rows through every node, and 0 · inf = NaN).
        reached: per input, whether autograd gave some task a gradient for it; an input no loss
            reaches has zero rows, and :func:`mtlopt.backward` and MAO leave it alone, as
            ``loss.backward()`` leaves such a ``.grad``.
    """

    def __init__(
        self,
        blocks: list[Tensor],
        matrix: Tensor | None = None,
        exact_rows: bool = True,
        reached: list[bool] | None = None,
    ) -> None:
        self.blocks = blocks
        self._matrix = matrix
        self.exact_rows = exact_rows
        self.reached = [True] * len(blocks) if reached is None else reached

    @classmethod
    def compute(
        cls,
        losses: Sequence[Tensor],
        inputs: Sequence[Tensor],
        *,
        method: JacobianMethod = "auto",
        retain_graph: bool = True,
    ) -> Jacobian:
        """The Jacobian of K scalar losses w.r.t. ``inputs`` (an input a loss does not reach: zero rows)."""
        if method not in choices(JacobianMethod):
            expected = ", ".join(choices(JacobianMethod))
            raise ValueError(f"unknown Jacobian method {method!r}; expected one of {expected}")
        K = len(losses)
        if method == "auto":
            method = choose_method(losses, inputs)
        if method == "loop" and len({(t.dtype, t.device) for t in inputs}) == 1:
            sizes = [t.numel() for t in inputs]
            matrix = torch.empty(K, sum(sizes), dtype=inputs[0].dtype, device=inputs[0].device)
            reached = [False] * len(inputs)
            zeros: dict[int, Tensor] = {}
            for t, loss in enumerate(losses):
                grads = _task_gradients(loss, inputs, retain_graph or t < K - 1)
                parts = []
                for i, g in enumerate(grads):
                    if g is None:  # no gradient of this loss reaches input i
                        g = zeros.get(i)
                        if g is None:
                            g = zeros[i] = inputs[i].new_zeros(sizes[i])
                    else:
                        reached[i] = True
                    parts.append(g.reshape(-1))
                torch.cat(parts, out=matrix[t])
            blocks, offset = [], 0
            for tensor, size in zip(inputs, sizes):
                blocks.append(matrix[:, offset : offset + size].view(K, *tensor.shape))
                offset += size
            return cls(blocks, matrix, reached=reached)
        blocks, reached = _jacobian_blocks(losses, inputs, method, retain_graph)
        return cls(blocks, exact_rows=method == "loop", reached=reached)

    @property
    def num_tasks(self) -> int:
        return self.blocks[0].shape[0]

    def tensors(self) -> list[Tensor]:
        """The tensors holding the Jacobian (the matrix, or the blocks): to reduce or check in place."""
        return [self._matrix] if self._matrix is not None else self.blocks

    def matrix(self) -> Tensor:
        """The (K, P) Jacobian (a copy only when the blocks are separate tensors)."""
        if self._matrix is not None:
            return self._matrix
        K = self.num_tasks
        return torch.cat([b.reshape(K, -1) for b in self.blocks], dim=1)

    def gramian(self) -> Tensor:
        """:math:`J J^\\top`, K×K, in the Jacobian's dtype and device."""
        return gramian(self.tensors())

    def gramian_of(self, indices: Sequence[int]) -> Tensor:
        """The Gramian of the inputs at ``indices`` alone (e.g. one group of GradVac's)."""
        return gramian([self.blocks[i] for i in indices])

    def div_(self, value: float) -> None:
        """Divide every gradient by ``value`` in place (e.g. a loss scale)."""
        for tensor in self.tensors():
            tensor.div_(value)

    def combine(self, weights: Tensor) -> list[Tensor]:
        r""":math:`\sum_t w_t J_t` per input (views of one matrix-vector product when there is a matrix)."""
        if self._matrix is None:
            return self.combine_each([weights] * len(self.blocks))
        w = weights.to(self._matrix.device, self._matrix.dtype)
        with in_own_dtype(w):
            combined = w @ self._matrix
        directions, offset = [], 0
        for block in self.blocks:
            size = block[0].numel()
            directions.append(combined[offset : offset + size].view(block.shape[1:]))
            offset += size
        return directions

    def combine_each(self, weights: Sequence[Tensor]) -> list[Tensor]:
        r"""Per input i, :math:`\sum_t w^{(i)}_t J_t` with that input's own weights ``weights[i]``."""
        out = []
        for w, block in zip(weights, self.blocks):
            w = w.to(block.device, block.dtype)
            with in_own_dtype(w):
                out.append(torch.tensordot(w, block, dims=1))
        return out

    def finite_rows(self) -> list[bool]:
        """Per task, whether its row is finite (meaningful as a culprit only with ``exact_rows``)."""
        K = self.num_tasks
        flags = torch.ones(K, dtype=torch.bool, device=self.blocks[0].device)
        for tensor in self.tensors():
            flags &= torch.isfinite(tensor.reshape(K, -1)).all(dim=1)
        return flags.tolist()


def jacobian_blocks(
    losses: Sequence[Tensor],
    inputs: Sequence[Tensor],
    *,
    method: JacobianMethod = "auto",
    retain_graph: bool = True,
) -> list[Tensor]:
    """Per-input Jacobian blocks of shape (K, *input.shape) for K scalar losses."""
    return Jacobian.compute(losses, inputs, method=method, retain_graph=retain_graph).blocks


def _task_gradients(loss: Tensor, inputs: Sequence[Tensor], retain_graph: bool) -> tuple[Tensor | None, ...]:
    """One task's gradients; None where autograd gives the loss no gradient for an input."""
    try:
        return torch.autograd.grad(loss, inputs, retain_graph=retain_graph, allow_unused=True)
    except RuntimeError as error:
        if retain_graph and "donated buffer" in str(error):
            raise ValueError(
                "per-task gradients take one backward pass per task through a torch.compile'd module, but "
                "its compiled backward donates its saved tensors and can run only once; set "
                "torch._functorch.config.donated_buffer = False before the module first runs (docs/compile.md)"
            ) from error
        raise


def _jacobian_blocks(
    losses: Sequence[Tensor], inputs: Sequence[Tensor], method: str, retain_graph: bool
) -> tuple[list[Tensor], list[bool]]:
    """The (K, *input.shape) blocks and, per input, whether some loss reaches it (else zero rows)."""
    K = len(losses)
    if method == "batched":
        loss_vector = torch.stack(list(losses))
        identity = torch.eye(K, dtype=loss_vector.dtype, device=loss_vector.device)
        try:
            grads = torch.autograd.grad(
                loss_vector,
                inputs,
                grad_outputs=identity,
                is_grads_batched=True,
                retain_graph=retain_graph,
                allow_unused=True,
            )
        except (RuntimeError, NotImplementedError) as error:
            if _has_node(losses, inputs, _NOT_UNDER_VMAP):
                raise ValueError(
                    "method='batched' cannot differentiate through a torch.compile'd module (torch has no "
                    "vmap of its compiled backward); use method='loop', or 'auto', which picks it"
                ) from error
            raise
        reached = [g is not None for g in grads]
        # A defined gradient of a batched call has the task dimension; one no row reaches is None.
        return [x.new_zeros((K, *x.shape)) if g is None else g for g, x in zip(grads, inputs)], reached
    rows = [_task_gradients(loss, inputs, retain_graph or t < K - 1) for t, loss in enumerate(losses)]
    blocks, reached = [], []
    for i, x in enumerate(inputs):
        column = [row[i] for row in rows]
        reached.append(any(g is not None for g in column))
        blocks.append(torch.stack([torch.zeros_like(x) if g is None else g for g in column]))
    return blocks, reached


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
    """Whether the graph from the losses down to ``inputs`` has a node vmap runs slowly (a convolution's
    backward) or not at all (a torch.compile'd module's backward)."""
    return _has_node(losses, inputs, _SLOW_UNDER_VMAP + _NOT_UNDER_VMAP)


def _has_node(losses: Tensor | Sequence[Tensor], inputs: Sequence[Tensor], markers: tuple[str, ...]) -> bool:
    stops = {t.grad_fn for t in inputs if t.grad_fn is not None}
    roots = [losses] if isinstance(losses, Tensor) else list(losses)
    nodes = walk_graph([r.grad_fn for r in roots], stops)
    return any(marker in type(node).__name__ for node in nodes for marker in markers)


def _is_slow_under_vmap(node: object) -> bool:
    """Whether vmap runs the node slowly or not at all (then the loop is taken)."""
    name = type(node).__name__
    return any(marker in name for marker in _SLOW_UNDER_VMAP + _NOT_UNDER_VMAP)
