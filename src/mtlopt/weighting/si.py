r"""Scale-invariant linear scalarization (SI): minimize the sum of the log losses.

The "scale-invariant (SI) baseline which minimizes :math:`\sum_k \log \ell_k`" of Aviv Navon, Aviv
Shamsian, Idan Achituve, Haggai Maron, Kenji Kawaguchi, Gal Chechik and Ethan Fetaya, "Multi-Task
Learning as a Bargaining Game", ICML 2022, arXiv:2202.01017, §6. Official code: ``AvivNavon/nash-mtl``,
``methods/weight_methods.py::ScaleInvariantLinearScalarization`` (method name ``scaleinvls``).

The objective is :math:`\sum_t c_t \log(L_t + \varepsilon)`, so

.. math::

    w_t = \frac{c_t}{L_t + \varepsilon}, \qquad \sum_t w_t = \sum_t \frac{c_t}{L_t + \varepsilon} ,

which does not change when a loss is multiplied by a constant (for :math:`\varepsilon = 0`). Every
:math:`L_t + \varepsilon` must be > 0. The weights are computed from the loss values
:func:`mtlopt.backward` gives the method (the global batch's under several processes), and the objective
:math:`\sum_t w_t L_t` has the gradient of the log objective at those values.

===================  ==================================  ==========================================
option               default                             alternatives
===================  ==================================  ==========================================
``task_weights``     1 for every task (nash-mtl)         any :math:`c_t > 0`
``eps``              0 (nash-mtl)                        1e-8 (DB-MTL's :math:`\log(L + \varepsilon)`)
===================  ==================================  ==========================================

TorchJD and LibMTL have no SI class.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ._base import LossWeighting, WeightingOutput, WeightSum
from ._positive import check_positive, check_positive_number, task_vector

__all__ = ["SI"]


class SI(LossWeighting):
    r"""Scale-invariant LS (Navon et al. 2022): the gradient of :math:`\sum_t c_t \log(L_t + \varepsilon)`.

    Args:
        task_weights: :math:`c_t` (1 for every task when None; then any K is accepted).
        eps: :math:`\varepsilon` inside the logarithm (0).
    """

    weight_sum: WeightSum = "data-dependent"

    def __init__(self, task_weights: Sequence[float] | Tensor | None = None, *, eps: float = 0.0) -> None:
        self.eps = check_positive_number("SI", "eps", eps, allow_zero=True)
        self.task_weights: Tensor | None = None
        if task_weights is not None:
            weights = task_vector("SI", "task_weights", task_weights, None)
            check_positive("SI", weights, "task weight")
            self.task_weights = weights
            self.num_tasks = weights.shape[0]

    def weigh(self, values: Tensor) -> WeightingOutput:
        shifted = values + self.eps
        check_positive("SI", shifted, "loss + eps")
        c = 1.0 if self.task_weights is None else self.task_weights
        return WeightingOutput(c / shifted)

    def __repr__(self) -> str:
        weights = None if self.task_weights is None else self.task_weights.tolist()
        return f"SI(task_weights={weights}, eps={self.eps})"
