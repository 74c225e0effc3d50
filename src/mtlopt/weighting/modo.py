r"""MoDo: stochastic MGDA with double sampling (a projected-gradient step on λ per step).

Lisha Chen, Heshan Fernando, Yiming Ying and Tianyi Chen, "Three-Way Trade-Off in Multi-Objective
Learning: Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023 (arXiv:2305.20057; JMLR 25,
2024). Official code: heshandevaka/Trade-Off-MOL ``LibMTL/LibMTL/weighting/MoDo.py``; LibMTL has
``MoDo`` (from the authors' code); TorchJD has ``MoDoWeighting`` (on a given matrix).

Per step, with independent batches :math:`z_1, z_2` (and :math:`z_3`) and the per-task Jacobians
:math:`J_b` (K×P, rows :math:`\nabla_\theta L_t(z_b)`) w.r.t. the shared parameters:

.. math::

    A = J_1 J_2^\top, \qquad
    \lambda \leftarrow \Pi_\Delta\big(\lambda - \gamma\,(A\lambda + \rho\lambda)\big), \qquad
    d = r \sum_{b \in U} J_b^\top \lambda ,

λ starting at 1/K, :math:`\Pi_\Delta` the Euclidean projection onto the simplex (sort-based,
float64). :math:`A\lambda` is an unbiased estimate of :math:`J J^\top\lambda`, the gradient of MGDA's
min-norm objective :math:`\tfrac12\|J^\top\lambda\|^2` (a single batch's :math:`J_1J_1^\top` is
biased: the point of the double sampling); λ takes one step on it per iteration rather than being
solved for. The update batches U are :math:`\{z_1, z_2\}` (``batches=2``) or :math:`\{z_3\}`
(``batches=3``), r = 1/|U| (``reduction="mean"``) or 1 (``"sum"``). The batches reach the method
through :func:`mtlopt.backward`'s ``extra_losses`` (see :class:`~mtlopt.weighting.BatchRoles`:
``batch_roles`` here is what these options give); the benchmark trainer draws them.

The weights are λ: they sum to 1 (``weight_sum = "1"``; on identical tasks and identical batches
d is the common gradient). :meth:`weigh` reads A (K×K, not symmetric in general) and returns the
updated λ; called on a symmetric G it is one step of projected gradient descent for MGDA's problem.

==================  =========================================  ========================================
choice              here (default)                             peers
==================  =========================================  ========================================
``gamma``, ``rho``  0.1, 0.1 (Trade-Off-MOL's docstring)       LibMTL ``MoDo_gamma`` 1e-3, ``MoDo_rho``
                                                               0.1; TorchJD 0.1, 0.0
λ map               projection onto Δ (paper, official,        TorchJD (a later version): softmax
                    LibMTL)
``batches``         2: A from :math:`z_1, z_2`, the update on  3: the update on :math:`z_3` (LibMTL,
                    both (the paper's two-sample reading; the  whose trainer draws 3 batches per step;
                    official code)                             TorchJD's three-batch example)
``reduction``       ``"mean"`` over the update batches         ``"sum"`` (official: "handle averaging
                                                               via the learning rate")
``head_batches``    ``"update"``: heads get the update         ``"all"``: every batch of the step
                    batches' gradients                         (official, LibMTL: the per-task
                                                               backward passes accumulate there)
``head_weighting``  ``"unweighted"`` (official, LibMTL)        ``"weighted"``: λ_t ∇L_t (the paper's
                                                               update of one parameter vector read
                                                               literally)
==================  =========================================  ========================================

LibMTL (``batches=3, head_batches="all"``, ``reduction="mean"``: it divides the heads' accumulated
gradients by 3) and the official code (``batches=2, reduction="sum"``) are reproduced by these options.
Only ``shared_params=``: the representations of different batches hold different samples, so a
cross-Gramian of representation gradients would pair unrelated examples (LibMTL refuses
``rep_grad`` too). State: λ (float64) and the step; :meth:`reset` restores λ = 1/K. Diagnostics:
``step``, ``lambda_change`` (:math:`\|\lambda_{new} - \lambda_{old}\|_1`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from torch import Tensor

from ._base import (
    BatchReduction,
    BatchRoles,
    GramianWeighting,
    HeadWeighting,
    WeightingOutput,
    WeightSum,
    check_method_options,
)
from ._state import check_state_keys, copied, projection_simplex, simplex_start

__all__ = ["MoDo"]

HeadBatches = Literal["update", "all"]
_KEYS = {"lambd", "step"}


def check_rate(who: str, name: str, value: float, nonnegative: bool = False) -> float:
    """A finite number > 0 (>= 0 with ``nonnegative``), else a one-line ``ValueError``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if nonnegative else value > 0)
    if not ok:
        raise ValueError(
            f"{who} {name} must be a finite number {'>= 0' if nonnegative else '> 0'}, got {value!r}"
        )
    return float(value)


def roles_of(
    gramian: tuple[int, int], update: tuple[int, ...], head_batches: HeadBatches, count: int, reduction: str
) -> BatchRoles:
    heads = update if head_batches == "update" else tuple(range(count))
    return BatchRoles(gramian, update, heads, reduction)  # type: ignore[arg-type]


class MoDo(GramianWeighting):
    """MoDo (Chen et al. 2023); see the module docstring for the rule and the options.

    Args:
        gamma: step size of λ.
        rho: ℓ2 regularization of λ's step.
        batches: 2 (A and the update from :math:`z_1, z_2`) or 3 (the update from :math:`z_3`).
        reduction: ``"mean"`` or ``"sum"`` of the update (and head) batches' gradients.
        head_batches: ``"update"`` or ``"all"``: the batches whose gradients the heads receive.
        head_weighting: heads get :math:`\\nabla L_t` (``"unweighted"``) or :math:`\\lambda_t \\nabla L_t`.
    """

    weight_sum: WeightSum = "1"

    def __init__(
        self,
        gamma: float = 0.1,
        rho: float = 0.1,
        *,
        batches: int = 2,
        reduction: BatchReduction = "mean",
        head_batches: HeadBatches = "update",
        head_weighting: HeadWeighting = "unweighted",
    ) -> None:
        check_method_options(
            self,
            reduction=(reduction, BatchReduction),
            head_batches=(head_batches, HeadBatches),
            head_weighting=(head_weighting, HeadWeighting),
        )
        if batches not in (2, 3) or isinstance(batches, bool):
            raise ValueError(f"MoDo batches must be 2 or 3 (independent batches per step), got {batches!r}")
        self.gamma = check_rate("MoDo", "gamma", gamma)
        self.rho = check_rate("MoDo", "rho", rho, nonnegative=True)
        self.batches = int(batches)
        self.reduction = reduction
        self.head_batches = head_batches
        self.head_weighting = head_weighting
        update = (0, 1) if batches == 2 else (2,)
        self.batch_roles = roles_of((0, 1), update, head_batches, batches, reduction)
        self.reset()

    def reset(self) -> None:
        self.lambd: Tensor | None = None
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"lambd": copied(self.lambd), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(self, state, _KEYS)
        self.lambd = copied(state["lambd"])
        self.step = int(state["step"])

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        K = gramian.shape[0]
        old = simplex_start(self, self.lambd, K, "λ")
        self.lambd = projection_simplex(old - self.gamma * (gramian @ old + self.rho * old))
        self.step += 1
        change = float((self.lambd - old).abs().sum())
        return WeightingOutput(self.lambd.clone(), {"step": self.step, "lambda_change": change})
