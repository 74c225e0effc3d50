r"""EPO: exact Pareto optimal search for a given preference, by descent with controlled ascent.

Debabrata Mahapatra and Vaibhav Rajan, "Multi-Task Learning with User Preferences: Gradient Descent
with Controlled Ascent in Pareto Optimization", ICML 2020 (PMLR 119:6597–6607); official code
``dbmptr/EPOSearch``
(``EPO_LP`` in ``multiMNIST/epo_lp.py``, identical in ``toy_experiments/solvers/epo_lp.py``).

Given a preference :math:`r > 0`, the target is the Pareto optimal point on the ray where
:math:`r \odot L` is proportional to :math:`\mathbf 1` (so :math:`L_t \propto 1/r_t`). Its distance
from the ray is measured by the non-uniformity, the KL divergence of the normalized weighted losses
from uniform,

.. math::

    \hat l_t = \frac{r_t L_t}{\sum_s r_s L_s}, \qquad
    \mu = \sum_t \hat l_t \log(K \hat l_t), \qquad
    a_t = r_t \big(\log(K \hat l_t) - \mu\big),

where :math:`a` is the direction in loss space along which :math:`\mu` grows
(:math:`\nabla_L \mu = a / \sum_s r_s L_s`); :math:`G^\top a` (G: the Jacobian) is the "balance"
direction. With the Gramian :math:`C = G G^\top` and :math:`c = C a`, each step solves a linear
program over the simplex for the weights :math:`\alpha` of the update :math:`-\sum_t \alpha_t g_t`:

**Balance mode** (:math:`\mu > \epsilon`): reduce the non-uniformity, allowing controlled ascent.
With :math:`J = \{t : c_t > 0\}` and :math:`J^* = \arg\max_t r_t L_t` (the tasks furthest above
the ray, all ties),

.. math::

    \max_{\alpha \in \Delta_K} \alpha^\top c \quad \text{s.t.} \quad
    (C\alpha)_j \ge \begin{cases}
        0 & j \in J^* \quad \text{(these never ascend)}, \\
        -\infty & j \in J \setminus J^* \quad \text{(free)}, \\
        c_j & \text{otherwise (ascent no faster than along } a\text{)},
    \end{cases}

and :math:`(C\alpha)_j \ge 0` for every j when :math:`J = \emptyset`.

**Descent mode** (:math:`\mu \le \epsilon`): descend every task while staying on the ray,

.. math::

    \max_{\alpha \in \Delta_K} \mathbf 1^\top C \alpha \quad \text{s.t.} \quad
    C\alpha \ge 0, \quad \alpha^\top c \ge \min\big(\max_t c_t, 0\big)

(the last constraint: ``"restricted"``, the code's default; ``descent="relaxed"`` drops it, the code's
``relax=True``).

The LP is solved with ``scipy.optimize.linprog`` (HiGHS) on :math:`C / \max_t C_{tt}` (the LP is
invariant to that scaling). When it is infeasible or fails, the weights fall back to
:math:`r / \sum_t r_t`, as the official training scripts do; ``diagnostics["fallback"]`` says so.

Options: the paper's reading is the default; the official code's behaviour is a named value.

==================  ==========================  =============================================
option              default                     alternative
==================  ==========================  =============================================
``eps``             1e-4 (the code's)           threshold on μ between the two modes
``descent``         ``"restricted"`` (code)     ``"relaxed"``: without the α·c constraint
``weight_scale``    ``"one"``: Σα = 1 (paper)   ``"num-tasks"``: Σα = K (MultiMNIST script)
``head_weighting``  ``"weighted"``              ``"unweighted"``
==================  ==========================  =============================================

Deviations from the code, to keep degenerate inputs finite: a task whose weighted loss is 0 makes
:math:`\log(K \hat l_t) = -\infty` there (NaN in the LP); here :math:`K \hat l_t` is clipped below
at the machine epsilon (LibMOON clips at 1e-3). All losses 0 (:math:`\sum r L = 0`) counts as on the
ray (:math:`\mu = 0`, descent mode). Negative losses are an error (μ is a KL divergence), as in the
code. Zero preference entries are an error too: the ray :math:`L \propto 1/r` does not exist (the
code's MultiMNIST runs use angles in [0.0001·π/2, 0.9999·π/2] to avoid them). The preference is used
as given, not normalized: its scale changes the balance LP's constraints (as in the code). The toy
script scales its step by 10·max(μ, 0.1); that is the training loop's business, not the weighting's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .._optional import require
from .._options import check_choice
from ._base import GramianWeighting, HeadWeighting, WeightingOutput, WeightSum

__all__ = ["EPO", "non_uniformity"]

Descent = Literal["restricted", "relaxed"]
WeightScale = Literal["one", "num-tasks"]

_TINY = float(np.finfo(np.float64).eps)


def non_uniformity(
    preference: Tensor | np.ndarray | Sequence[float], losses: Tensor | np.ndarray | Sequence[float]
) -> tuple[float, Tensor]:
    """μ(r ⊙ L) and the adjustment vector a (float64); see the module docstring.

    Entries of :math:`\\hat l` at or below the machine epsilon are left out of μ (as in the code) and
    clipped there inside the logarithm of a.
    """
    r = np.asarray(preference, dtype=np.float64)
    L = np.asarray(losses.detach().cpu() if isinstance(losses, Tensor) else losses, dtype=np.float64)
    K = r.shape[0]
    rl = r * L
    total = float(rl.sum())
    if not total > 0.0:
        return 0.0, torch.zeros(K, dtype=torch.float64)
    l_hat = rl / total
    kept = l_hat[l_hat > _TINY]
    mu = float(np.sum(kept * np.log(kept * K)))
    a = r * (np.log(np.maximum(l_hat * K, _TINY)) - mu)
    return mu, torch.from_numpy(a)


class EPO(GramianWeighting):
    """Task weights of EPO search for one preference vector r (one member of a set).

    Needs scipy (``pip install "mtlopt[pareto]"``) for its LP solver: without it the constructor
    raises an ImportError that says so.

    Args:
        preference: r, K finite entries > 0; the member converges to the Pareto point with
            r ⊙ L ∝ 1 (L_t ∝ 1/r_t).
        eps: threshold on the non-uniformity μ between balance (μ > eps) and descent mode.
        descent: ``"restricted"`` (code default) or ``"relaxed"`` descent-mode LP.
        weight_scale: ``"one"`` (Σα = 1) or ``"num-tasks"`` (Σα = K, the MultiMNIST script).
        head_weighting: task-specific parameters get α_t ∇L_t (``"weighted"``, as the code, which
            backpropagates Σ α_t L_t through the whole model) or ∇L_t.

    Counts of the steps taken in each mode and of the fallbacks are kept as state (for logging).
    """

    min_tasks = 2
    num_tasks_source = "preference has {n} entries (tasks)"

    def __init__(
        self,
        preference: Tensor | Sequence[float] | np.ndarray,
        *,
        eps: float = 1e-4,
        descent: Descent = "restricted",
        weight_scale: WeightScale = "one",
        head_weighting: HeadWeighting = "weighted",
    ) -> None:
        r = _check_preference(preference)
        _linprog()  # a missing scipy is refused here, with an install hint, not at the first step
        eps = float(eps)
        if not (math.isfinite(eps) and eps >= 0.0):
            raise ValueError(f"EPO eps must be finite and >= 0, got {eps!r}")
        check_choice("EPO", "descent", descent, Descent)
        check_choice("EPO", "weight_scale", weight_scale, WeightScale)
        check_choice("EPO", "head_weighting", head_weighting, HeadWeighting)
        self.preference = torch.from_numpy(r)
        self.num_tasks = r.shape[0]
        self.eps = eps
        self.descent: Descent = descent
        self.weight_scale: WeightScale = weight_scale
        self.head_weighting = head_weighting
        self.reset()

    # --- state -----------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Zero the step counters."""
        self.steps = 0
        self.balance_steps = 0
        self.descent_steps = 0
        self.fallbacks = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "balance_steps": self.balance_steps,
            "descent_steps": self.descent_steps,
            "fallbacks": self.fallbacks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"steps", "balance_steps", "descent_steps", "fallbacks"}
        if set(state) != expected:
            raise ValueError(f"EPO state must have keys {sorted(expected)}, got {sorted(state)}")
        for name in sorted(expected):
            setattr(self, name, int(state[name]))

    # --- weights -----------------------------------------------------------------------------------------

    @property
    def weight_sum(self) -> WeightSum:  # type: ignore[override]
        return "1" if self.weight_scale == "one" else "K"

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        linprog = _linprog()
        G = _symmetric(gramian)
        K = G.shape[0]
        L = losses.detach().to("cpu", torch.float64).numpy()
        negative = [t for t in range(K) if L[t] < 0]
        if negative:
            raise ValueError(
                f"EPO needs non-negative losses (the non-uniformity is a KL divergence), but the loss of "
                f"task(s) {negative} is negative ({[float(L[t]) for t in negative]})"
            )
        r = self.preference.numpy()
        mu, a_tensor = non_uniformity(r, L)
        a = a_tensor.numpy()
        scale = float(np.max(np.diag(G)))
        C = G / scale if scale > 0.0 else G
        c = C @ a
        ones = np.ones((1, K))
        if mu > self.eps:
            mode = "balance"
            rl = r * L
            J = c > 0.0
            if J.any():
                rhs = c.copy()
                rhs[J] = -np.inf
                rhs[rl == rl.max()] = 0.0
            else:
                rhs = np.zeros(K)
            rows = np.isfinite(rhs)
            objective = -c
            A_ub, b_ub = -C[rows], -rhs[rows]
        else:
            mode = "descent"
            objective = -C.sum(axis=0)
            A_ub, b_ub = -C, np.zeros(K)
            if self.descent == "restricted":
                A_ub = np.vstack([A_ub, -c[None, :]])
                b_ub = np.append(b_ub, -min(float(c.max()), 0.0))
        result = linprog(
            objective,
            A_ub=A_ub if A_ub.shape[0] else None,
            b_ub=b_ub if A_ub.shape[0] else None,
            A_eq=ones,
            b_eq=np.ones(1),
            bounds=(0.0, None),
            method="highs",
        )
        fallback = result.status != 0 or result.x is None or not np.isfinite(result.x).all()
        if fallback:
            alpha = r / r.sum()
        else:
            alpha = np.clip(result.x, 0.0, None)
            alpha = alpha / alpha.sum()
        self.steps += 1
        self.fallbacks += int(fallback)
        if mode == "balance":
            self.balance_steps += 1
        else:
            self.descent_steps += 1
        weights = alpha * (K if self.weight_scale == "num-tasks" else 1.0)
        diagnostics = {
            "mode": mode,
            "non_uniformity": mu,
            "fallback": fallback,
            "lp_status": int(result.status),
            "lp_message": str(result.message),
            "lp_objective": float(-result.fun) * scale if not fallback else float("nan"),
            "step": self.steps,
        }
        return WeightingOutput(torch.from_numpy(np.asarray(weights, dtype=np.float64)), diagnostics)

    def __repr__(self) -> str:
        options = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in ("eps", "descent", "weight_scale", "head_weighting")
        )
        return f"EPO({self.preference.tolist()}, {options})"


