r"""DB-MTL: dual balancing, log losses and moving-average gradients normalized to the largest norm.

Baijiong Lin, Weisen Jiang, Feiyang Ye, Yu Zhang, Pengguang Chen, Ying-Cong Chen, Shu Liu and James T.
Kwok, "Dual-Balancing for Multi-Task Learning", arXiv:2308.12029 (2023). Official code: the authors'
LibMTL ``LibMTL/weighting/DB_MTL.py`` (not in the PyPI 1.1.5 wheel); TorchJD has none.

Loss balancing: the gradients are those of :math:`\log(L_t + \epsilon)`, i.e. :math:`\nabla L_t /
(L_t + \epsilon)`. Gradient balancing (Algorithm 1), per step k = 1, 2, ...:

.. math::

    \hat g_t \leftarrow \beta_k \hat g_t + (1 - \beta_k)\, \nabla_\theta \log(L_t + \epsilon),
    \qquad \beta_k = \beta / k^{\sigma},

    d = \sum_t \frac{\max_s \|\hat g_s\|}{\|\hat g_t\| + \epsilon}\, \hat g_t ,

ĝ starting at 0 with no bias correction: every task's moving average is rescaled to the largest
one's norm and the K are summed, so :math:`\|d\| \le K \max_t \|\hat g_t\|`. The heads receive
:math:`\nabla \log(L_t + \epsilon)`, unweighted (the official code backpropagates each log loss).
The losses must exceed :math:`-\epsilon` (a ``ValueError`` names the task otherwise). Computed by the
chain rule from the Jacobian of the losses themselves, :math:`\nabla L_t/(L_t+\epsilon)` with the
global batch's loss values, so that two processes give what one gives on the whole batch (the log of
a per-rank mean would not); the heads' coefficients are :math:`1/(L_t+\epsilon)`.

=================  ===========================================  =====================================
choice             here (default)                                peers
=================  ===========================================  =====================================
``beta``           0.9 (LibMTL ``DB_beta``)                      paper grids {0.1, 0.5, 0.9}
``beta_decay`` σ   0 (LibMTL ``DB_beta_sigma``)                  0.5 (:math:`\beta/\sqrt{k}`)
``eps`` ε          1e-8 (official, in the log and the norms)
where J is taken   ``shared_params=`` (LibMTL refuses            --
                   ``rep_grad``)
=================  ===========================================  =====================================

Weights: none over the current gradients (``weights_on_gradients = False``); the reported weights are
ones (the K rescaled terms, as LibMTL returns), so ``weight_total`` divides d by K / weight_total.
``weight_sum = "data-dependent"``: on K identical tasks :math:`d = K(1-\beta)\nabla L / (L+\epsilon)` on
the first step, :math:`K \nabla L/(L+\epsilon)` once the average has settled (log-loss gradients).
State: ĝ (K×P,
the Jacobian's dtype and device) and the step; :meth:`reset` zeroes them. Diagnostics: ``step``,
``beta`` (β_k), ``ema_norms`` (:math:`\|\hat g_t\|`), ``scales`` (the K factors).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import DirectionMethod, DirectionOutput, HeadWeighting, WeightSum
from ._state import check_state_keys, copied

__all__ = ["DBMTL"]

_KEYS = {"grad_buffer", "step"}


class DBMTL(DirectionMethod):
    """DB-MTL (Lin et al. 2023); see the module docstring for the rule and the options."""

    weight_sum: WeightSum = "data-dependent"
    weights_on_gradients = False
    head_weighting: HeadWeighting = "unweighted"

    def __init__(self, beta: float = 0.9, *, beta_decay: float = 0.0, eps: float = 1e-8) -> None:
        for name, value, low in (
            ("beta", beta, "[0, 1)"),
            ("beta_decay", beta_decay, ">= 0"),
            ("eps", eps, "> 0"),
        ):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not value < float("inf"):
                raise ValueError(f"DBMTL {name} must be a finite number {low}, got {value!r}")
        if not 0 <= beta < 1:
            raise ValueError(f"DBMTL beta must be in [0, 1) (the moving-average factor), got {beta!r}")
        if beta_decay < 0:
            raise ValueError(f"DBMTL beta_decay must be >= 0, got {beta_decay!r}")
        if not eps > 0:
            raise ValueError(f"DBMTL eps must be > 0, got {eps!r}")
        self.beta = float(beta)
        self.beta_decay = float(beta_decay)
        self.eps = float(eps)
        self.reset()

    def reset(self) -> None:
        self.grad_buffer: Tensor | None = None
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"grad_buffer": copied(self.grad_buffer), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(self, state, _KEYS)
        self.grad_buffer = copied(state["grad_buffer"])
        self.step = int(state["step"])

    def direct(self, jacobian: Tensor, losses: Tensor) -> DirectionOutput:
        K = jacobian.shape[0]
        bad = (losses <= -self.eps).nonzero()[:, 0].tolist()
        if bad:
            raise ValueError(
                f"DBMTL takes log(L + {self.eps:g}) of the losses: task(s) {bad} have losses "
                f"{[float(losses[t]) for t in bad]} <= -eps"
            )
        shifted = losses + self.eps
        # the chain rule on the global batch's J and losses: ∇ log(L + ε) = ∇L / (L + ε)
        J = jacobian / shifted.to(jacobian.device, jacobian.dtype)[:, None]
        if self.grad_buffer is None:
            self.grad_buffer = torch.zeros_like(J)
        elif self.grad_buffer.shape != J.shape:
            raise ValueError(
                f"DBMTL holds moving averages of shape {tuple(self.grad_buffer.shape)} but got "
                f"{tuple(J.shape)}; call reset() for a new model"
            )
        self.step += 1
        beta = self.beta / self.step**self.beta_decay
        buffer = self.grad_buffer.to(J.device, J.dtype)
        self.grad_buffer = J + beta * (buffer - J)
        norms = self.grad_buffer.norm(dim=1)
        scales = norms.max() / (norms + self.eps)
        direction = scales @ self.grad_buffer
        diagnostics: dict[str, Any] = {
            "step": self.step,
            "beta": beta,
            "ema_norms": norms.tolist(),
            "scales": scales.tolist(),
        }
        ones = torch.ones(K, dtype=torch.float64)
        return DirectionOutput(direction, ones, diagnostics, head_weights=1.0 / shifted)
