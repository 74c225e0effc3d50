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
``zero_gradients``      ``"exclude"``: a task    ``"keep"``: in the QP (paper, official code):
                        with g_t = 0 gets α_t =  it takes all the weight and d = 0
                        0, the rest are solved
======================  =======================  ==============================================

The default solver is exact rather than Frank–Wolfe because the paper defines α as the minimizer of
the QP and uses Frank–Wolfe only to approximate it; ``solver="frank-wolfe"`` reproduces Algorithm 2
step by step. A normalizer that is exactly 0 (a zero gradient or a zero loss) is replaced by 1, so that
the task's normalized gradient stays 0 instead of becoming NaN as in the official code.

A task whose gradient is exactly zero (its loss does not reach the shared parameters or Z, or its
gradient vanished) makes 0 a point of the convex hull: the QP over all tasks puts every weight on it
and the update is 0, so the encoder stops training although the other tasks could still descend. Such a
task imposes no descent condition (:math:`g_t^\top d = 0` for every d), so by default it is left out
of the QP and gets weight 0; the others are solved as usual, and the direction descends for every task
with a nonzero gradient. ``diagnostics["zero_gradient_tasks"]`` lists them; :func:`mtlopt.backward`
warns once per task name.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .._options import check_choice
from ..min_norm import Solver, min_norm
from ._base import FeatureBatch, GramianWeighting, HeadWeighting, WeightingOutput, WeightSum

__all__ = ["MGDA"]

Normalization = Literal["none", "l2", "loss", "loss+"]
WeightScale = Literal["one", "num-tasks"]
ZeroGradients = Literal["exclude", "keep"]


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
        zero_gradients: a task with a zero gradient is left out of the QP with weight 0
            (``"exclude"``) or kept in it (``"keep"``: the paper's QP taken literally).
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
        zero_gradients: ZeroGradients = "exclude",
    ) -> None:
        check_choice("MGDA", "solver", solver, Solver)
        check_choice("MGDA", "normalization", normalization, Normalization)
        check_choice("MGDA", "head_weighting", head_weighting, HeadWeighting)
        check_choice("MGDA", "feature_batch", feature_batch, FeatureBatch)
        check_choice("MGDA", "weight_scale", weight_scale, WeightScale)
        check_choice("MGDA", "zero_gradients", zero_gradients, ZeroGradients)
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
        self.zero_gradients: ZeroGradients = zero_gradients

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
        zero = G.diagonal() == 0  # an exactly zero gradient: ‖g_t‖² is a sum of squares
        active = torch.arange(K) if self.zero_gradients == "keep" or zero.all() else (~zero).nonzero()[:, 0]
        result = min_norm(
            G[active][:, active], solver=self.solver, tol=self.tol, max_iter=self.max_iter, clip=self.clip
        )
        weights = torch.zeros(K, dtype=torch.float64).index_copy_(0, active, result.weights)
        weights = weights * (K if self.weight_scale == "num-tasks" else 1.0)
        diagnostics: dict[str, Any] = {
            "solver": result.solver,
            "solver_iterations": result.iterations,
            "solver_converged": result.converged,
            "min_norm": result.objective,
            "kkt_residual": result.kkt_residual,
        }
        if bool(zero.any()):
            diagnostics["zero_gradient_tasks"] = zero.nonzero()[:, 0].tolist()
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
                "zero_gradients",
            )
        )
        return f"MGDA({options})"
