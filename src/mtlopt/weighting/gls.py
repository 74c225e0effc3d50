r"""Geometric loss strategy (GLS): minimize the geometric mean of the task losses.

Sumanth Chennupati, Ganesh Sistu, Senthil Yogamani and Samir A. Rawashdeh, "MultiNet++: Multi-Stream
Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019,
arXiv:1904.08492. No official code found.

The objective is :math:`\mathrm{GM} = (\prod_t L_t)^{1/K}`, whose gradient is

.. math::

    \nabla \mathrm{GM} = \frac{\mathrm{GM}}{K} \sum_t \frac{\nabla L_t}{L_t}, \qquad
    w_t = \frac{\mathrm{GM}}{K L_t}, \qquad \sum_t w_t = \frac{\mathrm{GM}}{K} \sum_t \frac{1}{L_t}

(the scale-invariant direction of :class:`mtlopt.SI` times GM/K; at K identical losses the total is 1).
GM is computed as :math:`\exp(\frac1K \sum_t \log L_t)`, which neither under- nor overflows with many
tasks. Every loss must be > 0. The weights are computed from the loss values :func:`mtlopt.backward`
gives the method (the global batch's under several processes), and the objective
:math:`\sum_t w_t L_t` has the gradient of GM at those values.

Choices of the paper, LibMTL and TorchJD:

==================  ================================  =============================================
choice              here                              peers
==================  ================================  =============================================
GM                  :math:`\exp(\mathrm{mean}\log L)`  TorchJD ``GeometricMean``: the same; LibMTL
                                                      ``GLS``: ``prod(L) ** (1/K)`` (under/overflows
                                                      for many tasks)
reported weights    :math:`\mathrm{GM}/(K L_t)`, the   LibMTL returns :math:`L_t / (K \prod_s L_s)`,
                    weights of its gradient           which is not its gradient's weights (its
                                                      backward pass is right)
==================  ================================  =============================================
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import LossWeighting, WeightingOutput, WeightSum
from ._positive import check_positive

__all__ = ["GLS"]


class GLS(LossWeighting):
    r"""GLS (Chennupati et al. 2019): the gradient of :math:`(\prod_t L_t)^{1/K}`, weights :math:`\mathrm{GM}/(K L_t)`."""

    weight_sum: WeightSum = "data-dependent"

    def weigh(self, values: Tensor) -> WeightingOutput:
        check_positive("GLS", values)
        K = values.shape[0]
        geometric_mean = torch.exp(values.log().mean())
        return WeightingOutput(geometric_mean / (K * values), {"geometric_mean": float(geometric_mean)})

    def __repr__(self) -> str:
        return "GLS()"
