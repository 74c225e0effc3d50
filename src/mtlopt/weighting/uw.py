r"""Uncertainty weighting (UW): task weights learned as homoscedastic noise variances.

Alex Kendall, Yarin Gal and Roberto Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses
for Scene Geometry and Semantics", CVPR 2018, arXiv:1705.07115.

Every task t has a learnable log-variance :math:`s_t = \log \sigma_t^2` (initialized to 0, i.e.
:math:`\sigma_t = 1`), trained jointly with the model on

.. math::

    \mathcal{L} = \sum_t c_t\, e^{-s_t} L_t + \tfrac12 \sum_t s_t ,
    \qquad c_t = \begin{cases} \tfrac12 & \text{regression (Gaussian likelihood:}
        \ \tfrac{1}{2\sigma^2} L + \log\sigma) \\
        1 & \text{classification (softmax scaled by } 1/\sigma^2\text{:}
        \ \tfrac{1}{\sigma^2} L + \log\sigma) \end{cases}

(the paper's combined objective; :math:`\log \sigma_t = s_t / 2`, and the paper trains
:math:`s_t` rather than :math:`\sigma_t` for numerical stability). The effective task weight is
:math:`w_t = c_t e^{-s_t}`, and

.. math::

    \frac{\partial \mathcal{L}}{\partial s_t} = -c_t e^{-s_t} L_t + \tfrac12 ,

so at a stationary point :math:`w_t = 1 / (2 L_t)` for both task types: UW drives each task's weighted
loss towards ½ (only for :math:`L_t > 0`; the regularizer is unbounded below when :math:`L_t \to 0`).

Options (the paper's reading is the default):

=================  ==========================================  =========================================
option             default (paper)                             alternative
=================  ==========================================  =========================================
``convention``     ``"paper"``: :math:`c_t` by task type        ``"libmtl"``: LibMTL's ``UW``
                   (``task_types``, all ``"regression"``        (``median-research-group/LibMTL``,
                   unless given)                                ``LibMTL/weighting/UW.py``):
                                                                :math:`L_t / (2 e^{s_t}) + s_t / 2` for
                                                                every task, i.e. the regression form
                                                                also for classification tasks (half the
                                                                paper's classification weight)
``init``           0 (``"paper"``)                              −0.5 (``"libmtl"``: LibMTL's initial
                                                                :math:`s_t`, weight
                                                                :math:`e^{0.5}/2 \approx 0.82`)
=================  ==========================================  =========================================

Usage: the log-variances are parameters of this module (``uw.log_variances``), so **add
``uw.parameters()`` to your optimizer** — without it the weights never change. Weight decay on them
pulls every :math:`\sigma_t` towards 1, so give them their own parameter group without decay:

.. code-block:: python

    uw = UncertaintyWeighting(2, task_types=["classification", "regression"])
    optimizer = torch.optim.AdamW(
        [
            {"params": model.parameters(), "weight_decay": 1e-2},
            {"params": uw.parameters(), "weight_decay": 0.0},
        ]
    )
    result = mtlopt.backward(losses, uw)  # one backward pass of the total; writes uw.log_variances.grad
    optimizer.step()

:meth:`~UncertaintyWeighting.weigh` returns the current weights :math:`c_t e^{-s_t}` (detached,
float64, for logging); :meth:`~UncertaintyWeighting.objective` the differentiable total, regularizer
included. ``state_dict()``/``load_state_dict()`` are those of :class:`torch.nn.Module` (the class
lists ``nn.Module`` first, so its methods win over the stateless defaults of :class:`LossWeighting`); the
module follows ``.to(device)`` like any other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .._options import check_choice
from ._base import LossOutput, LossWeighting, WeightingOutput, WeightSum

__all__ = ["UncertaintyWeighting"]

TaskType = Literal["regression", "classification"]
Convention = Literal["paper", "libmtl"]
_COEFFICIENT = {"regression": 0.5, "classification": 1.0}
_DEFAULT_INIT = {"paper": 0.0, "libmtl": -0.5}


class UncertaintyWeighting(nn.Module, LossWeighting):
    r"""Learned homoscedastic-uncertainty task weights (Kendall, Gal & Cipolla 2018).

    Args:
        num_tasks: K, the number of tasks.
        task_types: one of ``"regression"`` (:math:`\tfrac12 e^{-s}L + \tfrac12 s`) or
            ``"classification"`` (:math:`e^{-s}L + \tfrac12 s`) per task; all ``"regression"`` when
            None. Only with ``convention="paper"``.
        convention: ``"paper"`` or ``"libmtl"`` (the regression form for every task, initial
            :math:`s = -0.5`).
        init: the initial log-variance of every task (0 for ``"paper"``, −0.5 for ``"libmtl"`` when
            None); :meth:`reset` returns to it.

    Add ``uw.parameters()`` to the optimizer: the log-variances are trained by it.
    """

    min_tasks = 1
    coefficients: Tensor  # a buffer: c_t of each task type
    weight_sum: WeightSum = "data-dependent"  # Σ c_t e^{-s_t}: K/2 at the start for regression tasks

    def __init__(
        self,
        num_tasks: int,
        task_types: Sequence[TaskType] | None = None,
        convention: Convention = "paper",
        *,
        init: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"UncertaintyWeighting num_tasks must be a positive int, got {num_tasks!r}")
        check_choice("UncertaintyWeighting", "convention", convention, Convention)
        if task_types is None:
            types = ("regression",) * num_tasks
        else:
            if convention == "libmtl":
                raise ValueError(
                    "UncertaintyWeighting convention='libmtl' uses L/(2·exp(s)) + s/2 for every task; "
                    "task_types applies to convention='paper' only"
                )
            types = tuple(task_types)
            if len(types) != num_tasks:
                raise ValueError(
                    f"UncertaintyWeighting got {len(types)} task_types for {num_tasks} tasks: {list(types)}"
                )
            for t, kind in enumerate(types):
                if kind not in _COEFFICIENT:
                    raise ValueError(
                        f"UncertaintyWeighting: task_types[{t}] is {kind!r}; expected 'regression' or "
                        "'classification'"
                    )
        init_value = _DEFAULT_INIT[convention] if init is None else float(init)
        if not math.isfinite(init_value):
            raise ValueError(f"UncertaintyWeighting init must be finite, got {init}")
        self.num_tasks = num_tasks
        self.task_types: tuple[str, ...] = types
        self.convention: Convention = convention
        self.init = init_value
        self.log_variances = nn.Parameter(torch.full((num_tasks,), init_value))
        coefficients = torch.tensor([_COEFFICIENT[kind] for kind in types])
        self.register_buffer("coefficients", coefficients, persistent=False)

    def reset(self) -> None:
        """Set every log-variance back to ``init`` (the optimizer's state is the caller's)."""
        with torch.no_grad():
            self.log_variances.fill_(self.init)

    def effective_weights(self) -> Tensor:
        r"""The differentiable weights :math:`c_t e^{-s_t}` (shape (K,), the parameter's dtype)."""
        return self.coefficients.to(self.log_variances.dtype) * torch.exp(-self.log_variances)

    def weigh(self, values: Tensor) -> WeightingOutput:
        losses = values
        self._check_losses(losses)
        weights = self.effective_weights().detach().to("cpu", torch.float64)
        return WeightingOutput(weights)

    def objective(self, losses: Tensor, output: WeightingOutput) -> Tensor:
        r""":math:`\sum_t c_t e^{-s_t} L_t + \frac12 \sum_t s_t`, differentiable in the losses and in s."""
        self._check_losses(losses)
        s = self.log_variances.to(losses.device, losses.dtype)
        c = self.coefficients.to(losses.device, losses.dtype)
        return (c * torch.exp(-s) * losses).sum() + 0.5 * s.sum()

    def forward(self, losses: Tensor, values: Tensor | None = None) -> LossOutput:
        """One step, as ``LossWeighting.__call__`` (``nn.Module.__call__`` dispatches here)."""
        return LossWeighting.__call__(self, losses, values)

    def _check_losses(self, losses: Tensor) -> None:
        if losses.shape != (self.num_tasks,):
            raise ValueError(
                f"UncertaintyWeighting was set up for {self.num_tasks} tasks but got losses of shape "
                f"{tuple(losses.shape)}"
            )

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, task_types={list(self.task_types)}, convention={self.convention!r}"
        )
