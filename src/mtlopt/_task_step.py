r"""The per-task-gradient step shared by :func:`mtlopt.backward` and :meth:`mtlopt.MAO.backward`.

scale → Jacobian → all-reduce → unscale → finite check naming the task → ``None`` on overflow (the
caller fills NaN into ``.grad`` so that the ``GradScaler`` skips the step).

Batch conventions across processes (each rank holds an equal share of the global batch, and its losses
are means over its share):

- per-task gradients w.r.t. parameters, and ``feature_batch="sum"``: the global batch's gradient is the
  mean of the ranks' gradients (the Jacobian is averaged, then its Gramian taken);
- gradients w.r.t. a representation Z, flattened: the Gramian is a sum over samples, so the ranks'
  Gramians are summed and divided by W².
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._checks import all_finite
from .distributed import all_reduce_mean_, all_reduce_sum_, world_size
from .errors import NonFiniteError
from .gradients import Jacobian, JacobianMethod, gramian
from .lean_gramian import LeanJacobian

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["StepContext", "checked_gramian", "checked_jacobian", "fill_nan"]


@dataclass
class StepContext:
    """What one multi-task backward step was given.

    Attributes:
        names: the K task names.
        items: the K graph-attached scalar losses (unscaled).
        scale: the ``GradScaler``'s scale (1.0 without one).
        group: the process group to synchronize over (None in one process).
        check_finite: raise on non-finite gradients (off under a scaler: it skips such steps).
        method: how per-task gradients are computed.
    """

    names: list[str]
    items: list[Tensor]
    scale: float
    group: ProcessGroup | None
    check_finite: bool
    method: JacobianMethod = "auto"

    def scaled_items(self) -> list[Tensor]:
        return self.items if self.scale == 1.0 else [loss * self.scale for loss in self.items]


def checked_gramian(
    ctx: StepContext,
    jac: Jacobian | LeanJacobian,
    what: str,
    inputs: Sequence[Tensor],
    feature_batch: str | None = None,
) -> Tensor | None:
    """The global batch's unscaled float64 CPU Gramian of a Jacobian of the *scaled* losses.

    ``feature_batch``: None for parameters; ``"flatten"`` or ``"sum"`` for a representation (see the
    module docstring). The Jacobian is all-reduced in place where the convention averages it, and left
    scaled. Returns None on overflow under a scaler; raises :class:`mtlopt.NonFiniteError` naming the
    tasks otherwise (unless ``check_finite`` is off).
    """
    if feature_batch == "sum":
        assert isinstance(jac, Jacobian)  # gradients w.r.t. a representation are held whole
        per_task = jac.blocks[0].sum(dim=1)
        all_reduce_mean_([per_task], ctx.group)
        G = gramian(per_task)
    elif feature_batch == "flatten":
        G = jac.gramian()
        if ctx.group is not None:
            all_reduce_sum_([G], ctx.group)
            G = G / world_size(ctx.group) ** 2
    else:
        all_reduce_jacobian(jac, ctx.group)
        G = jac.gramian()
    G64 = G.detach().to("cpu", torch.float64) / ctx.scale**2
    return G64 if usable_step(ctx, bool(torch.isfinite(G64).all()), jac, what, inputs) else None


def checked_jacobian(
    ctx: StepContext, inputs: Sequence[Tensor], what: str, retain_graph: bool
) -> Jacobian | None:
    """The global batch's unscaled per-task gradients w.r.t. ``inputs`` (averaged across ranks).

    None on overflow under a scaler; a :class:`mtlopt.NonFiniteError` naming the tasks otherwise.
    """
    jac = Jacobian.compute(ctx.scaled_items(), inputs, method=ctx.method, retain_graph=retain_graph)
    all_reduce_jacobian(jac, ctx.group)
    if ctx.scale != 1.0:
        jac.div_(ctx.scale)
    return jac if usable_step(ctx, all_finite(jac.tensors()), jac, what, inputs) else None


def all_reduce_jacobian(jac: Jacobian | LeanJacobian, group: ProcessGroup | None) -> None:
    """Average the Jacobian across ranks; an input reached on any rank counts as reached on every rank
    (a branch one rank's batch takes and another's does not), in the same collective. A Jacobian
    computed over the group (``synchronized``: the lean one) is the global batch's already."""
    if group is None or (isinstance(jac, LeanJacobian) and jac.synchronized):
        return
    flags = torch.tensor(jac.reached, dtype=torch.float32, device=jac.tensors()[0].device)
    all_reduce_mean_([*jac.tensors(), flags], group)
    jac.reached = (flags > 0).tolist()


def usable_step(
    ctx: StepContext, finite: bool, jac: Jacobian | LeanJacobian, what: str, inputs: Sequence[Tensor]
) -> bool:
    """Finite: usable. Otherwise an overflow under a scaler (not usable: the step is skipped), or an error
    naming the tasks (unless ``check_finite`` is off: used as it is)."""
    if finite:
        return True
    if ctx.scale != 1.0:
        return False
    if ctx.check_finite:
        _raise_non_finite(ctx, jac, what, inputs)
    return True


def fill_nan(params: Iterable[Tensor]) -> None:
    """Set ``.grad`` to NaN: an overflow under a GradScaler makes ``scaler.step`` skip the step."""
    for p in params:
        p.grad = torch.full_like(p, float("nan"))


def _raise_non_finite(
    ctx: StepContext, jac: Jacobian | LeanJacobian, what: str, inputs: Sequence[Tensor]
) -> None:
    if jac.exact_rows:
        bad = [name for name, ok in zip(ctx.names, jac.finite_rows()) if not ok]
    else:  # recompute task by task: a batched backward can spread one task's NaN to every row
        try:
            bad = []
            for name, loss in zip(ctx.names, ctx.items):
                grads = torch.autograd.grad(loss, list(inputs), retain_graph=True, allow_unused=True)
                if not all(g is None or bool(torch.isfinite(g).all()) for g in grads):
                    bad.append(name)
        except RuntimeError:  # the graph was freed: the rows are the best evidence left
            bad = [name for name, ok in zip(ctx.names, jac.finite_rows()) if not ok]
    detail = f"task(s) {', '.join(map(repr, bad))}" if bad else "the tasks (combined)"
    raise NonFiniteError(f"the gradient of {detail} w.r.t. {what} contains NaN or inf")
