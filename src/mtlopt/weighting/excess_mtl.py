r"""ExcessMTL: task weights driven up by each task's estimated excess risk.

Yifei He, Shiji Zhou, Guojun Zhang, Hyokun Yun, Yi Xu, Belinda Zeng, Trishul Chilimbi and Han Zhao,
"Robust Multi-Task Learning with Excess Risks", ICML 2024 (PMLR 235), arXiv:2402.02009. Official code:
uiuctml/ExcessMTL ``LibMTL/LibMTL/weighting/ExcessMTL.py`` (LibMTL's ``ExcessMTL`` is the same);
TorchJD has ``ExcessMTL`` (a Jacobian aggregator).

Per step, with the K×P Jacobian :math:`J` (rows :math:`g_t`):

.. math::

    S_t \leftarrow S_t + g_t \odot g_t, \qquad
    e_t = \sum_j \frac{g_{tj}^2}{\sqrt{S_{tj} + 10^{-7}}}

(an AdaGrad-like diagonal curvature, :math:`e_t \approx g_t^\top H_t^{-1} g_t` the excess-risk proxy of
Eqs. 6-7). During the first ``warmup_steps`` steps the weights stay as they are and the baseline
:math:`e^0` is the mean of :math:`e` over those steps (official: one step, :math:`e^0 = e` of step 1).
Afterwards (Eq. 9, exponentiated gradient, renormalized):

.. math::

    w \leftarrow c\,\frac{w \odot \exp(\eta\, e / e^0)}{\sum_t w_t \exp(\eta\, e_t / e^0_t)},
    \qquad d = J^\top w = \sum_t w_t g_t ,

with :math:`c = K` (``weight_scale="num-tasks"``, official: w starts at 1) or :math:`c = 1` (``"one"``,
TorchJD and the paper: w starts at 1/K). Computed as a softmax of :math:`\log w + \eta e/e^0` (the same
numbers, no overflow). Heads are weighted (the official code backpropagates :math:`\sum_t w_t L_t`).

Degenerate steps (tested): a task with :math:`e^0_t = 0` (a zero gradient through the warm-up) has no
baseline; its ratio :math:`e_t/e^0_t` is taken as 0 (its weight only follows the renormalization)
and it is listed in ``diagnostics["zero_baseline_tasks"]`` (the official code divides by 0). With
``baseline_eps`` ε > 0 the ratio is :math:`e/(e^0 + \epsilon)` for every task (TorchJD: 1e-7).

==================  =======================================  ========================================
choice              here (default)                            peers
==================  =======================================  ========================================
``step_size`` η     0.01 (official, LibMTL                    TorchJD ``robust_step_size=1.0``;
                    ``robust_step_size``)                     README example (Office-Home) 1
``weight_scale``    ``"num-tasks"``: Σw = K, w starts at 1    ``"one"``: Σw = 1, starts at 1/K
                    (official, LibMTL)                        (TorchJD, "as in the paper")
``warmup_steps``    1: the first step sets e⁰ only            TorchJD ``n_warmup_steps`` (n ≥ 1: the
                    (official)                                same rule); TorchJD's default 0 updates
                                                              the weights on step 1 with the raw e
                                                              (≈ ‖g_t‖₁, near one-hot): not offered
``baseline_eps``    0: :math:`e/e^0`, 0 where                 1e-7: :math:`e/(e^0 + 10^{-7})`
                    :math:`e^0 = 0` (official)                (TorchJD)
``head_weighting``  ``"weighted"`` (official, LibMTL)         ``"unweighted"``
where J is taken    ``shared_params=``                        LibMTL also ``rep_grad`` (batch-summed
                                                              representation gradients): not offered
==================  =======================================  ========================================

``weight_sum = "K"`` (the default; 1 with ``weight_scale="one"``). State: S (K×P, the Jacobian's dtype
and device), the warm-up sum of e, e⁰, w (float64), the step; :meth:`reset` clears all. Diagnostics:
``excess`` (e), ``ratio`` (:math:`e/e^0`, after the warm-up), ``warmup`` (this step only collected
statistics), ``step``; :func:`mtlopt.backward` adds ``weight_sum`` and ``direction_norm``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ._base import DirectionMethod, DirectionOutput, HeadWeighting, WeightSum, check_method_options
from ._state import check_state_keys, copied

__all__ = ["ExcessMTL"]

WeightScale = Literal["num-tasks", "one"]
_KEYS = {"sq_grad_sum", "warmup_sum", "baseline", "weights", "step"}


class ExcessMTL(DirectionMethod):
    """ExcessMTL (He et al. 2024); see the module docstring for the rule and the options."""

    weight_sum: WeightSum = "K"
    min_tasks = 1

    def __init__(
        self,
        step_size: float = 1e-2,
        *,
        weight_scale: WeightScale = "num-tasks",
        warmup_steps: int = 1,
        baseline_eps: float = 0.0,
        head_weighting: HeadWeighting = "weighted",
    ) -> None:
        check_method_options(
            self, weight_scale=(weight_scale, WeightScale), head_weighting=(head_weighting, HeadWeighting)
        )
        if not (isinstance(step_size, (int, float)) and 0 < step_size < float("inf")):
            raise ValueError(f"ExcessMTL step_size must be a finite number > 0, got {step_size!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(
                f"ExcessMTL warmup_steps must be an integer >= 1 (the steps that set the baseline e0), "
                f"got {warmup_steps!r}"
            )
        if not (isinstance(baseline_eps, (int, float)) and 0 <= baseline_eps < float("inf")):
            raise ValueError(f"ExcessMTL baseline_eps must be a finite number >= 0, got {baseline_eps!r}")
        self.baseline_eps = float(baseline_eps)
        self.step_size = float(step_size)
        self.weight_scale = weight_scale
        self.warmup_steps = warmup_steps
        self.head_weighting = head_weighting
        self.weight_sum = "K" if weight_scale == "num-tasks" else "1"
        self.reset()

    def reset(self) -> None:
        self.sq_grad_sum: Tensor | None = None
        self.warmup_sum: Tensor | None = None
        self.baseline: Tensor | None = None
        self.weights: Tensor | None = None
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "sq_grad_sum": copied(self.sq_grad_sum),
            "warmup_sum": copied(self.warmup_sum),
            "baseline": copied(self.baseline),
            "weights": copied(self.weights),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(self, state, _KEYS)
        self.sq_grad_sum = copied(state["sq_grad_sum"])
        self.warmup_sum = copied(state["warmup_sum"])
        self.baseline = copied(state["baseline"])
        self.weights = copied(state["weights"])
        self.step = int(state["step"])

    def direct(self, jacobian: Tensor, losses: Tensor) -> DirectionOutput:
        J = jacobian
        K = J.shape[0]
        if self.sq_grad_sum is None or self.sq_grad_sum.shape != J.shape:
            if self.step:
                raise ValueError(
                    f"ExcessMTL holds a state for a Jacobian of shape {tuple(self.sq_grad_sum.shape)}"  # type: ignore[union-attr]
                    f" but got {tuple(J.shape)}; call reset() for a new model"
                )
            self.sq_grad_sum = torch.zeros_like(J)
            self.warmup_sum = torch.zeros(K, dtype=torch.float64)
            start = 1.0 if self.weight_scale == "num-tasks" else 1.0 / K
            self.weights = torch.full((K,), start, dtype=torch.float64)
        assert self.warmup_sum is not None and self.weights is not None
        self.sq_grad_sum = self.sq_grad_sum.to(J.device, J.dtype)
        squared = J * J
        self.sq_grad_sum.add_(squared)
        excess = (squared / torch.sqrt(self.sq_grad_sum + 1e-7)).sum(dim=1).to("cpu", torch.float64)
        self.step += 1
        diagnostics: dict[str, Any] = {"excess": excess.tolist(), "step": self.step}
        if self.step <= self.warmup_steps:
            self.warmup_sum = self.warmup_sum + excess
            if self.step == self.warmup_steps:
                self.baseline = self.warmup_sum / self.warmup_steps
            diagnostics["warmup"] = True
        else:
            assert self.baseline is not None
            baseline = self.baseline + self.baseline_eps
            positive = baseline > 0
            ratio = torch.where(positive, excess / torch.where(positive, baseline, 1.0), 0.0)
            total = float(K) if self.weight_scale == "num-tasks" else 1.0
            self.weights = torch.softmax(torch.log(self.weights) + self.step_size * ratio, dim=0) * total
            diagnostics.update(warmup=False, ratio=ratio.tolist())
            if not bool(positive.all()):
                diagnostics["zero_baseline_tasks"] = (~positive).nonzero()[:, 0].tolist()
        w = self.weights.clone()
        return DirectionOutput(w.to(J.device, J.dtype) @ J, w, diagnostics)
