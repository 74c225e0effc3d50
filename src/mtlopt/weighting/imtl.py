r"""IMTL: IMTL-L's learned loss scales and IMTL-G's equal-projection weights, together.

Liyang Liu, Yi Li, Zhanghui Kuang, Jing-Hao Xue, Yimin Chen, Wenming Yang, Qingmin Liao and Wayne
Zhang, "Towards Impartial Multi-task Learning", ICLR 2021 (the hybrid of :class:`mtlopt.IMTLL` and
:class:`mtlopt.IMTLG`). No official code found; LibMTL's ``LibMTL/weighting/IMTL.py`` is the reference
this class reproduces (TorchJD composes ``IMTLL`` and ``IMTLG``).

Every task has a learnable scale :math:`s_t` (initialized to 0). The losses are first scaled,

.. math::

    L'_t = e^{s_t} L_t - s_t ,

then IMTL-G (:mod:`mtlopt.weighting.imtl_g`) runs on the gradients :math:`g'_t = e^{s_t} g_t` of the
scaled losses: the shared part receives :math:`\sum_t \alpha_t g'_t` with :math:`\sum_t \alpha_t = 1`
and equal projections on the unit gradients. The unit gradients do not depend on the scales, so
:math:`\alpha_t e^{s_t}` is proportional to IMTL-G's weights on the raw gradients: for an invertible G
the scales change the length of the shared update, not its direction.
The task-specific parameters receive :math:`\nabla L'_t` unweighted, and the scales receive
:math:`\partial \sum_t L'_t / \partial s_t = e^{s_t} L_t - 1` (LibMTL: from its per-task backward
passes), so that at a stationary point :math:`e^{s_t} L_t = 1`, as in IMTL-L.

``result.weights`` are the α applied to the gradients of the scaled losses (LibMTL returns the same);
the weight each raw gradient :math:`g_t` gets is :math:`\alpha_t e^{s_t}`
(``diagnostics["loss_scales"]`` holds :math:`e^{s}`). The total weight is 1 on the scaled losses
(``weight_sum = "1"``); on the raw gradients it is :math:`\sum_t \alpha_t e^{s_t}` (1 at the start).

Usage: the scales are parameters of this module (``imtl.scales``): **add ``imtl.parameters()`` to the
optimizer** (without weight decay). The paper and LibMTL's published runs take the gradients w.r.t.
the shared representation:

.. code-block:: python

    imtl = mtlopt.IMTL(2)
    optimizer = torch.optim.Adam(
        [{"params": model.parameters()}, {"params": imtl.parameters(), "weight_decay": 0.0}]
    )
    z = model.encoder(x)
    mtlopt.backward(losses_of(z), imtl, features=z)  # writes imtl.scales.grad too
    optimizer.step()

How it fits :func:`mtlopt.backward`: the method is a :class:`~mtlopt.GramianWeighting` whose
:meth:`~IMTL.transform_losses` returns the scaled losses; ``backward`` differentiates those instead of
the user's (every path: ``shared_params=``, ``features=``, DDP, GradScaler), and the scales, leaves of
the scaled losses that are not shared, get their gradient with the heads'.

======================  ====================================  =====================================
choice                  here (default)                        peers
======================  ====================================  =====================================
initial :math:`s`       0 (paper, LibMTL)                     –
optimizer of :math:`s`  the user's                            LibMTL: the model's optimizer
where G is taken        the caller's; ``features=z`` in the   LibMTL: ``rep_grad=True`` in its
                        benchmark runner (paper, LibMTL       published runs, shared params
                        runs)                                 otherwise
``feature_batch``       ``"flatten"``                         ``"sum"``: LibMTL ``rep_grad=True``
``solve``               ``"cosine"`` (see IMTL-G)             LibMTL: ``torch.inverse`` of
                                                              :math:`DU^\top`
heads                   :math:`\nabla L'_t` (LibMTL)          –
======================  ====================================  =====================================

``state_dict()``/``load_state_dict()`` are those of :class:`torch.nn.Module` (the scales).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._base import (
    FeatureBatch,
    GramianWeighting,
    HeadWeighting,
    WeightingOutput,
    WeightSum,
    check_method_options,
)
from ._positive import check_positive_int
from .imtl_g import Solve, imtl_g_weights

__all__ = ["IMTL"]


class IMTL(nn.Module, GramianWeighting):
    r"""IMTL (Liu et al. 2021): IMTL-G on the gradients of the losses :math:`e^{s_t} L_t - s_t`.

    Args:
        num_tasks: K.
        feature_batch: with ``features=``, ``"flatten"`` or ``"sum"`` (LibMTL's ``rep_grad``).
        solve: IMTL-G's ``"cosine"`` or ``"gramian"`` pseudo-inverse (see :class:`mtlopt.IMTLG`).

    Add ``imtl.parameters()`` to the optimizer: the scales are trained by it.
    """

    min_tasks = 1
    weight_sum: WeightSum = "1"  # on the scaled losses
    head_weighting: HeadWeighting = "unweighted"

    def __init__(
        self, num_tasks: int, *, feature_batch: FeatureBatch = "flatten", solve: Solve = "cosine"
    ) -> None:
        super().__init__()
        self.num_tasks = check_positive_int("IMTL", "num_tasks", num_tasks)
        check_method_options(self, feature_batch=(feature_batch, FeatureBatch), solve=(solve, Solve))
        self.feature_batch = feature_batch
        self.solve: Solve = solve
        self.scales = nn.Parameter(torch.zeros(num_tasks))

    def reset(self) -> None:
        """Every scale back to 0 (the optimizer's state is the caller's)."""
        with torch.no_grad():
            self.scales.zero_()

    def transform_losses(self, losses: list[Tensor]) -> list[Tensor]:
        r"""The scaled losses :math:`e^{s_t} L_t - s_t`, differentiable in the losses and in s."""
        if len(losses) != self.num_tasks:
            raise ValueError(f"IMTL was set up for {self.num_tasks} tasks but got {len(losses)} losses")
        scaled = []
        for t, loss in enumerate(losses):
            s = self.scales[t].to(loss.device, loss.dtype)
            scaled.append(s.exp() * loss - s)
        return scaled

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        weights, diagnostics = imtl_g_weights(gramian, self.solve)
        diagnostics["loss_scales"] = self.scales.detach().exp().to("cpu", torch.float64).tolist()
        return WeightingOutput(weights, diagnostics)

    def forward(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The weights alone, as ``GramianWeighting.__call__`` (``nn.Module.__call__`` dispatches here)."""
        return GramianWeighting.__call__(self, gramian, losses)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, feature_batch={self.feature_batch!r}, solve={self.solve!r}"
