r"""IMTL-G: the combined gradient with equal projections on every task's unit gradient.

Liyang Liu, Yi Li, Zhanghui Kuang, Jing-Hao Xue, Yimin Chen, Wenming Yang, Qingmin Liao and Wayne
Zhang, "Towards Impartial Multi-task Learning", ICLR 2021 (OpenReview IMPnRXEWpvr; the gradient half,
IMTL-G; :class:`mtlopt.IMTLL` is the loss half, :class:`mtlopt.IMTL` the two together). No official
code found; TorchJD has ``IMTLG``, LibMTL the closed form inside ``LibMTL/weighting/IMTL.py``.

The update :math:`d = \sum_t \alpha_t g_t` with :math:`\sum_t \alpha_t = 1` whose projections on the
unit gradients :math:`u_t = g_t / \|g_t\|` are all equal:

.. math::

    u_t^\top d = c \quad \text{for every } t
    \iff G\alpha = c\, n, \qquad n_t = \sqrt{G_{tt}} = \|g_t\| ,

so :math:`\alpha \propto G^{-1} n`, normalized to :math:`\sum_t \alpha_t = 1`; the common projection
is :math:`c = 1 / \mathbf 1^\top G^{-1} n`. The paper's closed form
(:math:`\alpha_{2:K} = g_1^\top U^\top (D U^\top)^{-1}` with :math:`D = [g_1 - g_t]_{t \ge 2}`,
:math:`U = [u_1 - u_t]_{t \ge 2}`, LibMTL's code) is the same α for linearly independent gradients.
**α can be negative**; the total weight is 1 (``weight_sum = "1"``) unless the step is degenerate.
The paper applies it to the gradients w.r.t. the shared representation Z (``features=z``); with
``shared_params=`` it acts on the parameter gradients (Nash-MTL's and TorchJD's usual setting).

Computed from the Gramian alone, in float64. With :math:`N = \operatorname{diag}(n)` and the cosine
matrix :math:`C = N^{-1} G N^{-1}` (unit diagonal), :math:`G^{-1} n = N^{-1} C^{-1} \mathbf 1`: the
default ``solve="cosine"`` takes :math:`\beta = C^{+}\mathbf 1` (a Hermitian pseudo-inverse) and
:math:`\alpha \propto N^{-1}\beta`, which is independent of the gradients' scales (a task at 1e-8 of
another's norm is not cut off by the pseudo-inverse's threshold, as it is in :math:`G^{+}`).
``solve="gramian"`` is TorchJD's :math:`\alpha \propto G^{+} n` step for step (its absolute
threshold included). The two agree whenever G is invertible; they differ only on rank-deficient G
where the equal-projection condition leaves the direction's length free (e.g. one gradient a
positive multiple of another: ``"cosine"`` takes the minimum-norm β in unit-gradient coordinates,
``"gramian"`` the minimum-norm α).

Degenerate Gramians (the rule, tested):

- a task with :math:`g_t = 0` (zero row) has no unit gradient and no condition: it gets
  :math:`\alpha_t = 0` and the others are solved (``diagnostics["zero_gradient_tasks"]``);
- duplicated or linearly dependent gradients: the pseudo-inverse gives the least-squares solution
  (exact duplicates share their weight equally); ``diagnostics["residual"]`` is the relative residual
  :math:`\|G\alpha - c n\| / (|c| \|n\|)` of the equal-projection condition, 0 up to rounding when it
  can be met;
- when :math:`|\mathbf 1^\top N^{-1}\beta| \cdot \max_t n_t \le 10^{-12}` (the common projection would
  exceed :math:`10^{12}` times the largest gradient norm; e.g. two opposite gradients, whose only
  equal-projection direction is 0) every weight is 0 (TorchJD's rule, here scale-free), the update
  is 0 and ``diagnostics["degenerate"]`` is True. An all-zero Gramian gives zero weights too.

No NaN in any case. Diagnostics: ``residual``, ``projection`` (c), ``degenerate``, ``rank`` (of C),
and :func:`mtlopt.backward` adds ``weight_sum``.

======================  ====================================  =====================================
choice                  here (default)                        peers
======================  ====================================  =====================================
where G is taken        the caller's: ``features=z`` (paper,  TorchJD: any Jacobian; LibMTL:
                        Nash-MTL §6) or ``shared_params=``    shared params, or ``rep_grad=True``
``head_weighting``      ``"unweighted"``: heads get           ``"weighted"``: :math:`\alpha_t
                        :math:`\nabla L_t` (TorchJD, LibMTL;  \nabla L_t` (nash-mtl backpropagates
                        a negative α on a weighted head       :math:`\sum_t \alpha_t L_t`)
                        would ascend its own loss)
``feature_batch``       ``"flatten"``: Z's B×D gradient as    ``"sum"``: summed over the batch first
                        one vector per task                   (LibMTL ``rep_grad=True``)
``solve``               ``"cosine"``: :math:`N^{-1} C^{+}     ``"gramian"``: :math:`G^{+} n`
                        \mathbf 1`                            (TorchJD); LibMTL: ``torch.inverse``
                                                              (an error when singular, NaN for a
                                                              zero gradient)
degenerate step         zero weights when the sum vanishes    TorchJD: the same with
                        relative to the gradients' scale      :math:`|\sum| < 10^{-12}` absolute;
                                                              nash-mtl: retries with
                                                              :math:`DU^\top + 10^{-8} I`
======================  ====================================  =====================================

Stateless.
"""

