r"""Random loss weighting (RLW): task weights drawn afresh at every step.

Baijiong Lin, Feiyang Ye, Yu Zhang and Ivor W. Tsang, "Reasonable Effectiveness of Random Weighting:
A Litmus Test for Multi-Task Learning", TMLR 2022, arXiv:2111.10603 (v1: "A Closer Look at Loss
Weighting in Multi-Task Learning"). Official code: the authors' LibMTL, ``LibMTL/weighting/RLW.py``.

Every step draws :math:`\lambda \sim \mathcal N(0, I_K)` and weighs the losses with

.. math::

    w = \mathrm{softmax}(\lambda), \qquad \sum_t w_t = 1 ,

the objective being :math:`\sum_t w_t L_t` (task-specific parameters weighted too).

The draws come from this object's own ``torch.Generator`` (seeded by ``seed``, saved in
``state_dict``), never from torch's global generator: the same seed gives the same weights on every
rank of a distributed run, and a run resumed from a checkpoint draws what it would have drawn. λ is
drawn in float32 (as ``torch.randn`` in LibMTL and TorchJD), then the softmax is taken in float64:
with ``torch.manual_seed(s)`` before the peers' draw and ``RLW(seed=s)`` the weights agree to float32
precision.

Choices of the paper, the official code, LibMTL and TorchJD (the default is the paper's):

================  ======================================  =========================================
option            default                                 alternatives in the peers
================  ======================================  =========================================
distribution      normal + softmax (paper's default,      the paper's other distributions (uniform,
                  LibMTL, TorchJD, nash-mtl)              Dirichlet, Bernoulli): not offered
level             loss: heads get :math:`w_t\nabla L_t`   TorchJD's aggregator ``Random``: the same
                  (LibMTL, TorchJD's scalarizer           shared update, unweighted heads
                  ``Random``)
random numbers    a seeded generator in the state         the global RNG (LibMTL, TorchJD,
                                                          nash-mtl)
================  ======================================  =========================================
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import LossWeighting, WeightingOutput, WeightSum

__all__ = ["RLW"]

_STATE_KEYS = {"seed", "generator"}


class RLW(LossWeighting):
    r"""RLW (Lin et al. 2022): :math:`w = \mathrm{softmax}(\lambda)`, :math:`\lambda \sim \mathcal N(0, I)`.

    Args:
        seed: the seed of the method's generator; :meth:`reset` restarts it.
    """

    weight_sum: WeightSum = "1"

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"RLW seed must be an int >= 0, got {seed!r}")
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Restart the generator at ``seed``."""
        self.generator = torch.Generator(device="cpu").manual_seed(self.seed)

    def weigh(self, values: Tensor) -> WeightingOutput:
        draw = torch.randn(values.shape[0], generator=self.generator, dtype=torch.float32, device="cpu")
        return WeightingOutput(torch.softmax(draw.to(torch.float64), dim=0))

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != _STATE_KEYS:
            raise ValueError(f"RLW state must have the keys {sorted(_STATE_KEYS)}, got {sorted(state)}")
        generator = torch.Generator(device="cpu")
        generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))
        self.seed = int(state["seed"])
        self.generator = generator

    def __repr__(self) -> str:
        return f"RLW(seed={self.seed})"
