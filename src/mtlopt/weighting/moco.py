r"""MoCo: MGDA on a tracked (moving-average) estimate of the task gradients.

Heshan Fernando, Han Shen, Miao Liu, Subhajit Chaudhury, Keerthiram Murugesan and Tianyi Chen,
"Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach", ICLR 2023
(OpenReview dLAYGdKTi2). Official code: heshandevaka/MoCo ``CAGrad/nyuv2/utils.py`` (``tracking``,
run by ``run_moco.sh``); LibMTL has ``MoCo`` (from the authors' code); TorchJD has none.

Per step k = 0, 1, ... with the K×P Jacobian :math:`J` (rows :math:`g_t`, optionally normalized, see
``normalize``):

.. math::

    Y \leftarrow Y - \beta_k (Y - J), \qquad
    \lambda \leftarrow \Pi_\Delta\big(\lambda - \gamma_k (Y Y^\top + \rho I)\lambda\big), \qquad
    d = c\, Y^\top \lambda ,

:math:`\beta_k = \beta/(1+k)^{\sigma_\beta}`, :math:`\gamma_k = \gamma/(1+k)^{\sigma_\gamma}`, Y starting
at 0 and λ at 1/K, :math:`\Pi_\Delta` the Euclidean projection onto the simplex (sort-based, float64),
c = 1 (``weight_scale="one"``) or K (``"num-tasks"``, the official NYUv2 code's "to match the sum
loss"). Y is a tracked estimate of J whose bias vanishes as β_k → 0 (the paper's point); λ takes one
projected-gradient step per iteration on the min-norm problem :math:`\min_{\lambda\in\Delta}
\tfrac12\|Y^\top\lambda\|^2` rather than solving it. Heads are unweighted (official, LibMTL).

========================  =====================================  ====================================
choice                    here (default)                         peers
========================  =====================================  ====================================
``beta``, ``beta_decay``  0.99, 0 (the official NYUv2 run)       LibMTL 0.5, 0.5; Trade-Off-MOL 0.1
``gamma``,                0.1, 0 (official run)                  LibMTL 0.1, 0.5
``gamma_decay``
``rho``                   0 (official run, LibMTL)               Trade-Off-MOL 0.1
``normalize``             ``"none"``: :math:`g_t`                ``"unit-times-loss"``:
                                                                 :math:`g_t/(\|g_t\|+10^{-8})\,L_t`
                                                                 (LibMTL; official ``raw_loss``);
                                                                 ``"l2"``: :math:`g_t/(\|g_t\|+10^{-8})`
                                                                 (Trade-Off-MOL's ``"loss"``,
                                                                 ``"loss+"``: not offered)
``lambda_map``            ``"projection"`` (official)            ``"softmax"`` (LibMTL: λ ← softmax(·);
                                                                 keeps λ near uniform)
``weight_scale``          ``"one"`` (λ ∈ Δ)                      ``"num-tasks"`` (official ×K)
``head_weighting``        ``"unweighted"`` (official, LibMTL)    ``"weighted"``
========================  =====================================  ====================================

``weight_sum = "data-dependent"``: Σλ = 1 (c with ``"num-tasks"``), but λ weighs the tracked Y, not the
current gradients (``weights_on_gradients = False``): Y starts at 0, so on the first step
:math:`d = \beta_0 c\, J^\top\lambda` (total β on identical tasks), tending to c as Y tracks J. The reported weights are cλ
(``weight_total`` rescales them, and d with them). State: Y (K×P, the Jacobian's dtype and device), λ (float64), the step;
:meth:`reset` restores the start. Diagnostics: ``step``, ``beta``, ``gamma`` (this step's β_k, γ_k),
``tracking_error`` (:math:`\|Y - J\|_F / \|J\|_F` after the update); :func:`mtlopt.backward` adds
``weight_sum`` and ``direction_norm``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ._base import DirectionMethod, DirectionOutput, HeadWeighting, WeightSum, check_method_options
from ._state import check_state_keys, copied, projection_simplex

__all__ = ["MoCo"]

Normalize = Literal["none", "l2", "unit-times-loss"]
LambdaMap = Literal["projection", "softmax"]
WeightScale = Literal["one", "num-tasks"]
_KEYS = {"y", "lambd", "step"}


def _rate(name: str, value: float, nonnegative: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0 if nonnegative else value > 0) and value < float("inf")
    if not ok:
        bound = ">= 0" if nonnegative else "> 0"
        raise ValueError(f"MoCo {name} must be a finite number {bound}, got {value!r}")
    return float(value)


class MoCo(DirectionMethod):
    """MoCo (Fernando et al. 2023); see the module docstring for the rule and the options."""

    weight_sum: WeightSum = "data-dependent"
    weights_on_gradients = False

    def __init__(
        self,
        beta: float = 0.99,
        gamma: float = 0.1,
        *,
        beta_decay: float = 0.0,
        gamma_decay: float = 0.0,
        rho: float = 0.0,
        normalize: Normalize = "none",
        lambda_map: LambdaMap = "projection",
        weight_scale: WeightScale = "one",
        head_weighting: HeadWeighting = "unweighted",
    ) -> None:
        check_method_options(
            self,
            normalize=(normalize, Normalize),
            lambda_map=(lambda_map, LambdaMap),
            weight_scale=(weight_scale, WeightScale),
            head_weighting=(head_weighting, HeadWeighting),
        )
        self.beta = _rate("beta", beta)
        if self.beta > 1:
            raise ValueError(f"MoCo beta must be in (0, 1] (the tracking step), got {beta!r}")
        self.gamma = _rate("gamma", gamma)
        self.beta_decay = _rate("beta_decay", beta_decay, nonnegative=True)
        self.gamma_decay = _rate("gamma_decay", gamma_decay, nonnegative=True)
        self.rho = _rate("rho", rho, nonnegative=True)
        self.normalize = normalize
        self.lambda_map = lambda_map
        self.weight_scale = weight_scale
        self.head_weighting = head_weighting
        self.reset()

    def reset(self) -> None:
        self.y: Tensor | None = None
        self.lambd: Tensor | None = None
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"y": copied(self.y), "lambd": copied(self.lambd), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(self, state, _KEYS)
        self.y = copied(state["y"])
        self.lambd = copied(state["lambd"])
        self.step = int(state["step"])

    def direct(self, jacobian: Tensor, losses: Tensor) -> DirectionOutput:
        J = jacobian
        K = J.shape[0]
        if self.normalize != "none":
            J = J / (J.norm(dim=1, keepdim=True) + 1e-8)
            if self.normalize == "unit-times-loss":
                J = J * losses.to(J.device, J.dtype)[:, None]
        if self.y is None:
            self.y = torch.zeros_like(J)
            self.lambd = torch.full((K,), 1.0 / K, dtype=torch.float64)
        elif self.y.shape != J.shape:
            raise ValueError(
                f"MoCo holds a tracked Jacobian of shape {tuple(self.y.shape)} but got {tuple(J.shape)}; "
                "call reset() for a new model"
            )
        assert self.lambd is not None
        beta = self.beta / (1 + self.step) ** self.beta_decay
        gamma = self.gamma / (1 + self.step) ** self.gamma_decay
        self.y = self.y.to(J.device, J.dtype)
        self.y = self.y - beta * (self.y - J)
        YYt = (self.y @ self.y.T).to("cpu", torch.float64)
        step = self.lambd - gamma * ((YYt + self.rho * torch.eye(K, dtype=torch.float64)) @ self.lambd)
        self.lambd = projection_simplex(step) if self.lambda_map == "projection" else torch.softmax(step, 0)
        self.step += 1
        c = float(K) if self.weight_scale == "num-tasks" else 1.0
        weights = self.lambd * c
        direction = weights.to(J.device, J.dtype) @ self.y
        scale = float(J.norm())
        diagnostics: dict[str, Any] = {
            "step": self.step,
            "beta": beta,
            "gamma": gamma,
            "tracking_error": float((self.y - J).norm()) / scale if scale > 0 else 0.0,
        }
        return DirectionOutput(direction, weights, diagnostics)
