r"""Smooth Tchebycheff scalarization (STCH): a smooth maximum of the normalized log losses.

Xi Lin, Xiaoyuan Zhang, Zhiyuan Yang, Fei Liu, Zhenkun Wang and Qingfu Zhang, "Smooth Tchebycheff
Scalarization for Multi-Objective Optimization", ICML 2024, arXiv:2402.19078. Official code:
``Xi-L/STCH``, ``STCH_MTL/LibMTL/weighting/STCH.py`` (the same as LibMTL's ``STCH.py``).

The paper's scalarization of objectives :math:`f_t` with preference :math:`\lambda` and reference
point :math:`z^*` is the smooth maximum

.. math::

    g_\mu(f \mid \lambda) = \mu \log \sum_t \exp\!\big(\lambda_t (f_t - z^*_t) / \mu\big), \qquad
    \frac{\partial g_\mu}{\partial f_t} = \lambda_t\, \mathrm{softmax}_t\!\big(\lambda \odot (f - z^*)/\mu\big).

The official multi-task recipe (``transform="log-normalized"``, the default): during the first
``warmup_epochs`` epochs (W, 4) minimize :math:`\sum_t \log(L_t + 10^{-20})`; during epoch W do the
same and average the loss values into the nadir point :math:`n`; from epoch W + 1 on,
:math:`f_t = \log(L_t / n_t + 10^{-20})`, :math:`\lambda = 1`, :math:`z^* = 0`, and minimize
:math:`K \mu \log \sum_t \exp(f_t / \mu)`. The weights on the losses are therefore

.. math::

    w_t = \frac{1}{L_t + 10^{-20}} \ \text{(warm-up)}, \qquad
    w_t = \frac{K\, \mathrm{softmax}_t(f / \mu)}{L_t + 10^{-20} n_t} \ \text{(afterwards)},

with total K on the log losses (:math:`\sum_t w_t L_t \approx K`). ``transform="none"`` is the plain
formula on the raw losses, as TorchJD's ``STCH`` scalarizer: :math:`w_t = \lambda_t
\mathrm{softmax}_t(\lambda \odot (L - z^*)/\mu)` from the first step, no warm-up, no epochs.

Usage: call :meth:`STCH.new_epoch` at every epoch boundary (the benchmark trainer does). Weights are
computed from the loss values :func:`mtlopt.backward` gives the method (the global batch's under
several processes), so the nadir point is the same on every rank.

=====================  ====================================  ======================================
option                 default                               alternatives in the peers
=====================  ====================================  ======================================
``transform``          ``"log-normalized"`` with warm-up     ``"none"`` (TorchJD ``STCH``)
                       (official, LibMTL)
``mu``                 1.0 (official)                        the paper's grid {0.01, 0.1, 0.5, 1}
``warmup_epochs``      4 (official)                          any >= 0
``preference`` λ       1 for every task (official)           TorchJD: ``weights``, e.g. 1/K
``reference`` z*       0 (official)                          TorchJD: ``reference``
=====================  ====================================  ======================================

``preference`` and ``reference`` apply to ``transform="none"`` (the official recipe fixes them).
State (``state_dict``): the epoch, the running nadir sums and count, the nadir point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from .._options import check_choice
from ._base import LossWeighting, WeightingOutput, WeightSum
from ._positive import check_positive, check_positive_int, check_positive_number, task_vector

__all__ = ["STCH"]

Transform = Literal["log-normalized", "none"]
_STATE_KEYS = {"epoch", "sums", "count", "nadir"}
_TINY = 1e-20  # the official code's offset inside the logarithms


class STCH(LossWeighting):
    r"""STCH (Lin et al. 2024): the smooth Tchebycheff scalarization (official log-normalized recipe).

    Args:
        mu: the smoothing μ (1.0).
        warmup_epochs: epochs of :math:`\sum_t \log L_t` before the nadir epoch (4).
        transform: ``"log-normalized"`` (official) or ``"none"`` (TorchJD, the raw losses).
        preference: λ for ``transform="none"`` (1 for every task when None).
        reference: z* for ``transform="none"`` (0 when None).

    Call :meth:`new_epoch` at the end of every epoch.
    """

    weight_sum: WeightSum = "data-dependent"

    def __init__(
        self,
        mu: float = 1.0,
        warmup_epochs: int = 4,
        *,
        transform: Transform = "log-normalized",
        preference: Sequence[float] | Tensor | None = None,
        reference: Sequence[float] | Tensor | None = None,
    ) -> None:
        check_choice("STCH", "transform", transform, Transform)
        self.mu = check_positive_number("STCH", "mu", mu)
        self.warmup_epochs = check_positive_int("STCH", "warmup_epochs", warmup_epochs, minimum=0)
        self.transform: Transform = transform
        if transform == "log-normalized" and (preference is not None or reference is not None):
            raise ValueError("STCH preference and reference apply to transform='none' only")
        self.preference = None if preference is None else task_vector("STCH", "preference", preference, None)
        self.reference = None if reference is None else task_vector("STCH", "reference", reference, None)
        if self.preference is not None:
            check_positive("STCH", self.preference, "preference entry")
        sizes = {v.shape[0] for v in (self.preference, self.reference) if v is not None}
        if len(sizes) > 1:
            raise ValueError(f"STCH preference and reference must have one length, got {sorted(sizes)}")
        if sizes:
            self.num_tasks = sizes.pop()
        self.reset()

    def reset(self) -> None:
        """Back to epoch 0: no nadir point, no running sums."""
        self.epoch = 0
        self._sums: Tensor | None = None
        self._count = 0
        self.nadir: Tensor | None = None
        self._offset: Tensor | None = None
        self._offset_of: Tensor | None = None

    def weigh(self, values: Tensor) -> WeightingOutput:
        K = values.shape[0]
        if self.transform == "none":
            lam = torch.ones(K, dtype=torch.float64) if self.preference is None else self.preference
            z = torch.zeros(K, dtype=torch.float64) if self.reference is None else self.reference
            return WeightingOutput(lam * torch.softmax(lam * (values - z) / self.mu, dim=0))
        check_positive("STCH", values)
        if self.epoch <= self.warmup_epochs:
            if self.epoch == self.warmup_epochs:  # the nadir epoch
                if self._sums is not None and self._sums.shape[0] != K:
                    raise ValueError(
                        f"STCH got {K} losses but its nadir sums are for {self._sums.shape[0]} tasks"
                    )
                self._sums = values.clone() if self._sums is None else self._sums + values
                self._count += 1
            return WeightingOutput(1.0 / (values + _TINY), {"stch_phase": "warm-up"})
        if self.nadir is None:
            if self._sums is None or self._count == 0:
                raise RuntimeError(
                    f"STCH took no step in its nadir epoch {self.warmup_epochs}: no nadir point"
                )
            self.nadir = self._sums / self._count
            self._sums, self._count = None, 0
        if self.nadir.shape[0] != K:
            raise ValueError(f"STCH got {K} losses but its nadir point is for {self.nadir.shape[0]} tasks")
        offset = self._offset
        if offset is None or self._offset_of is not self.nadir:  # _TINY·nadir once per nadir, not per step
            offset = self._offset = _TINY * self.nadir
            self._offset_of = self.nadir
        f = torch.log(values / self.nadir + _TINY)
        weights = K * torch.softmax(f if self.mu == 1.0 else f / self.mu, dim=0) / (values + offset)
        return WeightingOutput(weights, {"stch_phase": "stch"})

    def new_epoch(self) -> None:
        """Close the current epoch (the warm-up and nadir epochs count; ``transform="none"`` ignores them)."""
        self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "sums": None if self._sums is None else self._sums.clone(),
            "count": self._count,
            "nadir": None if self.nadir is None else self.nadir.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != _STATE_KEYS:
            raise ValueError(f"STCH state must have the keys {sorted(_STATE_KEYS)}, got {sorted(state)}")
        self.epoch = int(state["epoch"])
        self._sums = (
            None if state["sums"] is None else torch.as_tensor(state["sums"], dtype=torch.float64).clone()
        )
        self._count = int(state["count"])
        self.nadir = (
            None if state["nadir"] is None else torch.as_tensor(state["nadir"], dtype=torch.float64).clone()
        )

    def __repr__(self) -> str:
        return f"STCH(mu={self.mu}, warmup_epochs={self.warmup_epochs}, transform={self.transform!r})"
