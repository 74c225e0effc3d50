r"""Dynamic weight average (DWA): task weights from the rate at which each epoch-mean loss falls.

Shikun Liu, Edward Johns and Andrew J. Davison, "End-to-End Multi-Task Learning with Attention",
CVPR 2019, arXiv:1803.10704. Official code: ``lorenmt/mtan``, ``im2im_pred/utils.py``
(``multi_task_trainer``, ``opt.weight == 'dwa'``).

With :math:`\bar L_t(e)` the mean training loss of task t over the steps of epoch e, at epoch
:math:`e \ge 2`

.. math::

    r_t = \frac{\bar L_t(e-1)}{\bar L_t(e-2)}, \qquad
    w_t = K\, \frac{\exp(r_t / T)}{\sum_s \exp(r_s / T)}, \qquad \sum_t w_t = K,

and :math:`w_t = 1` in epochs 0 and 1. The objective is :math:`\sum_t w_t L_t`.
The losses may have any sign (as TorchJD, the ratio is a descending rate); an epoch mean of exactly 0
is refused, being the next ratio's denominator.

Usage: call :meth:`DWA.new_epoch` at every epoch boundary (the benchmark trainer does, through its
runner's ``on_epoch_start``); the loss values of every step in between are averaged into the epoch
means. Under several processes :func:`mtlopt.backward` gives the method the global batch's losses,
so the means, hence the weights, are identical on every rank.

.. code-block:: python

    dwa = mtlopt.DWA()
    for epoch in range(epochs):
        for x, y in loader:
            ...
            mtlopt.backward(losses, dwa)
            optimizer.step()
        dwa.new_epoch()

Choices of the paper, the official code, LibMTL and TorchJD (the default is the paper's):

===============  =============================================  ======================================
option           default                                        alternatives in the peers
===============  =============================================  ======================================
``temperature``  2.0 (paper, mtan, LibMTL, TorchJD)             –
window           one epoch (paper, mtan, LibMTL, TorchJD)       a window of n iterations (nash-mtl's
                                                                ``DynamicWeightAverage``, whose loss
                                                                is mean(w⊙L), total 1): not offered
epoch means      means of the per-step loss values              LibMTL: of the values its trainer logs
                                                                (the same numbers for equal batches)
===============  =============================================  ======================================

State (``state_dict``): the epoch counter, the running sums and step count of the current epoch and the
last two epoch means, so a run resumed from a checkpoint taken mid-epoch continues exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import LossWeighting, WeightingOutput, WeightSum
from ._positive import check_positive_number

__all__ = ["DWA"]

_STATE_KEYS = {"epoch", "sums", "count", "history"}


class DWA(LossWeighting):
    r"""DWA (Liu et al. 2019): :math:`w = K\,\mathrm{softmax}(r / T)` of the last two epochs' loss ratios.

    Args:
        temperature: T (2.0); larger T gives more even weights.

    Call :meth:`new_epoch` at the end of every epoch.
    """

    weight_sum: WeightSum = "K"

    def __init__(self, temperature: float = 2.0) -> None:
        self.temperature = check_positive_number("DWA", "temperature", temperature)
        self.reset()

    def reset(self) -> None:
        """Back to epoch 0: no epoch means, no running sums."""
        self.epoch = 0
        self._sums: Tensor | None = None
        self._count = 0
        self._history: list[Tensor] = []  # the last two epoch means, oldest first

    def weigh(self, values: Tensor) -> WeightingOutput:
        K = values.shape[0]
        if self._sums is not None and self._sums.shape[0] != K:
            raise ValueError(
                f"DWA got {K} losses but the running epoch sums are for {self._sums.shape[0]} tasks"
            )
        if len(self._history) == 2:
            if self._history[0].shape[0] != K:
                raise ValueError(
                    f"DWA got {K} losses but its epoch means are for {self._history[0].shape[0]} tasks"
                )
            ratios = self._history[1] / self._history[0]
            weights = K * torch.softmax(ratios / self.temperature, dim=0)
        else:
            weights = torch.ones(K, dtype=torch.float64)
        self._sums = values.clone() if self._sums is None else self._sums + values
        self._count += 1
        return WeightingOutput(weights, {"dwa_epoch": self.epoch})

    def new_epoch(self) -> None:
        """Close the current epoch: its mean loss enters the history, and the epoch counter advances.

        Raises a ``RuntimeError`` when no step was taken since the last call.
        """
        if self._sums is None or self._count == 0:
            raise RuntimeError(
                f"DWA.new_epoch: no step since the start of epoch {self.epoch}; nothing to average"
            )
        mean = self._sums / self._count
        zero = (mean == 0).nonzero().flatten().tolist()
        if zero:  # a ratio's denominator next epoch; any sign is fine (the ratio is a descending rate)
            raise ValueError(
                f"DWA: the epoch-mean loss of tasks {zero} is 0 at epoch {self.epoch}; expected != 0"
            )
        self._history = [*self._history, mean][-2:]
        self._sums, self._count = None, 0
        self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "sums": None if self._sums is None else self._sums.clone(),
            "count": self._count,
            "history": [h.clone() for h in self._history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != _STATE_KEYS:
            raise ValueError(f"DWA state must have the keys {sorted(_STATE_KEYS)}, got {sorted(state)}")
        history = [torch.as_tensor(h, dtype=torch.float64).clone() for h in state["history"]]
        if len(history) > 2:
            raise ValueError(f"DWA state history must hold at most 2 epoch means, got {len(history)}")
        self.epoch = int(state["epoch"])
        self._sums = (
            None if state["sums"] is None else torch.as_tensor(state["sums"], dtype=torch.float64).clone()
        )
        self._count = int(state["count"])
        self._history = history

    def __repr__(self) -> str:
        return f"DWA(temperature={self.temperature})"
