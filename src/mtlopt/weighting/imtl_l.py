r"""IMTL-L: loss scales learned so that every scaled loss stays near 1.

Liyang Liu, Yi Li, Zhanghui Kuang, Jing-Hao Xue, Yimin Chen, Wenming Yang, Qingmin Liao and Wayne
Zhang, "Towards Impartial Multi-task Learning", ICLR 2021 (the loss-balance half, IMTL-L; IMTL-G is
the gradient half). No official code found; LibMTL has it inside ``LibMTL/weighting/IMTL.py``, TorchJD
as the scalarizer ``IMTLL``.

Every task has a learnable scale :math:`s_t` (initialized to 0), trained jointly with the model on

.. math::

    \mathcal L = \sum_t \left(e^{s_t} L_t - s_t\right), \qquad w_t = e^{s_t}, \qquad
    \frac{\partial \mathcal L}{\partial s_t} = e^{s_t} L_t - 1 ,

so at a stationary point :math:`e^{s_t} L_t = 1`: solved exactly every step, :math:`s_t = -\log L_t`
and the update is that of :class:`mtlopt.SI` (DB-MTL, Proposition 3.1). It is uncertainty weighting's
objective at :math:`s = -\log\sigma^2` without the factor ½ (TorchJD notes ``IMTLL`` = 2·UW at −s).
The total weight is :math:`\sum_t e^{s_t}`: K at the start, learned afterwards.

Usage: the scales are parameters of this module (``imtl.scales``), so **add ``imtl.parameters()`` to
your optimizer** (without weight decay, which would pull every scale to 0):

.. code-block:: python

    imtl = mtlopt.IMTLL(2)
    optimizer = torch.optim.Adam(
        [{"params": model.parameters()}, {"params": imtl.parameters(), "weight_decay": 0.0}]
    )
    mtlopt.backward(losses, imtl)  # also writes imtl.scales.grad
    optimizer.step()

======================  ==================================  =====================================
choice                  here                                peers
======================  ==================================  =====================================
initial :math:`s`       0 (paper, LibMTL, TorchJD)          –
optimizer of :math:`s`  the user's (LibMTL: the model's     –
                        optimizer and learning rate)
======================  ==================================  =====================================

``state_dict()``/``load_state_dict()`` are those of :class:`torch.nn.Module` (the scales).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._base import LossOutput, LossWeighting, WeightingOutput, WeightSum
from ._positive import check_positive_int

__all__ = ["IMTLL"]


class IMTLL(nn.Module, LossWeighting):
    r"""IMTL-L (Liu et al. 2021): learned scales, objective :math:`\sum_t (e^{s_t} L_t - s_t)`.

    Args:
        num_tasks: K.

    Add ``imtl.parameters()`` to the optimizer: the scales are trained by it.
    """

    weight_sum: WeightSum = "data-dependent"  # Σ e^{s_t}: K at the start

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = check_positive_int("IMTLL", "num_tasks", num_tasks)
        self.scales = nn.Parameter(torch.zeros(num_tasks))

    def reset(self) -> None:
        """Every scale back to 0 (the optimizer's state is the caller's)."""
        with torch.no_grad():
            self.scales.zero_()

    def weigh(self, values: Tensor) -> WeightingOutput:
        self._check(values)
        return WeightingOutput(self.scales.detach().exp().to("cpu", torch.float64))

    def objective(self, losses: Tensor, output: WeightingOutput) -> Tensor:
        r""":math:`\sum_t (e^{s_t} L_t - s_t)`, differentiable in the losses and in s."""
        self._check(losses)
        s = self.scales.to(losses.device, losses.dtype)
        return (s.exp() * losses - s).sum()

    def forward(self, losses: Tensor, values: Tensor | None = None) -> LossOutput:
        """One step, as ``LossWeighting.__call__`` (``nn.Module.__call__`` dispatches here)."""
        return LossWeighting.__call__(self, losses, values)

    def _check(self, losses: Tensor) -> None:
        if losses.shape != (self.num_tasks,):
            raise ValueError(
                f"IMTLL was set up for {self.num_tasks} tasks but got losses of shape {tuple(losses.shape)}"
            )

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"
