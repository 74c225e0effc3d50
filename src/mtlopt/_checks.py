"""Validation of user input shared by the public functions."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import NonFiniteError

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

LossesLike = Sequence[Tensor] | Mapping[str, Tensor] | Tensor


def as_loss_vector(losses: LossesLike) -> tuple[list[str], list[Tensor], Tensor]:
    """Task names, the K scalar losses and their stacked (K,) vector, after checking each loss.

    The individual tensors are kept because differentiating ``vector[t]`` would send zeros back
    through every other task's branch of the graph.

    Accepts a sequence of scalar tensors, a mapping from task name to scalar tensor, or a 1-D tensor
    of K losses. Names default to the task indices ``"0"``, ``"1"``, ...
    """
    if isinstance(losses, Tensor):
        if losses.ndim != 1:
            raise ValueError(
                f"a tensor of losses must be 1-D with one entry per task, got shape {tuple(losses.shape)}"
            )
        names = [str(i) for i in range(losses.shape[0])]
        items = list(losses.unbind())
        vector = losses
    else:
        if isinstance(losses, Mapping):
            names = [str(name) for name in losses]
            items = list(losses.values())
        elif isinstance(losses, Sequence) and not isinstance(losses, (str, bytes)):
            names = [str(i) for i in range(len(losses))]
            items = list(losses)
        else:
            raise TypeError(
                f"losses must be a sequence or mapping of scalar tensors, got {type(losses).__name__}"
            )
        for name, loss in zip(names, items):
            if not isinstance(loss, Tensor):
                raise TypeError(f"loss of task {name!r} is a {type(loss).__name__}, expected a torch.Tensor")
            if loss.ndim != 0:
                raise ValueError(
                    f"loss of task {name!r} has shape {tuple(loss.shape)}, expected a scalar "
                    "(reduce it over the batch, e.g. with .mean())"
                )
        vector = None
    if not items:
        raise ValueError("no losses given: expected one scalar loss per task")
    for name, loss in zip(names, items):
        if not loss.requires_grad:
            raise ValueError(
                f"loss of task {name!r} does not require grad: it does not depend on any trainable tensor"
            )
    if vector is None:
        dtype = items[0].dtype
        for loss in items[1:]:
            dtype = torch.promote_types(dtype, loss.dtype)
        vector = torch.stack([loss.to(dtype) for loss in items])
    return names, items, vector


def check_num_tasks(names: Sequence[str], expected: int | None, minimum: int, who: str) -> None:
    """Raise a ValueError when the number of losses does not fit what ``who`` needs."""
    K = len(names)
    if expected is not None and K != expected:
        raise ValueError(f"{who} was set up for {expected} tasks but got {K} losses ({', '.join(names)})")
    if K < minimum:
        raise ValueError(f"{who} needs at least {minimum} tasks, got {K}")


def check_finite_losses(names: Sequence[str], loss_vector: Tensor) -> None:
    """Raise NonFiniteError naming every task whose loss is NaN or infinite (one host sync)."""
    if not bool(torch.isfinite(loss_vector.detach()).all()):
        raise NonFiniteError(non_finite_loss_message(names, loss_vector))


def non_finite_loss_message(names: Sequence[str], loss_vector: Tensor) -> str:
    values = loss_vector.detach().cpu().tolist()
    bad = [f"{name!r} ({value})" for name, value in zip(names, values) if not math.isfinite(value)]
    return f"non-finite loss for task {', '.join(bad)}"


def check_finite_on_every_rank(
    values: Tensor, group: ProcessGroup | None, describe: Callable[[], str], what: str = "a loss"
) -> None:
    """Raise NonFiniteError on every rank when ``values`` is non-finite on any (one flag all-reduce under
    a process group), so that no rank is left waiting in its next collective. ``describe()`` gives the
    message of the rank that found it."""
    from .distributed import any_rank

    bad_here = not all_finite([values.detach()])
    if any_rank(bad_here, group, values.device):
        raise NonFiniteError(describe() if bad_here else f"{what} is not finite on another process")


def as_tensors(
    tensors: Iterable[Tensor] | Tensor,
    what: str,
    hint: str = "pass only tensors that are part of the graph",
) -> list[Tensor]:
    """The tensors as a non-empty list, each a Tensor that requires grad (errors name the bad one)."""
    single = isinstance(tensors, Tensor)
    items = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    if not items:
        raise ValueError(f"{what} is empty: nothing to differentiate with respect to")
    for i, tensor in enumerate(items):
        label = what if single else f"{what}[{i}]"
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{label} is a {type(tensor).__name__}, expected a torch.Tensor")
        if not tensor.requires_grad:
            raise ValueError(f"{label} (shape {tuple(tensor.shape)}) does not require grad; {hint}")
    return items


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every element of every tensor is finite, with one fused kernel per device.

    The kernel is the one ``torch.amp.GradScaler`` checks gradients with
    (``torch._amp_foreach_non_finite_check_and_unscale_``), with an inverse scale of exactly 1, which
    leaves every value as it is: one fused kernel instead of one reduction per tensor (a LeNet with 40
    heads has 160 tensors). Where the kernel is missing, one float64 sum per tensor.
    """
    by_device: dict[torch.device, list[Tensor]] = {}
    for tensor in tensors:
        by_device.setdefault(tensor.device, []).append(tensor)
    flags = []
    for device, group in by_device.items():
        found = torch.zeros(1, device=device)
        try:
            torch._amp_foreach_non_finite_check_and_unscale_(group, found, torch.ones(1, device=device))
        except (RuntimeError, NotImplementedError, AttributeError, TypeError):
            sums = torch.stack([t.sum(dtype=torch.float64) for t in group])
            found = (~torch.isfinite(sums)).any().reshape(1).to(torch.float32)
        flags.append(found.cpu() if len(by_device) > 1 else found)
    return not bool(torch.cat(flags).any()) if len(flags) > 1 else not bool(flags[0].any())
