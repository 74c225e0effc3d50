r"""Nash-MTL: the Nash bargaining solution of the tasks, as task weights from the Gramian.

Aviv Navon, Aviv Shamsian, Idan Achituve, Haggai Maron, Kenji Kawaguchi, Gal Chechik and Ethan Fetaya,
"Multi-Task Learning as a Bargaining Game", ICML 2022 (PMLR 162), arXiv:2202.01017. Official code:
``AvivNavon/nash-mtl`` (``methods/weight_methods.py::NashMTL``).

The update :math:`d = J^\top \alpha = \sum_t \alpha_t g_t` maximizes :math:`\sum_t \log(g_t^\top d)`
over a ball; its weights are the positive solution of (Claim 3.1)

.. math::

    G \alpha = 1 / \alpha \quad \text{(elementwise)}, \qquad G = J J^\top .

Consequences: :math:`\alpha^\top G \alpha = \sum_t \alpha_t (G\alpha)_t = K`, so
:math:`\|d\| = \sqrt K` **whatever the gradient scale** (:math:`G \to s^2 G` gives
:math:`\alpha \to \alpha / s`); orthogonal gradients give :math:`\alpha_t = 1/\|g_t\|`. The weights
themselves are not scale-free (they grow as the gradients shrink): the total weight is
data-dependent, the scale that is fixed is :math:`\|d\|`.

**Clipping** (``max_norm``, default 1 as the official code, LibMTL and TorchJD): when
:math:`\|d\| > \text{max\_norm}` the weights are multiplied by :math:`\text{max\_norm}/\|d\|`, so the
shared update has norm ``max_norm``. With K ≥ 2 and the default the clip is always active (the shared
step has constant length, normalized gradient descent). The official code clips the shared parameters'
``.grad`` after the backward pass (``clip_grad_norm_``), which gives the same shared ``.grad`` when the
Gramian is of the shared parameters; TorchJD rescales the weights, as here. Because mtlopt applies one
weight vector to the shared and (with ``head_weighting="weighted"``) the task-specific parameters, the
heads receive the clipped weights, where the official code and LibMTL give them the unclipped α.
``diagnostics["update_norm"]`` is :math:`\|d\|` before the clip, ``"clip_factor"`` the factor applied.

**Solver.** :math:`G\alpha = 1/\alpha` is the stationarity condition of the strictly convex
:math:`F(\alpha) = \tfrac12 \alpha^\top G \alpha - \sum_t \log \alpha_t`; mtlopt solves it by Newton's
method with a line search for the minimum of F along each direction, on the K×K Gramian (float64,
after the exact per-task rescaling :math:`\alpha = \operatorname{diag}(G)^{-1/2} \beta`; for two tasks
the closed form :math:`\beta_1 = \beta_2 = (1 + \cos(g_1, g_2))^{-1/2}`), to a relative residual
:math:`\max_t |\alpha_t (G\alpha)_t - 1| \le` ``tol``. The paper and the official code approximate the
same solution by a sequence of convex programs (CCP: at most 20 cvxpy/ECOS solves on G divided by its
Frobenius norm, warm-started from the last α); they reach it only to their solver's tolerance, so the
weights agree to that tolerance, not to rounding, and where the CCP stops short of the solution
(its residual stays large) they differ. ``diagnostics``: ``solver_iterations``, ``solver_converged``, ``residual``
(on the unridged G).

**Degenerate Gramians.** A task whose gradient is exactly zero has no finite weight (α_t → ∞); it gets
weight 0 and is listed in ``diagnostics["zero_gradient_tasks"]`` (the others are solved as usual, and
:math:`\|d\| = \sqrt{K'}` with K' the tasks left). When a non-negative combination of the other
gradients is zero (a Pareto-stationary point, e.g. two opposite gradients) F has no minimizer and α
grows without bound; once the per-task normalized α passes :math:`\varepsilon^{-1/2}` the system is
solved again with the ridge :math:`G + \varepsilon \operatorname{diag}(G)` (``ridge`` = ε;
``diagnostics["ridged"]``), which keeps α finite (large) and :math:`\|d\| \le \sqrt K` (small).

**State**: the step counter and the last solved (unclipped) α. With ``update_weights_every = n`` the
weights are solved at steps 0, n, 2n, … and reused in between (paper §6.4), the clip recomputed on
the current Gramian; as the official code, the counter counts calls. :meth:`reset` forgets both.

Options (the paper's reading is the default; where it is silent, the official code's):

============================  ==========================  ========================================
option                        default                     alternatives / peers
============================  ==========================  ========================================
``max_norm``                  1.0 (official, LibMTL,      any value > 0; 0 = no clip
                              TorchJD)
``update_weights_every``      1 (official, LibMTL,        n: reuse α for n steps (paper §6.4)
                              TorchJD)
``head_weighting``            ``"weighted"``: heads get   ``"unweighted"``: ∇L_t (TorchJD's
                              α_t ∇L_t (official, LibMTL  ``mtl_backward``)
                              backpropagate Σ α_t L_t)
``ridge``                     1e-10                       any ε > 0 (see above)
``tol`` / ``max_iter``        1e-12 / 100                 Newton's stopping rule
============================  ==========================  ========================================

The paper applies the method to the gradients of the shared parameters (its App. C: gradients w.r.t.
the shared features were worse); ``features=`` works, as for every Gramian method, at the user's
choice. Under several processes every rank solves the same all-reduced Gramian, so the cached α is
equal on all ranks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._base import GramianWeighting, HeadWeighting, WeightingOutput, WeightSum, check_method_options
from ._positive import check_positive_int, check_positive_number
from ._power_system import solve_power_system

__all__ = ["NashMTL"]


class NashMTL(GramianWeighting):
    """Nash bargaining weights :math:`G\\alpha = 1/\\alpha` (Navon et al. 2022), computed from the Gramian.

    Args:
        max_norm: clip the shared update to this norm by rescaling the weights (0: no clip).
        update_weights_every: solve every this many steps, reuse the last α in between.
        head_weighting: ``"weighted"`` (heads get α_t ∇L_t, official) or ``"unweighted"``.
        ridge: ε of the ridge ε·diag(G) that keeps α finite when G is degenerate.
        tol: Newton stops when max_t |α_t (Gα)_t − 1| ≤ tol.
        max_iter: Newton's iteration cap.
    """

    min_tasks = 1
    weight_sum: WeightSum = "data-dependent"

    def __init__(
        self,
        *,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        head_weighting: HeadWeighting = "weighted",
        ridge: float = 1e-10,
        tol: float = 1e-12,
        max_iter: int = 100,
    ) -> None:
        check_method_options(self, head_weighting=(head_weighting, HeadWeighting))
        self.max_norm = check_positive_number("NashMTL", "max_norm", max_norm, allow_zero=True)
        self.update_weights_every = check_positive_int(
            "NashMTL", "update_weights_every", update_weights_every
        )
        self.head_weighting = head_weighting
        self.ridge = check_positive_number("NashMTL", "ridge", ridge)
        self.tol = check_positive_number("NashMTL", "tol", tol)
        self.max_iter = check_positive_int("NashMTL", "max_iter", max_iter)
        self.step = 0
        self.alpha: Tensor | None = None  # the last solved α, before the clip

    def reset(self) -> None:
        """Step counter 0, no cached weights."""
        self.step = 0
        self.alpha = None

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "alpha": None if self.alpha is None else self.alpha.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"step", "alpha"}:
            raise ValueError(f"NashMTL state must have the keys ['alpha', 'step'], got {sorted(state)}")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"NashMTL state 'step' must be an int >= 0, got {step!r}")
        alpha = state["alpha"]
        if alpha is not None:
            alpha = torch.as_tensor(alpha).detach().to("cpu", torch.float64).clone()
            if alpha.ndim != 1:
                raise ValueError(
                    f"NashMTL state 'alpha' must be a 1-D tensor, got shape {tuple(alpha.shape)}"
                )
        self.step = step
        self.alpha = alpha

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        K = gramian.shape[0]
        G = gramian.numpy()
        solve = self.step % self.update_weights_every == 0 or self.alpha is None
        if not solve and self.alpha is not None and self.alpha.shape[0] != K:
            raise ValueError(
                f"NashMTL cached weights for {self.alpha.shape[0]} tasks but the Gramian is {K}×{K}; call reset()"
            )
        diagnostics: dict[str, Any] = {"updated": solve}
        if solve:
            solution = solve_power_system(
                G, 1.0, ridge=self.ridge, tol=self.tol, max_iter=self.max_iter, per_task_scaling=True
            )
            alpha = solution.weights
            self.alpha = torch.from_numpy(alpha.copy())
            diagnostics.update(
                solver_iterations=solution.iterations,
                solver_converged=solution.converged,
                residual=solution.residual,
                ridged=solution.ridged,
            )
            zero = solution.zero_tasks
        else:
            assert self.alpha is not None
            alpha = self.alpha.numpy().copy()
            zero = np.flatnonzero(~(np.diag(G) > 0)).tolist()
        self.step += 1
        if zero:
            diagnostics["zero_gradient_tasks"] = zero
        norm = math.sqrt(max(float(alpha @ (G @ alpha)), 0.0))
        factor = self.max_norm / norm if self.max_norm > 0 and norm > self.max_norm else 1.0
        diagnostics["update_norm"] = norm
        diagnostics["clip_factor"] = factor
        return WeightingOutput(torch.from_numpy(alpha * factor), diagnostics)

    def __repr__(self) -> str:
        return (
            f"NashMTL(max_norm={self.max_norm}, update_weights_every={self.update_weights_every}, "
            f"head_weighting={self.head_weighting!r}, ridge={self.ridge}, tol={self.tol}, "
            f"max_iter={self.max_iter})"
        )
