r"""PCGrad: projecting conflicting gradients ("gradient surgery"), as task weights from the Gramian.

Tianhe Yu, Saurabh Kumar, Abhishek Gupta, Sergey Levine, Karol Hausman and Chelsea Finn, "Gradient
Surgery for Multi-Task Learning", NeurIPS 2020, arXiv:2001.06782.

Algorithm 1 of the paper: for each task i, start from :math:`g_i^{PC} = g_i`; for each other task j in
a random order, if :math:`g_i^{PC} \cdot g_j < 0` (a conflict), remove the component of
:math:`g_i^{PC}` along :math:`g_j`,

.. math::

    g_i^{PC} \leftarrow g_i^{PC} - \frac{g_i^{PC} \cdot g_j}{\|g_j\|^2}\, g_j ;

the update is :math:`\sum_i g_i^{PC}`. Every :math:`g_i^{PC}` stays a linear combination
:math:`\sum_k C_{ik} g_k` (C starts as the identity; a projection subtracts
:math:`(C_i G_{:,j}) / G_{jj}` from :math:`C_{ij}`), and every inner product it needs is
:math:`g_i^{PC} \cdot g_j = (C G)_{ij}`, so the whole procedure runs on the K×K Gramian G: the task
weights are :math:`w_k = \sum_i C_{ik}` and the shared update :math:`\sum_k w_k g_k` is the paper's,
with the gradients themselves never copied. For two conflicting tasks the result has
:math:`d \cdot g_i = \|g_i\|^2 - (g_1 \cdot g_2)^2 / \|g_j\|^2 \ge 0` for both (j the other task);
without conflicts it is :math:`\sum_k g_k` (all weights 1).

Options (the paper's reading is the default):

====================  ===================================  ==============================================
option                default (paper)                      alternatives
====================  ===================================  ==============================================
``order``             ``"shuffled"``: for each i a new     ``"fixed"``: the other tasks in index order.
                      random order of the other tasks      The official code (``tianheyu927/PCGrad``,
                                                           TensorFlow) discards the result of its
                                                           ``tf.random.shuffle``, so it runs in index
                                                           order: ``order="fixed", include_self=True``
``include_self``      False: the other tasks only          True: j runs over all K tasks, i included
                                                           (official code and LibMTL); it matters only
                                                           when earlier projections turned
                                                           :math:`g_i^{PC}` against :math:`g_i`
``reduction``         ``"sum"``: :math:`\sum_i g_i^{PC}`   ``"mean"``: divided by K (the default of the
                      (paper, official code, LibMTL)       ``WeiChengTseng/Pytorch-PCGrad`` port)
``head_weighting``    ``"unweighted"``: head t gets        ``"weighted"``: :math:`w_t \nabla L_t`
                      :math:`\nabla L_t` (LibMTL: surgery
                      on the shared parameters only)
====================  ===================================  ==============================================

The random orders: at every :meth:`~PCGrad.compute`, for i = 0, …, K−1 in turn, ``torch.randperm(m,
generator=g)`` (m = K−1, or K with ``include_self``) permutes the candidate tasks listed in index order
(i left out unless ``include_self``). The ``torch.Generator`` g is seeded with ``seed`` and is the
state: :meth:`~PCGrad.state_dict` saves it, :meth:`~PCGrad.reset` reseeds it.

Deviations from the reference code, on purpose: a task with :math:`\|g_j\|^2 = 0` is never projected
on (its inner products are 0 anyway; the official code divides 0 by 0 and LibMTL adds 1e-8 to every
:math:`\|g_j\|^2`, which changes small gradients). The surgery applies to the gradients w.r.t. the
shared parameters: use ``mtlopt.backward(losses, PCGrad(), shared_params=...)``; to run it on the
whole parameter vector, as the official code does with its ``var_list``, pass every trainable parameter
as ``shared_params`` (then no parameter is a head). With ``features=`` it would act on representation
gradients, which is not PCGrad (LibMTL refuses that combination).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .._options import check_choice
from ._base import GramianWeighting, HeadWeighting, WeightingOutput, WeightSum

__all__ = ["PCGrad"]

Order = Literal["shuffled", "fixed"]
Reduction = Literal["sum", "mean"]


class PCGrad(GramianWeighting):
    """Projecting conflicting gradients (Yu et al. 2020), computed from the Gramian.

    Args:
        seed: seed of the generator of the random task orders.
        order: ``"shuffled"`` (paper) or ``"fixed"`` (index order).
        reduction: ``"sum"`` (paper) or ``"mean"`` of the projected gradients.
        include_self: let j also run over task i itself (official code, LibMTL).
        head_weighting: ``"unweighted"`` (heads get ∇L_t) or ``"weighted"`` (w_t ∇L_t).
    """

    min_tasks = 1

    def __init__(
        self,
        seed: int = 0,
        order: Order = "shuffled",
        reduction: Reduction = "sum",
        *,
        include_self: bool = False,
        head_weighting: HeadWeighting = "unweighted",
    ) -> None:
        check_choice("PCGrad", "order", order, Order)
        check_choice("PCGrad", "reduction", reduction, Reduction)
        check_choice("PCGrad", "head_weighting", head_weighting, HeadWeighting)
        self.seed = int(seed)
        self.order: Order = order
        self.reduction: Reduction = reduction
        self.include_self = bool(include_self)
        self.head_weighting = head_weighting
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)

    def reset(self) -> None:
        """Reseed the generator of the task orders with ``seed``."""
        self.generator.manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"generator"}:
            raise ValueError(f"PCGrad state must have the key 'generator', got {sorted(state)}")
        self.generator.set_state(state["generator"])

    def orders(self, K: int) -> list[list[int]]:
        """The visiting order of the tasks j for each task i (draws from the generator if shuffled)."""
        result = []
        for i in range(K):
            candidates = [j for j in range(K) if self.include_self or j != i]
            if self.order == "shuffled":
                perm = torch.randperm(len(candidates), generator=self.generator).tolist()
                candidates = [candidates[p] for p in perm]
            result.append(candidates)
        return result

    def coefficients(self, gramian: Tensor, orders: list[list[int]]) -> Tensor:
        r"""C with :math:`g_i^{PC} = \sum_k C_{ik} g_k` (float64, CPU), for given visiting orders."""
        G = gramian.detach().to("cpu", torch.float64).numpy()
        K = G.shape[0]
        C = np.eye(K)
        norms_sq = np.diag(G)
        if K >= 8 and len(orders) == K and len({len(order) for order in orders}) == 1:
            # Row i's recursion depends on row i alone: take step s of every row at once (K·m scalar
            # steps become m vector steps; the same arithmetic per row).
            table = np.asarray(orders, dtype=np.int64).reshape(K, -1)
            rows = np.arange(K)
            for s in range(table.shape[1]):
                js = table[:, s]
                dots = np.einsum("ik,ki->i", C, G[:, js])
                project = (dots < 0) & (norms_sq[js] > 0)  # a zero gradient: nothing to project on
                C[rows[project], js[project]] -= dots[project] / norms_sq[js[project]]
            return torch.from_numpy(C)
        for i in range(K):
            for j in orders[i]:
                if not norms_sq[j] > 0:  # a zero gradient: nothing to project on
                    continue
                dot = float(C[i] @ G[:, j])
                if dot < 0:
                    C[i, j] -= dot / norms_sq[j]
        return torch.from_numpy(C)

    @property
    def weight_sum(self) -> WeightSum:  # type: ignore[override]
        """K (``"sum"``) or 1 (``"mean"``) when no two gradients conflict; each projection changes it."""
        return "K" if self.reduction == "sum" else "1"

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        K = gramian.shape[0]
        C = self.coefficients(gramian, self.orders(K))
        weights = C.sum(dim=0)
        if self.reduction == "mean":
            weights = weights / K
        projections = int((C - torch.eye(K, dtype=torch.float64)).ne(0).sum())
        return WeightingOutput(weights, {"projections": projections})

    def __repr__(self) -> str:
        return (
            f"PCGrad(seed={self.seed}, order={self.order!r}, reduction={self.reduction!r}, "
            f"include_self={self.include_self}, head_weighting={self.head_weighting!r})"
        )
