r"""Aligned-MTL and Aligned-MTL-UB: gradients aligned to an orthogonal, equal-norm basis.

Dmitry Senushkin, Nikolay Patakin, Arseny Kuznetsov and Anton Konushin, "Independent Component
Alignment for Multi-Task Learning", CVPR 2023, arXiv:2305.19000. Official code: SamsungLabs/MTL,
``code/optim/aligned/solver.py`` (``ProcrustesSolver``) and ``balancer.py`` (``amtl``, ``amtlub``).

The paper makes the task gradients (rows of J) a well-conditioned system: it replaces J by the
aligned :math:`\hat J = B J` whose rows are orthogonal with one common norm, the closest such matrix
in the Procrustes sense, and descends along :math:`\hat J^\top p`. Everything comes from the Gramian
:math:`G = J J^\top = V \Lambda V^\top` (``torch.linalg.eigh`` in float64):

- **rank / cutoff rule:** keep the r eigenpairs with :math:`\lambda_k > \lambda_{\max} \cdot K \cdot
  \varepsilon`, where ε is ``eps``, by default the float32 machine epsilon (``torch.finfo()`` of the
  default dtype in the official code and LibMTL; TorchJD 0.18.0 takes the epsilon of G's dtype, which
  for a float64 Gramian is ``eps=2.220446049250313e-16``);
- :math:`B = \sqrt{s}\, V_r \Lambda_r^{-1/2} V_r^\top` with the scale s one of the kept eigenvalues
  (``scale_mode``); then :math:`B G B = s\, V_r V_r^\top`: for a full-rank G the aligned gradients are
  orthogonal with norm :math:`\sqrt{s}`;
- the update is :math:`d = \hat J^\top p = J^\top B p`, so the task weights are :math:`w = B p`.

**Aligned-MTL-UB** is the same weighting on the Gramian of the gradients w.r.t. the shared
representation Z (``mtlopt.backward(losses, AlignedMTL(), features=z)``): one encoder backward pass of
:math:`\sum_t w_t \nabla_Z L_t`, as the official ``amtlub`` balancer.

Degenerate Gramians (a stated rule, no NaN): when no eigenvalue passes the cutoff (G = 0, or every
gradient zero), B = I and w = p (TorchJD's rule; the official code and LibMTL fail on an empty
spectrum); the update is then 0 whatever the weights. Zero and duplicated gradients only lower the
rank: the kept eigenvectors span the gradients that are there.

Options (defaults: the paper, where it is silent the official code):

===================  ==========================================  =========================================
option               default                                     alternatives
===================  ==========================================  =========================================
``pref``             ``"ones"``: p = 1, the aligned gradients    ``"mean"``: p = 1/K (TorchJD's
                     are summed (official, LibMTL ``B.sum(0)``)  ``pref_vector=None``); a sequence of K
                                                                 numbers
``scale_mode``       ``"min"``: s = the smallest kept            ``"median"`` (``torch.median``: the lower
                     eigenvalue (paper, official default)        of the two middle values for even r),
                                                                 ``"rmse"`` (the mean; official name)
``eps``              float32 machine epsilon (official, LibMTL,  any positive number; TorchJD 0.18.0 on
                     TorchJD HEAD)                               a float64 Gramian: float64's epsilon
``head_weighting``   ``"unweighted"``: head t gets               ``"weighted"``: :math:`w_t\nabla L_t`
                     :math:`\nabla L_t` (official                (official ``scale_decoder_grad=True``)
                     ``scale_decoder_grad=False``, LibMTL)
``feature_batch``    ``"flatten"``: Z's whole B×D gradient as    ``"sum"``: per-sample gradients summed
                     one vector (official ``amtlub``)            over the batch (LibMTL ``rep_grad``)
===================  ==========================================  =========================================

Total weight: :math:`\sum_t w_t = 1^\top B 1`; K for orthogonal gradients of equal norm and for K equal
gradients, otherwise it depends on the data (``weight_sum = "data-dependent"``); TorchJD's default
is 1/K of it. Diagnostics: the rank kept, the cutoff, the scale s and the condition number
:math:`\lambda_{\max}/\lambda_{\min}` of the kept spectrum and the alignment residual
:math:`\max|BGB - sV_rV_r^\top|/s` (the decomposition is direct: no iterations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ._base import (
    FeatureBatch,
    GramianWeighting,
    HeadWeighting,
    WeightingOutput,
    WeightSum,
    check_method_options,
)

__all__ = ["AlignedMTL", "balance_transformation"]

ScaleMode = Literal["min", "median", "rmse"]
Pref = Literal["ones", "mean"]
FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


def balance_transformation(
    gramian: Tensor, scale_mode: ScaleMode = "min", eps: float = FLOAT32_EPS
) -> tuple[Tensor, dict[str, Any]]:
    r"""B of Aligned-MTL for a K×K Gramian (float64) and what was kept: ``rank``, ``cutoff``, ``scale``,
    ``condition``, and ``alignment_residual`` (max-norm of :math:`BGB - sV_rV_r^\top` over s, the
    decomposition's accuracy). B = I when no eigenvalue passes :math:`\lambda_{\max} K \varepsilon`."""
    G = gramian.detach().to("cpu", torch.float64)
    K = G.shape[0]
    lam, V = torch.linalg.eigh(G, UPLO="U")
    cutoff = float(lam.max()) * K * eps
    keep = lam > cutoff
    rank = int(keep.sum())
    if rank == 0 or not float(lam.max()) > 0:
        return torch.eye(K, dtype=torch.float64), {
            "rank": 0,
            "cutoff": cutoff,
            "scale": 0.0,
            "condition": 1.0,
            "alignment_residual": 0.0,
        }
    lam_r, V_r = lam[keep].flip(0), V[:, keep].flip(1)  # descending, as the official code sorts them
    if scale_mode == "min":
        scale = lam_r[-1]
    elif scale_mode == "median":
        scale = torch.median(lam_r)
    else:
        scale = lam_r.mean()
    B = scale.sqrt() * (V_r / lam_r.sqrt()) @ V_r.T
    residual = float((B @ G @ B - scale * V_r @ V_r.T).abs().max() / scale)  # B G B = s V_r V_rᵀ
    info = {
        "rank": rank,
        "cutoff": cutoff,
        "scale": float(scale),
        "condition": float(lam_r[0] / lam_r[-1]),
        "alignment_residual": residual,
    }
    return B, info


class AlignedMTL(GramianWeighting):
    """Aligned-MTL (Senushkin et al. 2023): w = B p; Aligned-MTL-UB when used with ``features=``.

    Args:
        pref: the preference p: ``"ones"`` (official), ``"mean"`` (1/K, TorchJD) or K numbers.
        scale_mode: the eigenvalue s the aligned gradients are scaled to: ``"min"``, ``"median"``,
            ``"rmse"``.
        eps: the relative eigenvalue cutoff is ``λ_max · K · eps``.
        head_weighting: ``"unweighted"`` (official default) or ``"weighted"``.
        feature_batch: ``"flatten"`` (official UB) or ``"sum"`` (LibMTL ``rep_grad``); UB only.
    """

    min_tasks = 1
    weight_sum: WeightSum = "data-dependent"

    def __init__(
        self,
        pref: Pref | Sequence[float] | Tensor = "ones",
        scale_mode: ScaleMode = "min",
        *,
        eps: float = FLOAT32_EPS,
        head_weighting: HeadWeighting = "unweighted",
        feature_batch: FeatureBatch = "flatten",
    ) -> None:
        check_method_options(
            self,
            scale_mode=(scale_mode, ScaleMode),
            head_weighting=(head_weighting, HeadWeighting),
            feature_batch=(feature_batch, FeatureBatch),
        )
        if isinstance(pref, str):
            check_method_options(self, pref=(pref, Pref))
            self.pref: Pref | Tensor = pref
        else:
            vector = torch.as_tensor(pref, dtype=torch.float64).detach().cpu()
            if vector.ndim != 1 or vector.numel() == 0 or not bool(torch.isfinite(vector).all()):
                raise ValueError(f"AlignedMTL pref must be 'ones', 'mean' or K finite numbers; got {pref!r}")
            self.pref = vector
            self.num_tasks = vector.numel()
        if not (isinstance(eps, (int, float)) and eps > 0 and eps < 1):
            raise ValueError(f"AlignedMTL eps must be a number in (0, 1); got {eps!r}")
        self.scale_mode: ScaleMode = scale_mode
        self.eps = float(eps)
        self.head_weighting = head_weighting
        self.feature_batch = feature_batch

    num_tasks_source = "has a preference of {n} entries (tasks)"

    def preference(self, K: int) -> Tensor:
        """The preference vector p for K tasks (float64)."""
        if isinstance(self.pref, Tensor):
            return self.pref
        return torch.full((K,), 1.0 if self.pref == "ones" else 1.0 / K, dtype=torch.float64)

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        B, info = balance_transformation(gramian, self.scale_mode, self.eps)
        weights = B @ self.preference(gramian.shape[0])
        return WeightingOutput(weights, info)

    def __repr__(self) -> str:
        pref = self.pref if isinstance(self.pref, str) else self.pref.tolist()
        return (
            f"AlignedMTL(pref={pref!r}, scale_mode={self.scale_mode!r}, eps={self.eps!r}, "
            f"head_weighting={self.head_weighting!r}, feature_batch={self.feature_batch!r})"
        )
