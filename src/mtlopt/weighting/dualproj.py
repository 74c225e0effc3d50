r"""DualProj: the mean gradient projected onto the dual cone of the task gradients, from the Gramian.

Named and implemented by TorchJD (Quinton & Rey, "Jacobian Descent for Multi-Objective
Optimization", 2024, arXiv:2406.16232; ``torchjd.aggregation.DualProj`` / ``DualProjWeighting``);
the projection is Eq. 11 of Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning",
NeurIPS 2017. With a preference vector u (1/K each by default),

.. math::

    w = \arg\min_{v \ge u} v^\top G v , \qquad d = J^\top w ,

the weights of the projection of :math:`J^\top u` (:math:`\bar g` by default) onto
:math:`\{x : Jx \ge 0\}`; so :math:`J d = G w \ge 0`, and d = :math:`J^\top u` when no gradient
conflicts with it. One QP of UPGrad's kind, solved by the same exact float64 active-set solver
(``mtlopt.weighting._dual_cone``); the options are UPGrad's (see :mod:`mtlopt.weighting.upgrad`):

======================  ===============================  ==========================================
option                  default (official: TorchJD)      alternatives
======================  ===============================  ==========================================
``pref_vector``         None: 1/K each                   any K non-negative entries
``reg_eps``,            0, 0: the exact QP on G          TorchJD's ``QuadprogProjector``: G/tr(G)
``norm_eps``                                             plus ``reg_eps``·I, both 1e-4
``head_weighting``      ``"unweighted"`` (TorchJD)       ``"weighted"``
======================  ===============================  ==========================================

Weight sum: Σu = 1 when nothing conflicts with :math:`J^\top u`, ≥ 1 otherwise.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._base import WeightingOutput
from ._dual_cone import project_dual_cone
from .upgrad import UPGrad, dual_cone_diagnostics

__all__ = ["DualProj"]


class DualProj(UPGrad):
    """The projection of Jᵀu (the mean gradient by default) onto the dual cone (TorchJD's DualProj).

    Args: as :class:`UPGrad`.
    """

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        G = self._problem(gramian)
        u = self._u(G.shape[0])
        result = project_dual_cone(G, u[None, :], max_iter=self.max_iter)
        w = result.weights[0]
        diagnostics = dual_cone_diagnostics(gramian.numpy(), w, result)
        return WeightingOutput(torch.from_numpy(np.ascontiguousarray(w)), diagnostics)
