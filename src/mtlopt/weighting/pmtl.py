r"""Pareto MTL: one member of a set of models, each confined to its own preference region.

Xi Lin, Hui-Ling Zhen, Zhenhua Li, Qingfu Zhang and Sam Kwong, "Pareto Multi-Task Learning",
NeurIPS 2019, arXiv:1912.12854; official code ``Xi-L/ParetoMTL`` (``multiMNIST/train.py``).

The objective space is split by M unit reference vectors :math:`u_1, \dots, u_M` (for two tasks
:math:`u_j = (\cos t_j, \sin t_j)`, :math:`t_j` evenly spaced in :math:`[0, \pi/2]`). Member k solves
the constrained multi-objective problem

.. math::

    \min_\theta L(\theta) = (L_1(\theta), \dots, L_K(\theta))
    \quad \text{s.t.} \quad G_j(\theta) = (u_j - u_k)^\top L(\theta) \le 0, \quad j \ne k,

whose feasible set is the cone of loss vectors closer in angle to :math:`u_k` than to any other
:math:`u_j` (the vectors are unit: :math:`u_j^\top L \le u_k^\top L`). Since
:math:`\nabla G_j = \sum_t (u_j - u_k)_t \nabla L_t`, every direction is a combination of the task
gradients and both phases work on the Gramian :math:`G_{st} = g_s^\top g_t` alone.

**Feasibility phase** (paper §4.2.1). While some constraint is violated, :math:`V = \{j : G_j > 0\}`,
step along the min-norm element of the hull of the violated constraints' gradients:

.. math::

    \beta^* = \arg\min_{\beta \in \Delta_{|V|}} \beta^\top C_V G C_V^\top \beta,
    \qquad w = C_V^\top \beta^*, \qquad C_V = [u_j - u_k]_{j \in V}.

The phase ends for good at the first feasible point, or after ``warmup_steps`` steps.

**Main phase** (paper eq. 10–18). With the active set :math:`I_\epsilon = \{j \ne k : G_j > -\epsilon\}`
and :math:`C` the matrix with rows :math:`e_1, \dots, e_K` and :math:`u_j - u_k` (:math:`j \in I_\epsilon`),

.. math::

    (\lambda^*, \beta^*) = \arg\min_{(\lambda, \beta) \in \Delta_{K + |I_\epsilon|}}
        \Big\| \sum_t \lambda_t g_t + \sum_{j \in I_\epsilon} \beta_j \nabla G_j \Big\|^2,
    \qquad w_t = \lambda^*_t + \sum_{j \in I_\epsilon} \beta^*_j (u_{jt} - u_{kt})

(the weights of the paper's "adaptive linear scalarization", eq. 18). The shared update is
:math:`-\sum_t w_t g_t`: a descent direction for every task and every active constraint, or 0 at a
point that is Pareto critical restricted to the region. With no active constraint this is MGDA.

Options: the paper is the default; the official code's behaviour is a named value.

============================  ===================================  ========================================
option                        default (paper)                      alternative (official code)
============================  ===================================  ========================================
``warmup_steps``              ``None``: until the first feasible   an int N: at most N steps; the
                              point (the paper: "or a predefined   MultiMNIST code stops at the first
                              number of iterations", not given)    feasible point or after 2 epochs (pass
                                                                   ``2 * steps_per_epoch``); 0 skips it
``constraint_normalization``  ``"none"``: G_j = (u_j − u_k)ᵀL      ``"l2"``: G_j on L/‖L‖ (the code); the
                                                                   same sets when ``tolerance`` is 0
``tolerance`` (ε)             0.0 (the paper leaves ε unset)       the code tests G_j > 0, i.e. ε = 0
``weight_scale``              ``"none"``: w as in eq. 18           ``"num-tasks"``: main-phase weights
                                                                   rescaled to Σ_t |w_t| = K (the code)
``solver``                    ``"auto"``: exact min-norm point     ``"pgd"`` with ``clip=(0.001, 0.999)``:
                                                                   the code's ``MinNormSolver``
============================  ===================================  ========================================

Where the code differs in ways not offered as options: it tests activity with a strict ``> 0`` (so
here a constraint is active when :math:`G_j > -\epsilon`, which is the paper's :math:`G_j \ge -\epsilon`
except exactly on the boundary); the step that finds the region feasible is discarded there (the
batch is skipped), while here it already takes the main-phase step; its code handles two tasks only
(this is the same formula for any K). The reference vectors are normalized to unit length, as in the
paper (unit vectors) and the code's synthetic example (which normalizes them explicitly), so that the
regions are the angular ones whatever the scale of the given vectors. Degenerate inputs stay finite:
a zero loss vector satisfies every constraint, and a zero Gramian gives the solver's uniform weights.

On the Pareto front the task gradients alone can cancel (:math:`\lambda^* \ne 0`, direction 0) whether
or not the point is in the region, so the main phase keeps a member in its region only as long as its
steps do not overshoot the boundary before it reaches the front: the step size matters (with
``weight_scale="num-tasks"`` the step is about K times the paper's).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .._options import check_choice
from ..min_norm import MinNormResult, Solver, min_norm
from ._base import GramianWeighting, HeadWeighting, WeightingOutput, WeightSum

__all__ = ["ParetoMTL", "circle_preferences"]

ConstraintNormalization = Literal["none", "l2"]
WeightScale = Literal["none", "num-tasks"]
Phase = Literal["warmup", "main"]


def circle_preferences(num_vectors: int, min_angle: float = 0.0, max_angle: float = 0.5 * math.pi) -> Tensor:
    """``num_vectors`` unit vectors :math:`(\\cos t, \\sin t)`, t evenly spaced in [min_angle, max_angle].

    The reference vectors of Pareto MTL's two-task experiments (t from 0 to π/2). EPO's official
    MultiMNIST runs use ``min_angle=0.0001 * π/2, max_angle=0.9999 * π/2`` (no zero entries).
    Shape (num_vectors, 2), float64.
    """
    if num_vectors < 1:
        raise ValueError(f"circle_preferences needs num_vectors >= 1, got {num_vectors}")
    if not (0.0 <= min_angle <= max_angle <= 0.5 * math.pi + 1e-12):
        raise ValueError(
            f"circle_preferences needs 0 <= min_angle <= max_angle <= π/2, got {min_angle} and {max_angle}"
        )
    t = torch.linspace(min_angle, max_angle, num_vectors, dtype=torch.float64)
    return torch.stack([torch.cos(t), torch.sin(t)], dim=1).clamp_min(0.0)


class ParetoMTL(GramianWeighting):
    """Task weights of Pareto MTL for member ``index`` of a set of preference regions.

    Args:
        preferences: the M reference vectors, shape (M, K) (rows are rays: finite, >= 0, not all 0;
            normalized to unit length here).
        index: the member's region k, 0 <= k < M.
        warmup_steps: cap on the steps of the feasibility phase (``None``: until the first feasible
            point; 0: no feasibility phase).
        tolerance: ε of the active set, G_j > -ε (0: only violated constraints, as the code).
        constraint_normalization: ``"none"`` (paper: G_j on L) or ``"l2"`` (code: G_j on L/‖L‖).
        weight_scale: ``"none"`` (paper) or ``"num-tasks"`` (code: main-phase weights rescaled to
            Σ|w_t| = K).
        solver: min-norm solver (see :func:`mtlopt.min_norm`); ``"pgd"`` is the code's.
        clip: end-of-segment weights of the solvers' two-point rule; (0.001, 0.999) in the code.
        head_weighting: task-specific parameters get w_t ∇L_t (``"weighted"``, as the code, which
            backpropagates Σ w_t L_t through the whole model) or ∇L_t.
    """

    min_tasks = 2
    num_tasks_source = "preferences have {n} entries (tasks)"

    def __init__(
        self,
        preferences: Tensor | Sequence[Sequence[float]] | np.ndarray,
        index: int,
        *,
        warmup_steps: int | None = None,
        tolerance: float = 0.0,
        constraint_normalization: ConstraintNormalization = "none",
        weight_scale: WeightScale = "none",
        solver: Solver = "auto",
        clip: tuple[float, float] = (0.0, 1.0),
        head_weighting: HeadWeighting = "weighted",
    ) -> None:
        vectors = _check_preference_rows(preferences)
        M = vectors.shape[0]
        try:
            k = operator.index(index)
        except TypeError:
            raise ValueError(f"ParetoMTL index must be an integer, got {index!r}") from None
        if isinstance(index, bool) or not 0 <= k < M:
            raise ValueError(
                f"ParetoMTL index is {index!r}, out of range for {M} preference vectors (0..{M - 1})"
            )
        if warmup_steps is not None:
            try:
                steps = operator.index(warmup_steps)
            except TypeError:
                raise ValueError(
                    f"ParetoMTL warmup_steps must be None or an int >= 0, got {warmup_steps!r}"
                ) from None
            if steps < 0:
                raise ValueError(f"ParetoMTL warmup_steps must be None or an int >= 0, got {warmup_steps!r}")
            warmup_steps = steps
        tolerance = float(tolerance)
        if not (math.isfinite(tolerance) and tolerance >= 0.0):
            raise ValueError(f"ParetoMTL tolerance must be finite and >= 0, got {tolerance!r}")
        check_choice(
            "ParetoMTL", "constraint_normalization", constraint_normalization, ConstraintNormalization
        )
        check_choice("ParetoMTL", "weight_scale", weight_scale, WeightScale)
        check_choice("ParetoMTL", "solver", solver, Solver)
        check_choice("ParetoMTL", "head_weighting", head_weighting, HeadWeighting)
        clip = (float(clip[0]), float(clip[1]))
        if not 0.0 <= clip[0] <= clip[1] <= 1.0:
            raise ValueError(f"ParetoMTL clip must satisfy 0 <= clip[0] <= clip[1] <= 1, got {clip}")
        self.preferences = vectors
        self.index = k
        self.num_tasks = vectors.shape[1]
        self.warmup_steps = warmup_steps
        self.tolerance = tolerance
        self.constraint_normalization: ConstraintNormalization = constraint_normalization
        self.weight_scale: WeightScale = weight_scale
        self.solver: Solver = solver
        self.clip = clip
        self.head_weighting = head_weighting
        unit = vectors / vectors.norm(dim=1, keepdim=True)
        self._directions = (unit - unit[k]).numpy()  # row j: u_j - u_k (row k is 0)
        self._others = [j for j in range(M) if j != k]
        self.reset()

    # --- state -----------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the feasibility phase, step 0."""
        self.phase: Phase = "warmup" if self.warmup_steps != 0 else "main"
        self.steps = 0
        self.warmup_taken = 0

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "steps": self.steps, "warmup_taken": self.warmup_taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"phase", "steps", "warmup_taken"}
        if set(state) != expected:
            raise ValueError(f"ParetoMTL state must have keys {sorted(expected)}, got {sorted(state)}")
        if state["phase"] not in ("warmup", "main"):
            raise ValueError(f"ParetoMTL state phase must be 'warmup' or 'main', got {state['phase']!r}")
        self.phase = state["phase"]
        self.steps = int(state["steps"])
        self.warmup_taken = int(state["warmup_taken"])

    # --- weights -----------------------------------------------------------------------------------------

    def constraints(self, losses: Tensor) -> Tensor:
        """G_j for every reference vector j (G_k = 0), float64, with this member's normalization."""
        L = losses.detach().to("cpu", torch.float64).numpy()
        if self.constraint_normalization == "l2":
            largest = float(np.abs(L).max())
            if largest > 0.0:  # scale first: the norm of losses near 1e300 would overflow
                L = L / largest
                L = L / float(np.linalg.norm(L))
        return torch.from_numpy(self._directions @ L)

    @property
    def weight_sum(self) -> WeightSum:  # type: ignore[override]
        """Data-dependent (eq. 18's weights; warm-up steps weigh the violated constraints); K with
        ``weight_scale="num-tasks"`` in the main phase."""
        return "data-dependent"

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        G = _symmetric(gramian)
        K = G.shape[0]
        negative = [t for t, value in enumerate(losses.detach().tolist()) if value < 0]
        if negative:
            raise ValueError(
                "ParetoMTL needs non-negative losses (its preference regions are cones of the positive "
                f"orthant), but the loss of task(s) {negative} is negative "
                f"({[float(losses[t]) for t in negative]})"
            )
        values = self.constraints(losses).numpy()
        self.steps += 1
        if self.phase == "warmup":
            violated = [j for j in self._others if values[j] > 0.0]
            capped = self.warmup_steps is not None and self.warmup_taken >= self.warmup_steps
            if violated and not capped:
                self.warmup_taken += 1
                C = self._directions[violated]
                result = min_norm(_congruent(C, G), solver=self.solver, clip=self.clip)
                weights = C.T @ result.weights.numpy()
                return self._output(weights, values, violated, result)
            self.phase = "main"
        active = [j for j in self._others if values[j] > -self.tolerance]
        C = np.vstack([np.eye(K), self._directions[active]])
        result = min_norm(_congruent(C, G), solver=self.solver, clip=self.clip)
        weights = C.T @ result.weights.numpy()
        if self.weight_scale == "num-tasks":
            total = float(np.abs(weights).sum())
            if total > 0.0:
                weights = weights * (K / total)
        return self._output(weights, values, active, result)

    def _output(
        self, weights: np.ndarray, values: np.ndarray, constraint_set: list[int], result: MinNormResult
    ) -> WeightingOutput:
        diagnostics = {
            "phase": self.phase,
            "step": self.steps,
            "feasible": not any(values[j] > 0.0 for j in self._others),
            "constraints": [float(v) for v in values],
            "violated": [j for j in self._others if values[j] > 0.0],
            "active": list(constraint_set),
            "min_norm": result.objective,
            "solver": result.solver,
            "solver_iterations": result.iterations,
            "solver_converged": result.converged,
            "kkt_residual": result.kkt_residual,
        }
        return WeightingOutput(torch.from_numpy(np.asarray(weights, dtype=np.float64)), diagnostics)

    def __repr__(self) -> str:
        options = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in (
                "warmup_steps",
                "tolerance",
                "constraint_normalization",
                "weight_scale",
                "solver",
                "clip",
                "head_weighting",
            )
        )
        M, K = self.preferences.shape
        return f"ParetoMTL(<{M}×{K} preferences>, index={self.index}, {options})"