def _linprog() -> Callable[..., Any]:
    """scipy's ``linprog``; refused with an install hint when scipy is missing (``mtlopt[pareto]``)."""
    optimize = require(
        "scipy.optimize",
        extra="pareto",
        needed_by="EPO",
        purpose=" (its linprog, to solve a small LP per step)",
    )
    linprog: Callable[..., Any] = optimize.linprog
    return linprog


def _check_preference(preference: Any) -> np.ndarray:
    try:
        r = np.array(
            preference.detach().cpu().numpy() if isinstance(preference, Tensor) else preference,
            dtype=np.float64,
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"EPO preference must be a vector of K numbers: {error}") from None
    if r.ndim != 1:
        raise ValueError(f"EPO preference must be a vector of K entries (one per task), got shape {r.shape}")
    if r.shape[0] < 2:
        raise ValueError(f"EPO preference needs at least 2 entries (tasks), got {r.shape[0]}")
    shown = [float(f"{v:.6g}") for v in r.tolist()]
    bad = [t for t in range(r.shape[0]) if not (math.isfinite(r[t]) and r[t] > 0.0)]
    if bad:
        raise ValueError(
            f"EPO preference is {shown}: entries {bad} are not finite and > 0 (the target ray "
            "L ∝ 1/r needs every r_t > 0)"
        )
    return r


def _symmetric(gramian: Tensor) -> np.ndarray:
    G = gramian.numpy()
    return 0.5 * (G + G.T)
