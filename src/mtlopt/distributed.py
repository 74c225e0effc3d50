"""Synchronization across processes (``torchrun`` / ``torch.distributed``) for the MTL methods.

PyTorch's ``DistributedDataParallel`` reduces gradients during one ordinary backward pass. Methods that
need per-task gradients take several backward passes and combine them, which DDP's reducer cannot
follow. mtlopt therefore synchronizes what each method computes, where the method needs it, so that
every rank takes the same update, the one a single process would take on the global batch (the
concatenation of the ranks' equally sized batches):

- ordinary backward (EW, fixed and loss-based weightings): the gradients are averaged;
- per-task gradients w.r.t. shared parameters (MGDA, MAO, PCGrad, ...): the per-task gradients are
  averaged *before* the weights or moments are computed, then each rank writes the same ``.grad``;
- per-task gradients w.r.t. a representation (MGDA-UB): the Gramian is a sum over samples, so the
  ranks' Gramians are summed and divided by W² (for equal batch means); the gradients then
  backpropagated through the encoder are averaged;
- alternating steps: each sub-step's gradients are averaged;
- populations: members live on different ranks; the transfer gathers the other members' parameters.

Use ``sync="auto"`` (the default of the functions that take it): synchronize when a default process
group with more than one process exists. Do not wrap the model in ``DistributedDataParallel`` as well,
or gradients are reduced twice; start every rank from the same parameters with
:func:`broadcast_module`. BatchNorm statistics stay per rank (use ``SyncBatchNorm`` for exactness).
Import mtlopt before ``init_process_group``: ``destroy_process_group()`` then frees the group (torch
otherwise keeps it alive once the first optimizer is built, and its gloo threads can abort the process at
exit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal, TypeAlias

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

if torch.distributed.is_available():
    # torch.distributed.nn.functional takes ``group=group.WORLD`` as the default argument of its
    # collectives, evaluated when it is first imported, which torch.optim does (through torch._dynamo)
    # with the first optimizer of the process. Imported after init_process_group, these defaults hold
    # the default group, so that destroy_process_group() no longer frees it: the gloo backend and its
    # threads live on into interpreter shutdown, where a thread still releasing a collective's tensors
    # (which takes the GIL) aborts the process ("terminate called without an active exception").
    # Imported with mtlopt, before init_process_group, they hold None.
    import torch.distributed.nn.functional

__all__ = [
    "all_gather_stack",
    "all_reduce_mean_",
    "all_reduce_sum_",
    "any_rank",
    "broadcast_module",
    "resolve_group",
    "world_size",
]

Sync: TypeAlias = 'Literal["auto"] | bool | ProcessGroup | None'
"""What a ``sync=`` argument takes: ``"auto"``, ``True``, ``False``/``None`` or a ``ProcessGroup``."""


def resolve_group(sync: Sync = "auto") -> ProcessGroup | None:
    """The process group to synchronize over, or None for no synchronization.

    ``"auto"``: the default group when ``torch.distributed`` is initialized with more than one process;
    ``True``: the default group (error if none); ``False``/``None``: none; a ProcessGroup: that group.
    """
    if sync is None or sync is False:
        return None
    available = torch.distributed.is_available() and torch.distributed.is_initialized()
    if sync == "auto":
        return torch.distributed.group.WORLD if available and torch.distributed.get_world_size() > 1 else None
    if sync is True:
        if not available:
            raise RuntimeError("sync=True needs torch.distributed to be initialized (e.g. under torchrun)")
        return torch.distributed.group.WORLD
    return sync


def world_size(group: ProcessGroup | None) -> int:
    return 1 if group is None else torch.distributed.get_world_size(group)


def all_reduce_sum_(tensors: Sequence[Tensor], group: ProcessGroup | None) -> None:
    """Sum the tensors across ranks, in place, with one collective call."""
    tensors = [t for t in tensors if t is not None]
    if group is None or not tensors:
        return
    flat = torch.cat(
        [t.reshape(-1).to(torch.float64 if t.dtype == torch.float64 else torch.float32) for t in tensors]
    )
    torch.distributed.all_reduce(flat, group=group)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def all_reduce_mean_(tensors: Sequence[Tensor], group: ProcessGroup | None) -> None:
    """Average the tensors across ranks, in place, with one collective call."""
    if group is None:
        return
    all_reduce_sum_(tensors, group)
    size = world_size(group)
    for t in tensors:
        if t is not None:
            t.div_(size)


def any_rank(flag: bool, group: ProcessGroup | None, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` holds on any rank (one collective; ``flag`` itself without a group).

    Lets every rank raise together when one finds a problem, instead of the others waiting forever in
    their next collective. ``device``: where the flag is reduced (CUDA for NCCL).
    """
    if group is None:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX, group=group)
    return bool(value.item())


def broadcast_module(module: nn.Module, src: int = 0, group: Sync = "auto") -> None:
    """Copy ``src``'s parameters and buffers to every rank (start all ranks from the same model)."""
    process_group = resolve_group(group)
    if process_group is None:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(tensor.data, src=src, group=process_group)


def all_gather_stack(tensor: Tensor, group: ProcessGroup | None) -> Tensor:
    """Concatenate every rank's tensor along dim 0 (rank order); the tensor itself without a group."""
    if group is None:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size(group))]
    torch.distributed.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts, dim=0)


def scale_of(scaler: torch.amp.GradScaler | None, like: Tensor) -> float:
    """A GradScaler's current scale (1.0 without one); ``scaler.scale`` creates the scale tensor lazily."""
    if scaler is None or not scaler.is_enabled():
        return 1.0
    scaler.scale(like.detach().reshape(-1)[:1])
    return float(scaler.get_scale())


def grads_of(params: Iterable[Tensor]) -> list[Tensor]:
    """The existing ``.grad`` of the parameters (those without one are skipped)."""
    return [p.grad for p in params if p.grad is not None]
