r"""UPGrad: the unconflicting projection of gradients, as task weights from the Gramian.

Pierre Quinton and Valérian Rey, "Jacobian Descent for Multi-Objective Optimization", 2024,
arXiv:2406.16232. Official code: TorchJD (``torchjd.aggregation.UPGrad`` / ``UPGradWeighting``).

With a preference vector u (1/K each by default), every scaled gradient :math:`u_i g_i` is projected
onto the dual cone :math:`\{x : Jx \ge 0\}` of the task gradients, and the projections are summed.
By Proposition 1 of the paper the projection of :math:`J^\top a` has weights

.. math::

    v^{(i)} = \arg\min_{v \ge u_i e_i} v^\top G v , \qquad w = \sum_i v^{(i)}, \qquad d = J^\top w ,

so everything runs on the K×K Gramian G. Every :math:`J^\top v^{(i)}` lies in the dual cone, hence
:math:`J d = G w \ge 0`: no task's loss increases to first order. When no two gradients conflict
(:math:`G \ge 0` entrywise) every constraint is active, :math:`v^{(i)} = u_i e_i` and d is
:math:`J^\top u` (:math:`\bar g` for the default u).

The K QPs are solved together by one batched float64 active-set solver (block principal pivoting
in the basis of unit-norm gradients, ``mtlopt.weighting._dual_cone``), exact up to rounding, with its
convergence in the diagnostics; a zero gradient imposes no constraint and keeps weight :math:`u_t`.

======================  ===============================  ==========================================
option                  default (paper / official)       alternatives
======================  ===============================  ==========================================
``pref_vector``         None: 1/K each                   any K non-negative entries
``reg_eps``,            0, 0: the exact QP on G          TorchJD's and LibMTL's ``QuadprogProjector``:
``norm_eps``                                             G/tr(G) (the zero matrix when tr(G) <
                                                         ``norm_eps``) plus ``reg_eps``·I, both 1e-4
                                                         (``reg_eps=1e-4, norm_eps=1e-4``)
``head_weighting``      ``"unweighted"`` (TorchJD,       ``"weighted"``: :math:`w_t \nabla L_t`
                        LibMTL): heads get ∇L_t
======================  ===============================  ==========================================

Weight sum (:attr:`UPGrad.weight_sum`): Σu = 1 when no gradients conflict; a conflict raises weights
above :math:`u_i`, so the sum is ≥ 1 then. Use with ``shared_params=`` (the paper) or ``features=``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._base import GramianWeighting, HeadWeighting, WeightingOutput, WeightSum, check_method_options
from ._dual_cone import DualConeResult, project_dual_cone

__all__ = ["UPGrad"]


def preference(owner: str, pref_vector: Sequence[float] | Tensor | None) -> np.ndarray | None:
    """The checked preference vector (float64, non-negative, not all zero) or None."""
    if pref_vector is None:
        return None
    values = np.asarray(
        pref_vector.detach().cpu().double().numpy() if isinstance(pref_vector, Tensor) else pref_vector,
        dtype=np.float64,
    )
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{owner} pref_vector must be a non-empty 1-D sequence, got shape {values.shape}")
    if not np.isfinite(values).all() or (values < 0).any() or not (values > 0).any():
        raise ValueError(
            f"{owner} pref_vector must be finite, non-negative and not all zero, got {values.tolist()}"
        )
    return values


def check_eps(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0.0):
            raise ValueError(f"{owner} {name} must be a float >= 0, got {value!r}")


def torchjd_gramian(G: np.ndarray, reg_eps: float, norm_eps: float) -> np.ndarray:
    """TorchJD's ``regularize(normalize(G, norm_eps), reg_eps)``: G/tr(G) (0 if tr < norm_eps) + reg·I."""
    trace = float(np.trace(G))
    scaled = np.zeros_like(G) if trace < norm_eps else G / trace
    return scaled + reg_eps * np.eye(G.shape[0])


def dual_cone_diagnostics(G: np.ndarray, w: np.ndarray, result: DualConeResult) -> dict[str, Any]:
    """The solver's report and the non-conflict certificate min_t g_tᵀd / (‖g_t‖ ‖d‖)."""
    Gw = G @ w
    norms = np.sqrt(np.clip(np.diag(G), 0.0, None))
    size = float(np.sqrt(max(float(w @ Gw), 0.0)))
    live = norms > 0.0
    cosine = float((Gw[live] / (norms[live] * size)).min()) if size > 0.0 and live.any() else 0.0
    return {
        "solver_iterations": result.iterations,
        "solver_converged": result.converged,
        "kkt_residual": result.kkt_residual,
        "min_cosine": cosine,
        "direction_norm": size,
    }


class UPGrad(GramianWeighting):
    """The sum of the projections of each u_i g_i onto the dual cone (Quinton & Rey 2024).

    Args:
        pref_vector: the K weights u (None: 1/K each).
        reg_eps: ridge added to the trace-normalized Gramian (TorchJD: 1e-4); 0 solves the exact QP.
        norm_eps: a trace below it makes TorchJD's normalized Gramian 0 (TorchJD: 1e-4).
        head_weighting: ``"unweighted"`` (heads get ∇L_t) or ``"weighted"``.
        max_iter: iteration cap of the active-set solver (None: 10 K + 50).
    """

    min_tasks = 1
    weight_sum: WeightSum = "1"

    def __init__(
        self,
        pref_vector: Sequence[float] | Tensor | None = None,
        *,
        reg_eps: float = 0.0,
        norm_eps: float = 0.0,
        head_weighting: HeadWeighting = "unweighted",
        max_iter: int | None = None,
    ) -> None:
        check_method_options(self, head_weighting=(head_weighting, HeadWeighting))
        check_eps(type(self).__name__, reg_eps=reg_eps, norm_eps=norm_eps)
        if max_iter is not None and (
            isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1
        ):
            raise ValueError(f"{type(self).__name__} max_iter must be an int >= 1 or None, got {max_iter!r}")
        self.pref_vector = preference(type(self).__name__, pref_vector)
        self.num_tasks = None if self.pref_vector is None else int(self.pref_vector.size)
        self.reg_eps = float(reg_eps)
        self.norm_eps = float(norm_eps)
        self.head_weighting = head_weighting
        self.max_iter = max_iter

    num_tasks_source = "has a pref_vector of {n} entries (tasks)"

    def _u(self, K: int) -> np.ndarray:
        return np.full(K, 1.0 / K) if self.pref_vector is None else self.pref_vector

    def _problem(self, gramian: Tensor) -> np.ndarray:
        G = gramian.numpy()
        if self.reg_eps > 0.0 or self.norm_eps > 0.0:
            return torchjd_gramian(G, self.reg_eps, self.norm_eps)
        return G

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        G = self._problem(gramian)
        u = self._u(G.shape[0])
        result = project_dual_cone(G, np.diag(u), max_iter=self.max_iter)
        w = result.weights.sum(axis=0)
        diagnostics = dual_cone_diagnostics(gramian.numpy(), w, result)
        return WeightingOutput(torch.from_numpy(w), diagnostics)

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else self.pref_vector.tolist()
        return (
            f"{type(self).__name__}(pref_vector={pref}, reg_eps={self.reg_eps}, norm_eps={self.norm_eps}, "
            f"head_weighting={self.head_weighting!r}, max_iter={self.max_iter})"
        )
