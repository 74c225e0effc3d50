"""State helpers of the direction methods (K×P tensors kept in the Jacobian's dtype and device)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import Method

__all__ = ["check_state_keys", "copied", "held_state", "projection_simplex", "simplex_start"]


def check_state_keys(method: Method, state: dict[str, Any], keys: set[str]) -> None:
    """A ``KeyError`` naming the missing and unexpected keys unless ``state`` has exactly ``keys``."""
    if set(state) != keys:
        raise KeyError(
            f"{type(method).__name__}.load_state_dict expects the keys {sorted(keys)}, got {sorted(state)}"
        )


def copied(value: Tensor | None) -> Tensor | None:
    """A detached copy (checkpoints must not alias the live state)."""
    return None if value is None else value.detach().clone()


def projection_simplex(v: Tensor) -> Tensor:
    """The Euclidean projection of a float64 vector onto the probability simplex (sort-based)."""
    u = torch.sort(v, descending=True).values
    cssv = torch.cumsum(u, 0) - 1.0
    ind = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    rho = int((u - cssv / ind > 0).nonzero()[-1])
    theta = cssv[rho] / (rho + 1)
    return (v - theta).clamp(min=0)


def held_state(
    method: Method, held: Tensor | None, shape: tuple[int, ...], name: str, start: Tensor
) -> Tensor:
    """The state a method holds between steps: ``start`` before the first step, else ``held`` after a
    check that it has ``shape`` (it was made for this number of tasks)."""
    if held is None:
        return start
    if tuple(held.shape) != shape:
        raise ValueError(
            f"{type(method).__name__} holds {name} of shape {tuple(held.shape)} but this step needs "
            f"{shape} ({shape[-1]} tasks); call reset() first"
        )
    return held


def simplex_start(method: Method, held: Tensor | None, num_tasks: int, name: str) -> Tensor:
    """Held weights: uniform before the first step (:func:`held_state`)."""
    uniform = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
    return held_state(method, held, (num_tasks,), name, uniform)
