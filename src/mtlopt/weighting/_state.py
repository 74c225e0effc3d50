"""State helpers of the direction methods (K×P tensors kept in the Jacobian's dtype and device)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import Method

__all__ = ["check_state_keys", "copied", "projection_simplex"]


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
