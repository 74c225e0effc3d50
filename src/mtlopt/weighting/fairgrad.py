r"""FairGrad: α-fair resource allocation among the tasks, as task weights from the Gramian.

Hao Ban and Kaiyi Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024 (PMLR 235),
arXiv:2402.15638. Official code: ``OptMN-Lab/fairgrad`` (``methods/weight_methods.py::FairGrad``).

The update :math:`d = J^\top w` maximizes the α-fair utility of the task "rates" :math:`g_t^\top d`;
its weights are the positive solution of

.. math::

    G w = w^{-1/\alpha} \quad \text{(elementwise)}, \qquad G = J J^\top .

α = 1 is Nash-MTL's system; α → 0 approaches linear scalarization, α → ∞ max-min fairness. Scale:
:math:`G \to s^2 G` gives :math:`w \to s^{-2\alpha/(1+\alpha)} w` and
:math:`\|d\| \to s^{(1-\alpha)/(1+\alpha)} \|d\|` (α = 2: larger gradients, shorter steps), so the
total weight is data-dependent. ``weight_scale="num-tasks"`` multiplies w by K, as the official code's
``overwrite_grad`` does ("to match the sum loss").

**Solver.** The system is the stationarity condition of the strictly convex
:math:`F(w) = \tfrac12 w^\top G w - \sum_t h(w_t)`, :math:`h'(w) = w^{-1/\alpha}`; mtlopt solves it with
damped Newton on the K×K Gramian (float64, one global scale divided out, steps kept positive, Armijo
backtracking) to a relative residual :math:`\max_t |w_t^{1/\alpha} (Gw)_t - 1| \le` ``tol``. The
official code, LibMTL and TorchJD call ``scipy.optimize.least_squares`` from w = 1/K with its default
(absolute) tolerances, so they agree with the exact solution to that tolerance only, and less at small
gradient scales. ``diagnostics``: ``solver_iterations``, ``solver_converged``, ``residual``.

**Degenerate Gramians.** A task whose gradient is exactly zero has no finite weight; it gets weight 0
and is listed in ``diagnostics["zero_gradient_tasks"]``. When a non-negative combination of the other
gradients is zero (Pareto stationary), F has no minimizer and w grows without bound; once the
normalized w passes :math:`\varepsilon^{-\alpha/(1+\alpha)}` the system is solved again with the ridge
:math:`G + \varepsilon \operatorname{diag}(G)` (``ridge`` = ε; ``diagnostics["ridged"]``), which keeps w
finite.

Options (the official code's runs where the paper is silent):

====================  ===============================  ==========================================
option                default                          alternatives / peers
====================  ===============================  ==========================================
``alpha``             2.0 (every official ``run.sh``)  any α > 0; the official class, argparse
                                                       and LibMTL default 1.0; TorchJD requires it
``weight_scale``      ``"one"``: w as solved           ``"num-tasks"``: w·K (official code)
``max_norm``          None (no clip)                   c > 0: rescale w so that ‖d‖ ≤ c (the
                                                       official trainers clip shared grads to 1)
``head_weighting``    ``"unweighted"``: heads get      ``"weighted"``: w_t ∇L_t (LibMTL
                      ∇L_t (official: per-task         backpropagates Σ w_t L_t)
                      backward passes)
``ridge``             1e-10                            any ε > 0 (see above)
``tol`` / ``max_iter``  1e-12 / 100                    Newton's stopping rule
====================  ===============================  ==========================================

No state.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from ._base import GramianWeighting, HeadWeighting, WeightingOutput, WeightSum, check_method_options
from ._positive import check_positive_int, check_positive_number
from ._power_system import solve_power_system

__all__ = ["FairGrad"]

WeightScale = Literal["one", "num-tasks"]


class FairGrad(GramianWeighting):
    """α-fair task weights :math:`Gw = w^{-1/\\alpha}` (Ban & Ji 2024), computed from the Gramian.

    Args:
        alpha: the fairness exponent α > 0 (1: Nash-MTL's system).
        weight_scale: ``"one"`` (w as solved) or ``"num-tasks"`` (w·K, official code).
        max_norm: clip the shared update to this norm by rescaling the weights (None: no clip).
        head_weighting: ``"unweighted"`` (official) or ``"weighted"`` (LibMTL).
        ridge: ε of the ridge ε·diag(G) that keeps w finite when G is degenerate.
        tol: Newton stops when max_t |w_t^{1/α} (Gw)_t − 1| ≤ tol.
        max_iter: Newton's iteration cap.
    """

    min_tasks = 1
    weight_sum: WeightSum = "data-dependent"

    def __init__(
        self,
        alpha: float = 2.0,
        *,
        weight_scale: WeightScale = "one",
        max_norm: float | None = None,
        head_weighting: HeadWeighting = "unweighted",
        ridge: float = 1e-10,
        tol: float = 1e-12,
        max_iter: int = 100,
    ) -> None:
        check_method_options(
            self, weight_scale=(weight_scale, WeightScale), head_weighting=(head_weighting, HeadWeighting)
        )
        self.alpha = check_positive_number("FairGrad", "alpha", alpha)
        self.weight_scale: WeightScale = weight_scale
        self.max_norm = None if max_norm is None else check_positive_number("FairGrad", "max_norm", max_norm)
        self.head_weighting = head_weighting
        self.ridge = check_positive_number("FairGrad", "ridge", ridge)
        self.tol = check_positive_number("FairGrad", "tol", tol)
        self.max_iter = check_positive_int("FairGrad", "max_iter", max_iter)

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        K = gramian.shape[0]
        G = gramian.numpy()
        solution = solve_power_system(
            G, self.alpha, ridge=self.ridge, tol=self.tol, max_iter=self.max_iter, per_task_scaling=False
        )
        w = solution.weights * (K if self.weight_scale == "num-tasks" else 1.0)
        norm = math.sqrt(max(float(w @ (G @ w)), 0.0))
        factor = self.max_norm / norm if self.max_norm is not None and norm > self.max_norm else 1.0
        diagnostics: dict[str, Any] = {
            "solver_iterations": solution.iterations,
            "solver_converged": solution.converged,
            "residual": solution.residual,
            "ridged": solution.ridged,
            "update_norm": norm,
        }
        if self.max_norm is not None:
            diagnostics["clip_factor"] = factor
        if solution.zero_tasks:
            diagnostics["zero_gradient_tasks"] = solution.zero_tasks
        return WeightingOutput(torch.from_numpy(w * factor), diagnostics)

    def __repr__(self) -> str:
        return (
            f"FairGrad(alpha={self.alpha}, weight_scale={self.weight_scale!r}, max_norm={self.max_norm}, "
            f"head_weighting={self.head_weighting!r}, ridge={self.ridge}, tol={self.tol}, "
            f"max_iter={self.max_iter})"
        )
