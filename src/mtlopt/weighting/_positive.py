"""Shared checks of the loss-level methods that take logarithms of the losses (GLS, SI, FAMO, STCH)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_positive", "check_positive_int", "check_positive_number", "task_vector"]


def check_positive(who: str, values: Tensor, what: str = "loss") -> None:
    """Raise a one-line ``ValueError`` naming the tasks whose ``values`` are not > 0."""
    if bool((values > 0).all()):  # the common case, one check
        return
    bad = (~(values > 0)).nonzero().flatten().tolist()  # NaN counts as bad too
    if bad:
        shown = ", ".join(f"{float(values[t]):.6g}" for t in bad[:5])
        raise ValueError(f"{who} needs every {what} > 0; tasks {bad} have {shown}")


def check_positive_number(who: str, name: str, value: object, *, allow_zero: bool = False) -> float:
    """A finite float > 0 (or >= 0), else a one-line ``ValueError`` naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{who} {name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{who} {name} must be a finite number {bound}, got {value!r}")
    return number


def check_positive_int(who: str, name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{who} {name} must be an int >= {minimum}, got {value!r}")
    return value


def task_vector(who: str, name: str, values: Sequence[float] | Tensor, num_tasks: int | None) -> Tensor:
    """A finite float64 CPU vector of one entry per task (``num_tasks`` entries when given)."""
    vector = torch.as_tensor(values, dtype=torch.float64).detach().to("cpu").clone()
    if vector.ndim != 1 or (num_tasks is not None and vector.shape[0] != num_tasks):
        expected = f"{num_tasks} entries (one per task)" if num_tasks is not None else "a 1-D vector"
        raise ValueError(f"{who} {name} must have {expected}, got shape {tuple(vector.shape)}")
    if not bool(torch.isfinite(vector).all()):
        raise ValueError(f"{who} {name} must be finite, got {vector.tolist()}")
    return vector