def _check_preference_rows(preferences: Any) -> Tensor:
    try:
        vectors = torch.as_tensor(np.asarray(preferences, dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise ValueError(f"ParetoMTL preferences must be an (M, K) array of numbers: {error}") from None
    if vectors.ndim != 2 or vectors.shape[0] < 1:
        raise ValueError(
            f"ParetoMTL preferences must have shape (M, K): one row per reference vector, "
            f"got shape {tuple(vectors.shape)}"
        )
    if vectors.shape[1] < 2:
        raise ValueError(
            f"ParetoMTL preferences need at least 2 entries (tasks) per row, got {vectors.shape[1]}"
        )
    for i, row in enumerate(vectors):
        shown = [float(f"{v:.6g}") for v in row.tolist()]
        if not bool(torch.isfinite(row).all()):
            raise ValueError(f"ParetoMTL preference vector {i} is {shown}: entries must be finite")
        if bool((row < 0).any()):
            raise ValueError(f"ParetoMTL preference vector {i} is {shown}: entries must be >= 0")
        if not bool((row > 0).any()):
            raise ValueError(f"ParetoMTL preference vector {i} is {shown}: it is 0, not a ray")
    return vectors.clone()


def _congruent(C: np.ndarray, G: np.ndarray) -> np.ndarray:
    """C G Cᵀ formed as (C F)(C F)ᵀ with G = F Fᵀ (negative round-off eigenvalues of G dropped): its
    diagonal is a sum of squares, so a row of C in G's null space gives 0, not a negative round-off."""
    eigenvalues, vectors = np.linalg.eigh(G)
    A = C @ (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None)))
    return A @ A.T


def _symmetric(gramian: Tensor) -> np.ndarray:
    G = gramian.numpy()
    return 0.5 * (G + G.T)
