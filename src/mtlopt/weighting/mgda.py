r"""MGDA and MGDA-UB: the multiple-gradient descent algorithm as a task weighting.

Ozan Sener and Vladlen Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018,
arXiv:1810.04650.

Each step solves the min-norm problem over the simplex :math:`\Delta_K`,

.. math::

    \alpha^* = \arg\min_{\alpha \in \Delta_K} \Big\| \sum_t \alpha_t \tilde g_t \Big\|^2
             = \arg\min_{\alpha \in \Delta_K} \alpha^\top \tilde G \alpha,
    \qquad \tilde g_t = g_t / n_t,\ \tilde G = N^{-1} G N^{-1},

and the shared parameters move along :math:`-\sum_t \alpha_t g_t` (the weights apply to the raw
gradients, as in the official code). Either the optimum is 0 (a Pareto-stationary point) or its
negative decreases every task loss.

- **MGDA** (exact): :math:`g_t = \nabla_{\theta_{sh}} L_t`, the gradients w.r.t. the shared parameters
  (``mtlopt.backward(losses, MGDA(), shared_params=...)``).
- **MGDA-UB** (upper bound): :math:`g_t = \nabla_Z L_t`, the gradients w.r.t. the shared representation
  Z; since :math:`\|\sum_t \alpha_t \nabla_{\theta_{sh}} L_t\| \le \|\partial Z/\partial\theta_{sh}\|\,
  \|\sum_t \alpha_t \nabla_Z L_t\|`, minimizing the second factor needs only K backward passes through
  the heads (``mtlopt.backward(losses, MGDA(), features=z)``).

Options: the paper's reading is the default; each behaviour of the official code
(``isl-org/MultiObjectiveOptimization``) or of later copies is a named value.

======================  =======================  ==============================================
option                  default (paper)          alternatives
======================  =======================  ==============================================
``solver``              ``"auto"``: closed form  ``"frank-wolfe"`` (the paper's Algorithm 2,
                        for K = 2, exact active  approximate), ``"pgd"`` (official code),
                        set for K > 2            ``"two-task"``, ``"active-set"``
``normalization``       ``"none"``: n_t = 1      ``"l2"`` (‖g_t‖), ``"loss"`` (L_t),
                                                 ``"loss+"`` (L_t·‖g_t‖) — official options
``head_weighting``      ``"unweighted"``:        ``"weighted"``: α_t ∇L_t (official code)
                        heads get ∇L_t
``feature_batch``       ``"flatten"``: Z as one  ``"sum"``: per-sample gradients summed over the
                        vector (official code)   batch first (LibMTL)
``clip``                (0, 1)                   (0.001, 0.999): official end-of-segment weights
``weight_scale``        ``"one"``: Σα = 1        ``"num-tasks"``: Σα = K (Nash-MTL's copy)
======================  =======================  ==============================================

The default solver is exact rather than Frank–Wolfe because the paper defines α as the minimizer of
the QP and uses Frank–Wolfe only to approximate it; ``solver="frank-wolfe"`` reproduces Algorithm 2
step by step. A normalizer that is exactly 0 (a zero gradient or a zero loss) is replaced by 1, so that
the task's normalized gradient stays 0 instead of becoming NaN as in the official code.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .._options import check_choice
from ..min_norm import Solver, min_norm
from ._base import FeatureBatch, GramianWeighting, HeadWeighting, WeightingOutput, WeightSum

__all__ = ["MGDA"]

Normalization = Literal["none", "l2", "loss", "loss+"]
WeightScale = Literal["one", "num-tasks"]


class MGDA(GramianWeighting):
    """Min-norm task weights (Sener & Koltun 2018); MGDA-UB when used with ``features=``.

    Args:
        solver: min-norm solver (see :func:`mtlopt.min_norm`).
        normalization: gradient normalization before the solve: ``"none"``, ``"l2"``, ``"loss"``,
            ``"loss+"``.
        head_weighting: ``"unweighted"`` (paper) or ``"weighted"`` (official code).
        feature_batch: ``"flatten"`` or ``"sum"`` (MGDA-UB only).
        clip: end-of-segment weights of the two-point rule: (0, 1) (paper) or (0.001, 0.999).
        weight_scale: weights sum to 1 (``"one"``) or to K (``"num-tasks"``).
        tol: solver tolerance (solver default when None).
        max_iter: solver iteration cap (solver default when None).
    """

    min_tasks = 2

    def __init__(
        self,
        *,
        solver: Solver = "auto",
        normalization: Normalization = "none",
        head_weighting: HeadWeighting = "unweighted",
        feature_batch: FeatureBatch = "flatten",
        clip: tuple[float, float] = (0.0, 1.0),
        weight_scale: WeightScale = "one",
        tol: float | None = None,
        max_iter: int | None = None,
    ) -> None:
        check_choice("MGDA", "solver", solver, Solver)
        check_choice("MGDA", "normalization", normalization, Normalization)
        check_choice("MGDA", "head_weighting", head_weighting, HeadWeighting)
        check_choice("MGDA", "feature_batch", feature_batch, FeatureBatch)
        check_choice("MGDA", "weight_scale", weight_scale, WeightScale)
        clip = (float(clip[0]), float(clip[1]))
        if not 0.0 <= clip[0] <= clip[1] <= 1.0:
            raise ValueError(f"MGDA clip must satisfy 0 <= clip[0] <= clip[1] <= 1, got {clip}")
        self.solver: Solver = solver
        self.normalization: Normalization = normalization
        self.head_weighting = head_weighting
        self.feature_batch = feature_batch
        self.clip = clip
        self.weight_scale: WeightScale = weight_scale
        self.tol = tol
        self.max_iter = max_iter

    def normalizers(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The divisors n_t of the chosen normalization (float64, CPU); 0 is replaced by 1."""
        K = gramian.shape[0]
        G = gramian.detach().to("cpu", torch.float64)
        loss_values = losses.detach().to("cpu", torch.float64)
        if self.normalization in ("loss", "loss+"):
            negative = [t for t in range(K) if loss_values[t] < 0]
            if negative:
                raise ValueError(
                    f"MGDA normalization {self.normalization!r} divides by the loss, but the loss of "
                    f"task(s) {negative} is negative ({[float(loss_values[t]) for t in negative]}); "
                    "use normalization='none' or 'l2'"
                )
        norms = G.diagonal().clamp_min(0.0).sqrt()
        if self.normalization == "none":
            n = torch.ones(K, dtype=torch.float64)
        elif self.normalization == "l2":
            n = norms
        elif self.normalization == "loss":
            n = loss_values.clone()
        else:
            n = loss_values * norms
        return torch.where(n > 0, n, torch.ones_like(n))

    @property
    def weight_sum(self) -> WeightSum:  # type: ignore[override]
        """Σα = 1 (``weight_scale="one"``) or K."""
        return "1" if self.weight_scale == "one" else "K"

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        K = gramian.shape[0]
        n = self.normalizers(gramian, losses)
        G = gramian / torch.outer(n, n)
        result = min_norm(G, solver=self.solver, tol=self.tol, max_iter=self.max_iter, clip=self.clip)
        weights = result.weights * (K if self.weight_scale == "num-tasks" else 1.0)
        diagnostics = {
            "solver": result.solver,
            "solver_iterations": result.iterations,
            "solver_converged": result.converged,
            "min_norm": result.objective,
            "kkt_residual": result.kkt_residual,
        }
        return WeightingOutput(weights, diagnostics)

    def __repr__(self) -> str:
        options = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in (
                "solver",
                "normalization",
                "head_weighting",
                "feature_batch",
                "clip",
                "weight_scale",
                "tol",
                "max_iter",
            )
        )
        return f"MGDA({options})"
