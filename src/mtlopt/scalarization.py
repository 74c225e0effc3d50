r"""Scalarizations: one scalar objective per preference vector λ.

- Linear: :math:`s(L; \lambda) = \sum_i \lambda_i L_i`.
- Tchebycheff: :math:`s(L; \lambda, z^*) = \max_i \lambda_i (L_i - z^*_i)`, with :math:`z^*` an estimate
  of the ideal point (the per-objective minimum), e.g. from :class:`IdealPoint`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IdealPoint", "linear", "tchebycheff"]


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
