r"""Scalarizations: one scalar objective per preference vector λ, as loss weightings.

- Linear: :math:`s(L; \lambda) = \sum_i \lambda_i L_i` (:func:`linear_scalarization`: fixed weights λ).
- Tchebycheff: :math:`s(L; \lambda, z^*) = \max_i \lambda_i (L_i - z^*_i)`, with :math:`z^*` an estimate
  of the ideal point (the per-objective minimum), e.g. from :class:`IdealPoint` (:class:`Tchebycheff`).

:func:`linear` and :func:`tchebycheff` are the batched formulas (over leading dimensions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .weighting._base import LossWeighting, WeightingOutput
from .weighting.fixed import FixedWeights

__all__ = ["IdealPoint", "Tchebycheff", "linear", "linear_scalarization", "tchebycheff"]


def linear(losses: Tensor, weights: Tensor) -> Tensor:
    """Σ_i λ_i L_i over the last dimension (broadcasts: losses (..., m), weights (..., m))."""
    return (losses * weights.to(losses)).sum(dim=-1)


def tchebycheff(losses: Tensor, weights: Tensor, ideal: Tensor) -> Tensor:
    """max_i λ_i (L_i − z*_i) over the last dimension."""
    return (weights.to(losses) * (losses - ideal.to(losses))).amax(dim=-1)


class IdealPoint:
    """Running estimate of the ideal point: the smallest loss seen per objective, minus ``margin``.

    Call :meth:`update` with observed losses of shape (..., m); :attr:`value` is (m,).
    """

    def __init__(self, num_objectives: int, margin: float = 1e-3) -> None:
        self.margin = margin
        self.minimum = torch.full((num_objectives,), float("inf"), dtype=torch.float64)

    def update(self, losses: Tensor) -> None:
        """Lower the minimum with the finite values of ``losses`` (NaN/inf are skipped, not kept)."""
        observed = losses.detach().reshape(-1, self.minimum.numel()).to("cpu", torch.float64)
        observed = torch.where(torch.isfinite(observed), observed, torch.inf).amin(dim=0)
        self.minimum = torch.minimum(self.minimum, observed)

    @property
    def value(self) -> Tensor:
        if not bool(torch.isfinite(self.minimum).all()):
            raise ValueError("IdealPoint has no observations yet: call update() first")
        return self.minimum - self.margin

    def state_dict(self) -> dict[str, object]:
        return {"minimum": self.minimum.clone(), "margin": self.margin}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.minimum = torch.as_tensor(state["minimum"], dtype=torch.float64).clone()
        self.margin = float(state["margin"])  # type: ignore[arg-type]


class Tchebycheff(LossWeighting):
    r"""Tchebycheff scalarization as a loss weighting: :math:`\max_i \lambda_i (L_i - z^*_i)`.

    Args:
        preference: λ, K finite entries >= 0, not all 0.
        ideal: the ideal-point estimate :math:`z^*`: an :class:`IdealPoint` that its owner updates (a
            population shares one among its members), or None: this weighting keeps its own and lowers
            it with the loss values of every call (before using it).
        margin: the margin of its own ideal point (``ideal=None`` only).

    The weights (for logging) are the objective's subgradient: :math:`\lambda_{i^*}` on the task
    :math:`i^*` that attains the maximum, 0 elsewhere. Total weight: data-dependent (one λ entry).
    """

    num_tasks: int  # always set: one weight per task
    weight_sum = "data-dependent"

    def __init__(
        self, preference: Sequence[float] | Tensor, ideal: IdealPoint | None = None, margin: float = 1e-3
    ) -> None:
        weights = torch.as_tensor(preference, dtype=torch.float64).detach().cpu()
        if weights.ndim != 1 or weights.numel() == 0:
            raise ValueError(
                f"Tchebycheff preference must be a vector of K entries, got shape {tuple(weights.shape)}"
            )
        if (
            not bool(torch.isfinite(weights).all())
            or bool((weights < 0).any())
            or not bool((weights > 0).any())
        ):
            raise ValueError(
                f"Tchebycheff preference must be finite, >= 0 and not all 0, got {weights.tolist()}"
            )
        self.preference = weights
        self.num_tasks = weights.numel()
        self.owns_ideal = ideal is None
        self.ideal = IdealPoint(self.num_tasks, margin) if ideal is None else ideal

    def weigh(self, values: Tensor) -> WeightingOutput:
        if self.owns_ideal:
            self.ideal.update(values)
        shifted = self.preference * (values - self.ideal.value)
        weights = torch.zeros_like(self.preference)
        top = int(shifted.argmax())
        weights[top] = self.preference[top]
        return WeightingOutput(weights, {"ideal": self.ideal.value.tolist()})

    def objective(self, losses: Tensor, output: WeightingOutput) -> Tensor:
        return tchebycheff(losses, self.preference, self.ideal.value)

    def reset(self) -> None:
        if self.owns_ideal:
            self.ideal = IdealPoint(self.num_tasks, self.ideal.margin)

    def state_dict(self) -> dict[str, Any]:
        return {"ideal": self.ideal.state_dict()} if self.owns_ideal else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"ideal"} if self.owns_ideal else set()
        if set(state) != expected:
            raise ValueError(f"Tchebycheff state must have keys {sorted(expected)}, got {sorted(state)}")
        if self.owns_ideal:
            self.ideal.load_state_dict(state["ideal"])

    def __repr__(self) -> str:
        return f"Tchebycheff({self.preference.tolist()})"


def linear_scalarization(preference: Sequence[float] | Tensor) -> FixedWeights:
    r"""Linear scalarization :math:`\sum_i \lambda_i L_i` as a loss weighting (fixed weights λ)."""
    return FixedWeights(torch.as_tensor(preference, dtype=torch.float64).tolist())
