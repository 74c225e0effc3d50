r"""The Gramian of K task gradients without the K×P Jacobian (``backward(..., method="lean")``).

For a weight used once, by a convolution (2-D, ``groups=1``) or a linear map, every task's gradient
factors through the layer's input and the gradient reaching its output,
:math:`\nabla_W L_t = \Delta_t^\top \tilde X`, with :math:`\tilde X \in \mathbb{R}^{N \times D}` the
input (unfolded into patches for a convolution: N = batch × output positions, D = input channels ×
kernel size) and :math:`\Delta_t \in \mathbb{R}^{N \times C}` the gradient of :math:`L_t` w.r.t. the
output. So

.. math::  \langle \nabla_W L_t, \nabla_W L_s \rangle = \operatorname{tr}(\Delta_t^\top M \Delta_s),
   \qquad M = \tilde X \tilde X^\top \in \mathbb{R}^{N \times N},

and the layer's K×K block of the Gramian needs the K output gradients (K·N·C numbers) and M, not the
K weight gradients (K·C·D numbers). :class:`LeanJacobian` takes that route for every such weight with
N < D (deep layers: few positions, many input channels) and holds the rows of the other parameters as
today's loop does; autograd is asked for the output gradients (``GradientEdge`` inputs), so it never
computes those weights' per-task gradients at all. The update of such a weight is
:math:`(\sum_t w_t \Delta_t)^\top \tilde X`, one product per layer.

The output gradients of the factored layers are held for one chunk of tasks at a time
(:class:`LeanJacobian`'s ``chunks``; by default as many chunks as make one chunk's output gradients no
larger than the rows, at most 4): each extra chunk costs backward passes through the factored layers
only, and the update one more pass of :math:`\sum_t w_t L_t` through them.

The result is the Gramian of the full Jacobian (the same numbers up to rounding). ``"auto"`` picks
it when the full Jacobian would take more than half of the memory left on its device (on any rank).

Under several processes (``group``) the global batch's per-task gradient of a factored weight is the
mean over the R ranks, :math:`\frac1R\sum_r \Delta_{t,r}^\top \tilde X_r = \bar\Delta_t^\top \bar X`
with :math:`\bar X` the ranks' inputs stacked (rank order) and :math:`\bar\Delta_t` their output
gradients stacked and divided by R: every rank gathers both (one collective per task, padded to the
largest rank's rows) and computes the global Gramian and update as one process would on
:math:`\sum_r N_r` rows; the held rows are averaged across ranks as the held Jacobian's are. The
ranks agree on which weights are factored (those every rank can factor with :math:`\sum_r N_r < D`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.graph import GradientEdge

from ._graph import walk_graph
from .distributed import all_gather_stack, all_reduce_mean_, world_size
from .gradients import Jacobian, in_own_dtype

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["LeanJacobian", "cross_gramian", "factorable_inputs", "jacobian_fits"]


@dataclass
class _Factored:
    """A weight whose per-task gradients are held as the output gradients of the one node using it."""

    index: int  # position among the inputs
    node: Any  # the autograd node whose output gradient is asked for
    kind: _Kind
    dc: bool  # the weight is the product's (D, C) operand, not a transposed (C, D) one
    rows: int  # N (under a group: Σ_r N_r, the stacked rows)
    dtype: torch.dtype  # the weight's: products in it, as the held Jacobian's (not autocast's half)
    channels: int  # C
    output: Tensor | None = None  # Δ of every task, (K, N, C), when held whole (one chunk)
    gramian: Tensor | None = None  # its K×K block of the Gramian
    rank_rows: list[int] | None = None  # N_r per rank (under a group)
    group: ProcessGroup | None = None
    _M: Tensor | None = None

    def patch_gramian(self) -> Tensor:
        """M = X̃ X̃ᵀ (N, N), computed once."""
        if self._M is None:
            patches = self.patches()
            with in_own_dtype(patches):
                self._M = patches @ patches.T
        return self._M

    def patches(self) -> Tensor:
        r"""X̃ (N, D) in the weight's dtype; under a group, every rank's stacked (:math:`\bar X`)."""
        local = self.kind.patches(self.node).to(self.dtype)
        return local if self.group is None else _gather_rows([local], [self], self.group, 1.0)[0]


class LeanJacobian:
    """Per-task gradients w.r.t. ``inputs`` held as rows for some inputs and as output gradients of
    their layers for the others (see the module docstring); the interface of
    :class:`mtlopt.gradients.Jacobian` that a Gramian weighting's step uses.

    The output gradients are held for one chunk of tasks at a time: with ``chunks`` c > 1, the tasks of
    chunk j are held while those of the later chunks are crossed with them one by one, which takes
    K(c − 1)/2 extra backward passes through the factored layers only (autograd stops at the lowest
    one), and one more of :math:`\\sum_t w_t L_t` for the update.

    Attributes:
        reached: per input, whether some task's loss reaches it.
        exact_rows: always True (one backward pass per task).
        chunks: the number of chunks of tasks the output gradients were held in.
        synchronized: computed over a process group (its products are the global batch's already).
    """

    exact_rows = True

    def __init__(
        self,
        losses: Sequence[Tensor],
        inputs: Sequence[Tensor],
        rows: Tensor,
        row_inputs: list[int],
        factored: list[_Factored],
        chunks: int,
        group: ProcessGroup | None = None,
    ) -> None:
        self._losses = list(losses)
        self._inputs = list(inputs)
        self._rows = rows  # (K, P of the row inputs)
        self._row_inputs = row_inputs
        blocks, offset = [], 0
        for i in row_inputs:
            size = inputs[i].numel()
            blocks.append(rows[:, offset : offset + size].view(len(losses), *inputs[i].shape))
            offset += size
        self._held = Jacobian(blocks, rows)  # the rows, with the held Jacobian's products
        self._factored = factored
        self._finite = torch.ones(len(losses), dtype=torch.bool, device=rows.device)
        self.chunks = chunks
        self.reached = [False] * len(self._inputs)
        self.group = group
        self.synchronized = group is not None

    @classmethod
    def compute(
        cls,
        losses: Sequence[Tensor],
        inputs: Sequence[Tensor],
        *,
        retain_graph: bool = True,
        chunks: int | None = None,
        factor: Collection[int] | None = None,
        group: ProcessGroup | None = None,
    ) -> LeanJacobian:
        """The rows of the small inputs and the Gramian blocks of the factored ones.

        Args:
            losses: K scalar losses.
            inputs: tensors requiring grad (the shared parameters).
            retain_graph: keep the graph after the last pass (it is kept in any case when the output
                gradients are held in several chunks: the update takes one more pass).
            chunks: chunks of tasks the output gradients are held in; None: as many as make each
                chunk's output gradients no larger than the rows, at most 4.
            factor: factor only the inputs at these positions (the others keep rows); None: every
                input worth factoring (:func:`factorable_inputs`).
            group: the process group whose ranks each hold a part of the global batch (None: one
                process); every rank calls this with the same K and inputs.
        """
        K = len(losses)
        factored = _factorable(losses, inputs, group)
        if factor is not None:
            factored = [f for f in factored if f.index in factor]
        factored.sort(key=lambda f: f.index)
        chosen = {f.index for f in factored}
        row_inputs = [i for i in range(len(inputs)) if i not in chosen]
        sizes = [inputs[i].numel() for i in row_inputs]
        if chunks is None:
            held = sum(f.rows * f.channels for f in factored)  # N · C
            chunks = max(1, min(4, -(-held // max(sum(sizes), 1))))
        if not (isinstance(chunks, int) and chunks >= 1):
            raise ValueError(f"chunks must be an int >= 1 or None, got {chunks!r}")
        chunks = min(chunks, K) if factored else 1
        ref = inputs[0]
        rows = torch.zeros(K, sum(sizes), dtype=ref.dtype, device=ref.device)
        jac = cls(losses, inputs, rows, row_inputs, factored, chunks, group)
        jac._run(sizes, retain_graph or chunks > 1)
        if group is not None:  # the rows as the held Jacobian's: averaged; reached on any rank
            flags = torch.tensor(jac.reached, dtype=torch.float32, device=rows.device)
            all_reduce_mean_([rows, flags], group)
            jac.reached = (flags > 0).tolist()
        return jac

    def _run(self, sizes: list[int], retain_graph: bool) -> None:
        """The passes: chunk 0's tasks with every input, then each chunk's with the factored layers'."""
        K, factored = self.num_tasks, self._factored
        row_targets = [self._inputs[i] for i in self._row_inputs]
        # The gradient reaching a factored layer's output: autograd skips that weight's own gradient.
        edges = [GradientEdge(f.node, 0) for f in factored]
        for f in factored:
            f.gramian = self._rows.new_zeros(K, K)
        bounds = [round(j * K / self.chunks) for j in range(self.chunks + 1)]
        for j in range(self.chunks):
            start, stop = bounds[j], bounds[j + 1]
            held: list[Tensor | None] = [None] * len(factored)
            for t in range(start, K):
                targets: Any = row_targets + edges if j == 0 else edges
                last = j == self.chunks - 1 and t == K - 1
                grads = torch.autograd.grad(
                    self._losses[t], targets, retain_graph=retain_graph or not last, allow_unused=True
                )
                if j == 0:
                    self._write_rows(t, sizes, grads[: len(row_targets)])
                for n, (f, delta) in enumerate(
                    zip(factored, self._outputs(grads[len(targets) - len(edges) :]))
                ):
                    if delta is None:
                        continue
                    self._finite[t] &= torch.isfinite(delta).all()
                    if t < stop:  # a task of this chunk: held
                        if held[n] is None:
                            held[n] = delta.new_zeros((stop - start, *delta.shape))
                        held[n][t - start] = delta  # type: ignore[index]
                    elif held[n] is not None:  # a later task: crossed with this chunk's
                        _cross_into(f, held[n], start, delta, t)  # type: ignore[arg-type]
                if t == stop - 1:
                    for f, block in zip(factored, held):
                        if block is not None:
                            _within_into(f, block, start)
            if self.chunks == 1:
                for f, block in zip(factored, held):
                    f.output = block
        for f in factored:
            f._M = None
            assert f.gramian is not None
            f.gramian = (f.gramian + f.gramian.T) / 2

    def _outputs(
        self, grads: Sequence[Tensor | None], factored: list[_Factored] | None = None
    ) -> list[Tensor | None]:
        """The factored layers' output gradients as (N, C) rows (marking them reached); under a group,
        every rank's stacked and divided by R (a layer one rank's batch does not reach: zeros there)."""
        factored = self._factored if factored is None else factored
        for f, g in zip(factored, grads):
            if g is not None:
                self.reached[f.index] = True
        if self.group is None:
            return [None if g is None else _as_rows(g).to(f.dtype) for f, g in zip(factored, grads)]
        local = [
            _as_rows(g).to(f.dtype)
            if g is not None
            else torch.zeros(
                f.rank_rows[torch.distributed.get_rank(self.group)] if f.rank_rows else 0,
                f.channels,
                dtype=f.dtype,
                device=self._rows.device,
            )
            for f, g in zip(factored, grads)
        ]
        return list(_gather_rows(local, factored, self.group, 1.0 / world_size(self.group)))

    def _write_rows(self, t: int, sizes: list[int], grads: Sequence[Tensor | None]) -> None:
        offset = 0
        for i, size, g in zip(self._row_inputs, sizes, grads):
            if g is not None:
                self._rows[t, offset : offset + size] = g.reshape(-1)
                self.reached[i] = True
            offset += size

    @property
    def num_tasks(self) -> int:
        return self._rows.shape[0]

    @property
    def factored_inputs(self) -> list[int]:
        """Positions of the inputs whose per-task gradients are held as output gradients."""
        return [f.index for f in self._factored]

    def tensors(self) -> list[Tensor]:
        """The tensors holding the per-task gradients (to check or rescale in place)."""
        return [self._rows] + [f.output for f in self._factored if f.output is not None]

    def gramian(self) -> Tensor:
        """:math:`J J^\\top`, K×K, in the gradients' dtype and device."""
        return self.gramian_of(range(len(self._inputs)))

    def gramian_of(self, indices: Sequence[int] | range) -> Tensor:
        """The Gramian of the inputs at ``indices`` alone (e.g. one group of GradVac's)."""
        wanted = set(indices)
        rows = [n for n, i in enumerate(self._row_inputs) if i in wanted]
        total = self._held.gramian_of(rows) if rows else self._rows.new_zeros(self.num_tasks, self.num_tasks)
        for f in self._factored:
            if f.index in wanted and f.gramian is not None:
                total = total + f.gramian
        return total

    def combine(self, weights: Tensor) -> list[Tensor]:
        r""":math:`\sum_t w_t \nabla L_t` per input."""
        return self.combine_each([weights] * len(self._inputs))

    def combine_each(self, weights: Sequence[Tensor]) -> list[Tensor]:
        """Per input i, :math:`\\sum_t w^{(i)}_t \\nabla L_t` with that input's own weights: the rows'
        products, and per factored layer :math:`(\\sum_t w_t \\Delta_t)^\\top \\tilde X` — from the held
        output gradients, or (several chunks) from one pass of :math:`\\sum_t w_t L_t` per distinct
        weight vector through the factored layers."""
        directions: list[Tensor | None] = [None] * len(self._inputs)
        row_weights = [weights[i] for i in self._row_inputs]
        for i, direction in zip(self._row_inputs, self._held.combine_each(row_weights)):
            directions[i] = direction
        for f, delta in self._combined_outputs(weights):
            x = self._inputs[f.index]
            if delta is None:
                directions[f.index] = torch.zeros_like(x)
                continue
            patches = f.patches()
            with in_own_dtype(delta):
                grad = patches.T @ delta if f.dc else delta.T @ patches
            directions[f.index] = grad.reshape(x.shape)
        return [d for d in directions if d is not None]

    def _combined_outputs(self, weights: Sequence[Tensor]) -> list[tuple[_Factored, Tensor | None]]:
        """Per factored layer, :math:`\\sum_t w_t \\Delta_t` (N, C) with its input's weights."""
        if self.chunks == 1:
            out: list[tuple[_Factored, Tensor | None]] = []
            for f in self._factored:
                if f.output is None:
                    out.append((f, None))
                    continue
                w = weights[f.index].to(f.output.device, f.output.dtype)
                with in_own_dtype(w):
                    out.append((f, torch.tensordot(w, f.output, dims=1)))
            return out
        by_weights: list[tuple[Tensor, list[_Factored]]] = []
        for f in self._factored:
            w = weights[f.index]
            for seen, members in by_weights:
                if torch.equal(seen, w):
                    members.append(f)
                    break
            else:
                by_weights.append((w, [f]))
        out = []
        losses = torch.stack([loss.to(self._rows.dtype) for loss in self._losses])
        for w, members in by_weights:
            total = (w.to(losses.device, losses.dtype) * losses).sum()
            grads = torch.autograd.grad(
                total, [GradientEdge(f.node, 0) for f in members], retain_graph=True, allow_unused=True
            )
            out += list(zip(members, self._outputs(grads, members)))
        return out

    def finite_rows(self) -> list[bool]:
        """Per task, whether its row and its output gradients (checked as they came) are finite."""
        return (self._finite & torch.isfinite(self._rows).all(dim=1)).tolist()


_SLICE = 8  # tasks per product with M, which bounds the transient (slice, N, C) tensor


def _within_into(f: _Factored, held: Tensor, start: int) -> None:
    """The block of f's Gramian among the held tasks start, start + 1, ..."""
    assert f.gramian is not None
    m, M = held.shape[0], f.patch_gramian()
    flat = held.reshape(m, -1)
    with in_own_dtype(held):
        for a in range(0, m, _SLICE):
            weighted = torch.matmul(M, held[a : a + _SLICE])  # (slice, N, C)
            f.gramian[start : start + m, start + a : start + a + weighted.shape[0]] = (
                flat @ weighted.reshape(weighted.shape[0], -1).T
            )


def _cross_into(f: _Factored, held: Tensor, start: int, delta: Tensor, t: int) -> None:
    """The entries of f's Gramian between the held tasks and task t (not held)."""
    assert f.gramian is not None
    with in_own_dtype(delta):
        column = held.reshape(held.shape[0], -1) @ (f.patch_gramian() @ delta).reshape(-1)
    f.gramian[start : start + held.shape[0], t] = column
    f.gramian[t, start : start + held.shape[0]] = column


def factorable_inputs(
    losses: Sequence[Tensor], inputs: Sequence[Tensor], group: ProcessGroup | None = None
) -> set[int]:
    """Positions of the inputs :class:`LeanJacobian` would factor for these losses (on every rank)."""
    return {f.index for f in _factorable(losses, inputs, group)}


def _gather_rows(
    parts: Sequence[Tensor], factored: Sequence[_Factored], group: ProcessGroup, factor: float
) -> list[Tensor]:
    """Per layer, every rank's (N_r, C) part stacked in rank order, times ``factor``: one collective,
    each part padded to the largest rank's rows."""
    if not parts:
        return []
    tops = [max(f.rank_rows or [0]) for f in factored]
    dtype = parts[0].dtype
    flat = torch.cat(
        [F.pad(p.to(dtype), (0, 0, 0, top - p.shape[0])).reshape(-1) for p, top in zip(parts, tops)]
    )
    table = all_gather_stack(flat[None], group)  # (R, Σ_l top_l · C_l)
    out, offset = [], 0
    for p, f, top in zip(parts, factored, tops):
        width = p.shape[1]
        block = table[:, offset : offset + top * width].reshape(-1, top, width)
        assert f.rank_rows is not None
        stacked = torch.cat([block[r, :n] for r, n in enumerate(f.rank_rows)])
        out.append((stacked * factor if factor != 1.0 else stacked).to(p.dtype))
        offset += top * width
    return out


def cross_gramian(a: LeanJacobian, b: LeanJacobian) -> Tensor:
    """:math:`J_a J_b^\\top` (K×K, not symmetric) of two batches' per-task gradients w.r.t. the same
    inputs (MoDo's and SDMGrad's cross-Gramian), each held in one chunk with the same inputs factored:
    a factored layer's block is :math:`\\operatorname{tr}(\\Delta^a_t{}^\\top \\tilde X_a \\tilde X_b^\\top
    \\Delta^b_s)`."""
    if a.chunks != 1 or b.chunks != 1 or a.factored_inputs != b.factored_inputs:
        raise ValueError("cross_gramian needs two LeanJacobians of one chunk with the same factored inputs")
    with in_own_dtype(a._rows):
        total = a._rows @ b._rows.T
    K = a.num_tasks
    for fa, fb in zip(a._factored, b._factored):
        if fa.output is None or fb.output is None:
            continue
        with in_own_dtype(fa.output):
            M = fa.patches() @ fb.patches().T  # (N_a, N_b)
            total = total + fa.output.reshape(K, -1) @ torch.matmul(M, fb.output).reshape(K, -1).T
    return total


def jacobian_fits(num_tasks: int, inputs: Sequence[Tensor], share: float = 0.5) -> bool:
    """Whether a K×P Jacobian of ``inputs`` takes at most ``share`` of the memory left on their device
    (CUDA: ``torch.cuda.mem_get_info``; CPU: the system's available memory; other devices: assumed)."""
    need = num_tasks * sum(t.numel() * t.element_size() for t in inputs)
    free = _free_bytes(inputs[0].device)
    return free is None or need <= share * free


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as info:
                for line in info:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def _factorable(
    losses: Sequence[Tensor], inputs: Sequence[Tensor], group: ProcessGroup | None = None
) -> list[_Factored]:
    r"""The inputs worth factoring: weights used once, by a 2-D convolution (``groups=1``) or a matrix
    product, whose layer has fewer rows N than the weight has input features D; under a group, those
    every rank can factor with :math:`\sum_r N_r < D`."""
    position = {id(t): i for i, t in enumerate(inputs)}
    nodes = list(walk_graph([loss.grad_fn for loss in losses]))
    uses: dict[object, int] = {}
    for node in nodes:
        for child, _ in node.next_functions:  # type: ignore[attr-defined]
            if child is not None:
                uses[child] = uses.get(child, 0) + 1
    found: list[_Factored] = []
    for node in nodes:
        kind = _KINDS.get(type(node).__name__)
        if kind is None:
            continue
        child = node.next_functions[kind.weight_edge][0]  # type: ignore[attr-defined]
        dc = True  # the weight is the (D, C) operand of the product
        for hop in ("ToCopyBackward0", "TBackward0", "ToCopyBackward0"):  # autocast's cast, a transpose
            if child is not None and type(child).__name__ == hop and uses.get(child) == 1:
                dc ^= hop == "TBackward0"
                child = child.next_functions[0][0]
        variable = getattr(child, "variable", None)
        index = position.get(id(variable)) if isinstance(variable, Tensor) else None
        if index is None or uses.get(child) != 1:
            continue
        try:
            shape = kind.rows_and_features(node)
        except RuntimeError:  # a saved tensor that cannot be read (freed, or recomputed by a checkpoint)
            continue
        if shape is not None and shape[0] < shape[1]:
            dc = dc and kind.name != "conv"
            weight = inputs[index]
            channels = weight.shape[1] if dc else weight.shape[0]
            found.append(_Factored(index, node, kind, dc, shape[0], weight.dtype, channels))
    return found if group is None else _agreed(found, inputs, group)


def _agreed(found: list[_Factored], inputs: Sequence[Tensor], group: ProcessGroup) -> list[_Factored]:
    r"""The factored weights every rank found, with :math:`\sum_r N_r < D`; their ranks' rows."""
    local = torch.full((1, len(inputs)), -1.0, dtype=torch.float64, device=inputs[0].device)
    for f in found:
        local[0, f.index] = f.rows
    table = all_gather_stack(local, group).cpu()  # (R, inputs): N_r, or -1 where rank r cannot factor
    agreed = []
    for f in found:
        column = table[:, f.index]
        features = inputs[f.index].numel() // f.channels
        if bool((column >= 0).all()) and float(column.sum()) < features:
            f.rank_rows = [int(n) for n in column]
            f.rows = sum(f.rank_rows)
            f.group = group
            agreed.append(f)
    return agreed


@dataclass(frozen=True)
class _Kind:
    """How to read one kind of node: which edge holds the weight, N and D, and X̃."""

    name: str
    weight_edge: int

    def rows_and_features(self, node: Any) -> tuple[int, int] | None:
        """(N, D) of the layer, from shapes alone; None where the node is not of the handled form."""
        if self.name == "conv":
            weight, x = node._saved_weight, node._saved_input
            if node._saved_transposed or node._saved_groups != 1 or weight.ndim != 4 or x.ndim != 4:
                return None
            positions = 1
            for size, k, s, p, d in zip(
                x.shape[2:], weight.shape[2:], node._saved_stride, node._saved_padding, node._saved_dilation
            ):
                positions *= (size + 2 * p - d * (k - 1) - 1) // s + 1
            return x.shape[0] * positions, weight.shape[1] * weight.shape[2] * weight.shape[3]
        if self.name == "addmm" and node._saved_alpha != 1:
            return None
        x = self.patches(node)
        return None if x is None or x.ndim != 2 else (x.shape[0], x.shape[1])

    def patches(self, node: Any) -> Tensor:
        """X̃ (N, D): the unfolded input of a convolution, the input matrix of a product."""
        if self.name == "conv":  # detached: the saved input is part of the graph
            x, weight = node._saved_input.detach(), node._saved_weight
            cols = F.unfold(
                x,
                weight.shape[2:],
                dilation=node._saved_dilation,
                padding=node._saved_padding,
                stride=node._saved_stride,
            )  # (B, D, L)
            return cols.transpose(1, 2).reshape(-1, cols.shape[1])
        return (node._saved_mat1 if self.name == "addmm" else node._saved_self).detach()


_KINDS = {
    "ConvolutionBackward0": _Kind("conv", 1),
    "AddmmBackward0": _Kind("addmm", 2),
    "MmBackward0": _Kind("mm", 1),
}


def _as_rows(grad: Tensor) -> Tensor:
    """A layer's output gradient, (B, C, *positions) or (N, C), as (N, C) with N in the patches' order."""
    if grad.ndim == 2:
        return grad
    B, C = grad.shape[:2]
    return grad.reshape(B, C, -1).transpose(1, 2).reshape(-1, C)
