r"""SDMGrad: stochastic direction-oriented multi-objective gradient descent (double sampling).

Peiyao Xiao, Hao Ban and Kaiyi Ji, "Direction-oriented Multi-objective Learning: Simple and Provable
Stochastic Algorithms", NeurIPS 2023 (arXiv:2305.18409). Official code: OptMN-Lab/sdmgrad
``methods/weight_methods.py::SDMGrad``; LibMTL has ``SDMGrad``; TorchJD ``SDMGradWeighting`` (on a
given matrix).

The direction is kept near a target direction, the mean gradient :math:`\bar g = J^\top\tilde w`
(:math:`\tilde w = 1/K`): :math:`\min_{w\in\Delta} \tfrac12\|J^\top(w + \lambda\tilde w)\|^2`. Per step,
with independent batches ξ, ξ′ (the weights) and ζ (the update) and their per-task Jacobians w.r.t. the
shared parameters:

.. math::

    A = \frac{J_\xi J_{\xi'}^\top}{s^2 + 10^{-8}}, \quad
    s = \operatorname{mean}_t \sqrt{\max(A_{tt}, 0)}, \qquad
    v \leftarrow \mu v + A(w + \lambda\tilde w), \quad w \leftarrow \Pi_\Delta(w - \eta v)
    \ \ (n \text{ times}), \qquad
    d = J_\zeta^\top c, \quad c = \frac{w + \lambda\tilde w}{1 + \lambda},

v restarted at 0 every step (a fresh SGD with momentum μ), w warm-started across steps (from 1/K),
:math:`\Pi_\Delta` the Euclidean projection onto the simplex (float64). :math:`A(w+\lambda\tilde w)` is
an unbiased estimate (up to the scale s) of the gradient of the objective above. The update needs no
Jacobian of ζ: one backward pass of :math:`\sum_t c_t L_t(\zeta)`. Batch 0 (``losses`` of
:func:`mtlopt.backward`) is ζ, batches 1 and 2 (``extra_losses``) are ξ and ξ′, as in LibMTL.

The weights are c (Σc = 1, ``weight_sum = "1"``; λ → ∞ gives EW's mean, λ = 0 a stochastic MGDA);
``weight_scale="num-tasks"`` multiplies them by K (the official code's "to match the sum loss").

==================  =========================================  ========================================
choice              here (default)                             peers
==================  =========================================  ========================================
``lambda_``         0.3 (official ``run.sh``, LibMTL,          official class default 0.6
                    TorchJD)
``n_iter``          20 (official, LibMTL, TorchJD)
``lr``,             10, 0.5 (official, TorchJD)                LibMTL lr 5
``momentum``
``scale``           ``"clamp"``: :math:`\max(A_{tt}, 0)`,      ``"official"``: :math:`s = \operatorname
                    :math:`s^2 + 10^{-8}` (LibMTL, TorchJD)    {mean}_t\sqrt{A_{tt} + 10^{-4}}`, A/s²
                                                               (NaN for a cross-Gramian with
                                                               :math:`A_{tt} < -10^{-4}`)
``weight_scale``    ``"one"``                                  ``"num-tasks"`` (official ×K)
``head_batches``    ``"update"``: heads get ζ's gradients      ``"all"`` with ``reduction="sum"``:
                                                               the sum over ζ, ξ, ξ′ (official, LibMTL:
                                                               their per-task backward passes)
``head_weighting``  ``"unweighted"`` (official, LibMTL)        ``"weighted"``: :math:`c_t\nabla L_t`
==================  =========================================  ========================================

**Official bug** (not reproduced): its three gradient buffers are one tensor repeated, so A is the last
batch's own Gramian and the update uses that batch, not ζ: the double sampling is lost. The official
code also clips the shared gradient to norm 1 (its ``max_norm``, in the base class of the FAMO
codebase for every method): a recipe setting, not offered here. SDMGrad-OS (objective sampling) is
not offered. Only ``shared_params=`` (as MoDo). State: w (float64) and the step; :meth:`reset`
restores w = 1/K. Diagnostics: ``step``, ``scale`` (s), ``objective``
(:math:`\tfrac12 (w+\lambda\tilde w)^\top A (w+\lambda\tilde w)` after the inner loop, normalized A).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ._base import (
    BatchReduction,
    GramianWeighting,
    HeadWeighting,
    WeightingOutput,
    WeightSum,
    check_method_options,
)
from ._state import check_state_keys, copied, projection_simplex, simplex_start
from .modo import HeadBatches, check_rate, roles_of

__all__ = ["SDMGrad"]

Scale = Literal["clamp", "official"]
WeightScale = Literal["one", "num-tasks"]
_KEYS = {"w", "step"}


class SDMGrad(GramianWeighting):
    """SDMGrad (Xiao et al. 2023); see the module docstring for the rule and the options.

    Args:
        lambda_: pull λ towards the mean gradient (0: stochastic MGDA; large: EW).
        n_iter: inner projected-SGD iterations on w per step.
        lr: the inner SGD's step size.
        momentum: the inner SGD's momentum.
        scale: ``"clamp"`` or ``"official"`` normalization of A.
        weight_scale: ``"one"`` (Σc = 1) or ``"num-tasks"`` (×K).
        reduction: how the update batches' gradients are combined (``"mean"`` or ``"sum"``).
        head_batches: the batches the heads' gradients are taken on.
        head_weighting: heads get :math:`\\nabla L_t` (``"unweighted"``) or :math:`c_t \\nabla L_t`.
    """

    weight_sum: WeightSum = "1"

    def __init__(
        self,
        lambda_: float = 0.3,
        n_iter: int = 20,
        lr: float = 10.0,
        momentum: float = 0.5,
        *,
        scale: Scale = "clamp",
        weight_scale: WeightScale = "one",
        reduction: BatchReduction = "mean",
        head_batches: HeadBatches = "update",
        head_weighting: HeadWeighting = "unweighted",
    ) -> None:
        check_method_options(
            self,
            scale=(scale, Scale),
            weight_scale=(weight_scale, WeightScale),
            reduction=(reduction, BatchReduction),
            head_batches=(head_batches, HeadBatches),
            head_weighting=(head_weighting, HeadWeighting),
        )
        self.lambda_ = check_rate("SDMGrad", "lambda_", lambda_, nonnegative=True)
        if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 1:
            raise ValueError(f"SDMGrad n_iter must be an integer >= 1, got {n_iter!r}")
        self.n_iter = n_iter
        self.lr = check_rate("SDMGrad", "lr", lr)
        self.momentum = check_rate("SDMGrad", "momentum", momentum, nonnegative=True)
        if self.momentum >= 1:
            raise ValueError(f"SDMGrad momentum must be in [0, 1), got {momentum!r}")
        self.scale = scale
        self.weight_scale = weight_scale
        self.reduction = reduction
        self.head_batches = head_batches
        self.head_weighting = head_weighting
        self.batch_roles = roles_of((1, 2), (0,), head_batches, 3, reduction)
        self.reset()

    def reset(self) -> None:
        self.w: Tensor | None = None
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"w": copied(self.w), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(self, state, _KEYS)
        self.w = copied(state["w"])
        self.step = int(state["step"])

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        K = gramian.shape[0]
        self.w = simplex_start(self, self.w, K, "w")
        diag = gramian.diagonal()
        if self.scale == "clamp":
            s = float(diag.clamp(min=0).sqrt().mean())
            A = gramian / (s**2 + 1e-8)
        else:
            s = float((diag + 1e-4).sqrt().mean())
            A = gramian / s**2
        target = torch.full((K,), self.lambda_ / K, dtype=torch.float64)  # λ w̃
        w = self.w
        velocity: Tensor | None = None
        for _ in range(self.n_iter):
            grad = A @ (w + target)
            velocity = grad if velocity is None else self.momentum * velocity + grad
            w = projection_simplex(w - self.lr * velocity)
        self.w = w
        self.step += 1
        c = (w + target) / (1.0 + self.lambda_)
        if self.weight_scale == "num-tasks":
            c = c * K
        u = w + target
        diagnostics = {"step": self.step, "scale": s, "objective": float(0.5 * u @ A @ u)}
        return WeightingOutput(c, diagnostics)