from __future__ import annotations

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

__all__ = ["IMTLG", "imtl_g_weights"]

Solve = Literal["cosine", "gramian"]
# The common projection may be at most this many times the largest gradient norm (else: degenerate).
_DEGENERATE = 1e-12


def imtl_g_weights(gramian: Tensor, solve: Solve = "cosine") -> tuple[Tensor, dict[str, Any]]:
    """IMTL-G's weights (float64, summing to 1, or all 0 when degenerate) and diagnostics from G."""
    G = gramian.detach().to("cpu", torch.float64)
    G = (G + G.T) / 2
    K = G.shape[0]
    norms = G.diagonal().clamp(min=0).sqrt()
    active = norms > 0
    weights = torch.zeros(K, dtype=torch.float64)
    diagnostics: dict[str, Any] = {}
    if not bool(active.all()):
        diagnostics["zero_gradient_tasks"] = (~active).nonzero()[:, 0].tolist()
    rank = 0
    if bool(active.any()):
        idx = active.nonzero()[:, 0]
        Ga, na = G[idx][:, idx], norms[idx]
        if solve == "gramian":  # TorchJD: pinv(G) @ sqrt(diag G), zero when |sum| < 1e-12
            v_full = torch.linalg.pinv(G) @ norms
            total = v_full.sum()
            rank = int(torch.linalg.matrix_rank(G, hermitian=True))
            degenerate = bool(total.abs() < 1e-12)
            if not degenerate:
                weights = v_full / total
        else:
            C = Ga / torch.outer(na, na)
            C = (C + C.T) / 2
            beta = torch.linalg.pinv(C, hermitian=True) @ torch.ones_like(na)
            v = beta / na
            total = v.sum()
            rank = int(torch.linalg.matrix_rank(C, hermitian=True))
            degenerate = bool(total.abs() * na.max() <= _DEGENERATE)
            if not degenerate:
                weights[idx] = v / total
    else:
        degenerate = True
    diagnostics["degenerate"] = degenerate
    diagnostics["rank"] = rank
    diagnostics.update(_condition(G, norms, weights, active))
    return weights, diagnostics


def _condition(G: Tensor, norms: Tensor, weights: Tensor, active: Tensor) -> dict[str, float]:
    """The common projection c (least squares over the tasks with g_t ≠ 0) and the relative residual
    ‖Gα − c n‖ / (|c| ‖n‖) of the equal-projection condition there."""
    if not bool(weights.any()):
        return {"projection": 0.0, "residual": 0.0}
    Gw, n = (G @ weights)[active], norms[active]
    c = float(n @ Gw) / float(n @ n)
    scale = abs(c) * float(n.norm())
    residual = float((Gw - c * n).norm()) / scale if scale > 0 else float("inf")
    return {"projection": c, "residual": residual}


class IMTLG(GramianWeighting):
    r"""IMTL-G (Liu et al. 2021): weights, summing to 1, giving equal projections on the unit gradients.

    Args:
        head_weighting: ``"unweighted"`` (heads get :math:`\nabla L_t`) or ``"weighted"``.
        feature_batch: with ``features=``, ``"flatten"`` or ``"sum"`` (LibMTL's ``rep_grad``).
        solve: ``"cosine"`` (scale-free pseudo-inverse) or ``"gramian"`` (TorchJD's :math:`G^+ n`).
    """

    min_tasks = 1
    weight_sum: WeightSum = "1"

    def __init__(
        self,
        *,
        head_weighting: HeadWeighting = "unweighted",
        feature_batch: FeatureBatch = "flatten",
        solve: Solve = "cosine",
    ) -> None:
        check_method_options(
            self,
            head_weighting=(head_weighting, HeadWeighting),
            feature_batch=(feature_batch, FeatureBatch),
            solve=(solve, Solve),
        )
        self.head_weighting = head_weighting
        self.feature_batch = feature_batch
        self.solve: Solve = solve

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        weights, diagnostics = imtl_g_weights(gramian, self.solve)
        return WeightingOutput(weights, diagnostics)

    def __repr__(self) -> str:
        return (
            f"IMTLG(head_weighting={self.head_weighting!r}, feature_batch={self.feature_batch!r}, "
            f"solve={self.solve!r})"
        )
