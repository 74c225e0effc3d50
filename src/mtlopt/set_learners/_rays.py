r"""Preference rays for set learners: Dirichlet sampling for training, a fixed set for evaluation.

A set learner (a Pareto hypernetwork, COSMOS) is one model conditioned on a preference ray
:math:`r \in \Delta_K`. It is trained on rays drawn afresh every step from a symmetric (or given)
Dirichlet distribution :math:`r \sim \mathrm{Dir}(\alpha)` and evaluated on a fixed set of test rays, one
point of the learned front per ray:

- two tasks: 25 evenly spaced rays off the simplex's corners, ``preference_vectors(2, 25, interior=True)``
  (the official PHN and COSMOS codes use 25 rays too, at angles ``linspace(0.1, π/2 − 0.1, 25)``
  normalized to sum 1);
- more tasks: the smallest Das–Dennis lattice with at least 25 vectors, moved off the boundary
  (``interior=True``): 28 rays for three tasks, 35 for four or five.

The sampler draws from a NumPy ``Generator`` (PCG64) whose state is part of ``state_dict``, so a resumed
run draws the same rays. In data-parallel training give every rank the same seed: every rank must use
the same ray in a step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..preferences import preference_vectors

__all__ = ["RaySampler", "evaluate_front", "test_rays"]

DEFAULT_TEST_RAYS = 25


def test_rays(num_tasks: int, num_rays: int | None = None) -> Tensor:
    """The fixed evaluation rays, shape (N, K), float64 (see the module docstring).

    ``num_rays``: for two tasks any N >= 1 (default 25); beyond, a Das–Dennis lattice size (default: the
    smallest with at least 25 vectors).
    """
    if num_tasks < 2:
        raise ValueError(f"set learners need at least 2 tasks, got {num_tasks}")
    if num_rays is None:
        if num_tasks == 2:
            num_rays = DEFAULT_TEST_RAYS
        else:
            divisions = 1
            while math.comb(divisions + num_tasks - 1, num_tasks - 1) < DEFAULT_TEST_RAYS:
                divisions += 1
            num_rays = math.comb(divisions + num_tasks - 1, num_tasks - 1)
    return preference_vectors(num_tasks, num_rays, interior=True)


test_rays.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


class RaySampler:
    """Dirichlet-distributed preference rays, reproducible and resumable.

    Args:
        num_tasks: K >= 2.
        alpha: the Dirichlet concentration, one value (symmetric) or K values, all finite and > 0.
        seed: the generator's seed.
    """

    def __init__(self, num_tasks: int, alpha: float | Sequence[float], *, seed: int = 0) -> None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 2:
            raise ValueError(f"set learners need an integer number of tasks >= 2, got {num_tasks!r}")
        concentration = np.asarray(alpha, dtype=np.float64).reshape(-1)
        if concentration.size == 1:
            concentration = np.full(num_tasks, float(concentration[0]))
        if concentration.size != num_tasks:
            raise ValueError(
                f"Dirichlet alpha has {concentration.size} entries, expected 1 or {num_tasks} (one per task)"
            )
        if not (np.isfinite(concentration).all() and (concentration > 0).all()):
            raise ValueError(f"Dirichlet alpha must be finite and > 0, got {concentration.tolist()}")
        self.num_tasks = num_tasks
        self.alpha = concentration
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def sample(self) -> Tensor:
        """One ray, shape (K,), float64, entries > 0 summing to 1."""
        ray = self._rng.dirichlet(self.alpha)
        # A tiny alpha can underflow an entry to 0; EPO needs r > 0, so keep every entry positive.
        ray = np.maximum(ray, np.finfo(np.float64).tiny)
        return torch.from_numpy(ray / ray.sum())

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"seed", "generator"}:
            raise ValueError(f"RaySampler state must have keys ['generator', 'seed'], got {sorted(state)}")
        self.seed = int(state["seed"])
        self._rng = np.random.default_rng(self.seed)
        self._rng.bit_generator.state = state["generator"]


def evaluate_front(losses: Callable[[Tensor], Tensor], rays: Tensor) -> Tensor:
    """The learned front: ``losses(ray)`` (K task losses, e.g. on the test set) for every ray, under
    ``torch.no_grad()``; shape (N, K), float64, one row per ray."""
    rays = torch.as_tensor(rays, dtype=torch.float64)
    if rays.ndim != 2:
        raise ValueError(f"rays must have shape (N, K), got {tuple(rays.shape)}")
    rows = []
    with torch.no_grad():
        for i, ray in enumerate(rays):
            value = torch.as_tensor(losses(ray)).detach().reshape(-1).to("cpu", torch.float64)
            if value.shape != (rays.shape[1],):
                raise ValueError(
                    f"the losses for ray {i} have {value.numel()} entries, expected {rays.shape[1]} (one per task)"
                )
            rows.append(value)
    return torch.stack(rows)
