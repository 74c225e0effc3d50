r"""ConFIG: the conflict-free direction with equal cosines to every task gradient, from the Gramian.

Qiang Liu, Mengyu Chu and Nils Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed
Neural Networks", ICLR 2025, arXiv:2408.11104. Official code: tum-pbs/ConFIG,
``conflictfree/grad_operator.py::ConFIG_update``, ``length_model.py``, ``weight_model.py``.

The paper's update: with the unit gradients :math:`\hat u_t = g_t/\|g_t\|` (rows of Û) and a
preference p (ones), x is the minimum-norm least-squares solution of :math:`\hat U x = p`, the
direction is :math:`u = x/\|x\|` and its length the sum of the projections,

.. math::

    d = \Big(\sum_t g_t^\top u\Big)\, u .

With p = 1 and Û of full row rank, :math:`\hat u_t^\top x = 1` for every t: d has the same cosine with
every task gradient, and a positive one, so it conflicts with none.

**From the Gramian alone.** Let :math:`N = \mathrm{diag}(\sqrt{G_{tt}})` and
:math:`C = N^{-1} G N^{-1} = \hat U \hat U^\top` (the cosine matrix). The minimum-norm solution is
:math:`x = \hat U^\top C^{+} p = J^\top a` with :math:`a = N^{-1} C^{+} p`, so :math:`g_t^\top x =
(G a)_t` and :math:`\|x\|^2 = a^\top G a`; the update is :math:`d = J^\top w` with

.. math::

    w = a\, \frac{1^\top G a}{a^\top G a} .

The pseudo-inverse :math:`C^{+}` comes from ``eigh`` in float64 with the eigenvalues
:math:`\lambda \le \lambda_{\max} K \varepsilon` treated as 0, ``eps`` = 1e-12 by default. It is larger
than float64's epsilon on purpose: the entries of a Gramian carry a rounding error of relative order
:math:`\sqrt{P}` times float64's epsilon, so exactly dependent unit gradients (duplicated or opposite
tasks) show eigenvalues of C of that order, which a cutoff at the epsilon would invert into a
direction made of rounding. ``lstsq``/``pinv`` of Û (the official code and TorchJD's ``ConFIG``, which
take J) keep singular values down to about :math:`P\varepsilon\,\sigma_{\max}`; the two agree whenever
Û's singular values are either zero or above :math:`\sqrt{K\cdot\mathrm{eps}}\,\sigma_{\max}` (the
tests check random, rank-deficient, duplicated and zero rows at scales 1e-8 to 1e8). Unit gradients
closer to dependent than that count as dependent.

Degenerate inputs (stated rules, no NaN): a task with :math:`g_t = 0` has unit vector 0 (the official
``nan_to_num``): its equation drops out and :math:`a_t = 0`. When every gradient is 0, or p has no
part in the range of C beyond rounding (:math:`\|V_r^\top p\| \le K\,\mathrm{eps}\,\|p\|`, e.g.
two opposite gradients: no direction has equal positive cosines with both), w = 0 and the update is 0
(the references normalize a direction made of rounding: TorchJD's ``normalize`` returns about 0, the
official ``lstsq`` a unit vector of arbitrary direction).

Options (defaults: the paper and official code):

===================  =========================================  ==========================================
option               default                                    alternatives
===================  =========================================  ==========================================
``pref``             ``"ones"`` (official ``EqualWeight``,      K positive numbers
                     TorchJD)
``length``           ``"projection"``: :math:`\sum_t g_t^\top   ``"track-minimum"``, ``"track-maximum"``,
                     u` (official ``ProjectionLength``)         ``"track-harmonic"``, ``"track-arithmetic"``,
                                                                ``"track-geometric"``: :math:`m(\|g\|)
                                                                \sum_t \cos(g_t, u)` with m that statistic
                                                                of the gradient norms (official
                                                                ``Track*`` length models)
``eps``              1e-12 (see above)                          the relative eigenvalue cutoff of
                                                                :math:`C^{+}`
``head_weighting``   ``"unweighted"``: head t gets              ``"weighted"``: :math:`w_t \nabla L_t`
                     :math:`\nabla L_t` (the official MTL
                     runs backpropagate the heads' sum)
===================  =========================================  ==========================================

The momentum variant M-ConFIG (one loss per step, per-loss moments) is an optimizer with per-task
state and is not this weighting. Total weight: K when the gradients are orthogonal with equal norms or
all equal (the "sum" scale), otherwise data-dependent. Diagnostics: the rank of C kept, the common
cosine :math:`\cos(g_t, d)` (its spread over the tasks with nonzero gradients is ``cosine_spread``: 0
when the equal-angle system is solved exactly) and the length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ._base import GramianWeighting, HeadWeighting, WeightingOutput, WeightSum, check_method_options

__all__ = ["ConFIG", "config_weights"]

Length = Literal[
    "projection", "track-minimum", "track-maximum", "track-harmonic", "track-arithmetic", "track-geometric"
]
DEFAULT_EPS = 1e-12


def _tracked(norms: Tensor, length: Length) -> Tensor:
    if length == "track-minimum":
        return norms.min()
    if length == "track-maximum":
        return norms.max()
    if length == "track-harmonic":
        return norms.numel() / (1.0 / norms).sum() if bool((norms > 0).all()) else norms.new_zeros(())
    if length == "track-arithmetic":
        return norms.mean()
    return norms.log().mean().exp()


def config_weights(
    gramian: Tensor, pref: Tensor, length: Length = "projection", eps: float = DEFAULT_EPS
) -> tuple[Tensor, dict[str, float]]:
    """ConFIG's task weights w (d = Jᵀw) from the K×K Gramian and the preference (float64)."""
    G = gramian.detach().to("cpu", torch.float64)
    K = G.shape[0]
    norms = G.diagonal().clamp_min(0.0).sqrt()
    nonzero = norms > 0
    inv = torch.where(nonzero, 1.0 / torch.where(nonzero, norms, 1.0), 0.0)
    C = inv[:, None] * G * inv[None, :]
    lam, V = torch.linalg.eigh(C)
    top = float(lam.max())
    keep = lam > top * K * eps
    info = {"rank": int(keep.sum()), "length": 0.0, "cosine": 0.0, "cosine_spread": 0.0}
    if not top > 0 or not bool(keep.any()):
        return torch.zeros(K, dtype=torch.float64), info
    V_r = V[:, keep]
    q = V_r.T @ pref  # the part of p that the unit gradients can reach
    if not float(q.norm()) > K * eps * float(pref.norm()):
        return torch.zeros(K, dtype=torch.float64), info
    a = inv * (V_r @ (q / lam[keep]))
    Ga = G @ a
    norm_x_sq = float(a @ Ga)
    if not norm_x_sq > 0:
        return torch.zeros(K, dtype=torch.float64), info
    norm_x = norm_x_sq**0.5
    cosines = Ga[nonzero] / (norms[nonzero] * norm_x)  # cos(g_t, u) of the nonzero gradients
    if length == "projection":
        size = float(Ga.sum()) / norm_x
    else:
        size = float(_tracked(norms, length) * cosines.sum())
    weights = a * (size / norm_x)
    info.update(
        length=size,
        cosine=float(cosines.mean()),
        cosine_spread=float(cosines.max() - cosines.min()),
    )
    return weights, info


class ConFIG(GramianWeighting):
    """ConFIG (Liu et al. 2025): the equal-cosine direction scaled by the sum of projections.

    Args:
        pref: ``"ones"`` or K positive numbers (the right-hand side of Û x = p).
        length: ``"projection"`` (official default) or one of the official ``Track*`` lengths.
        eps: relative eigenvalue cutoff of the pseudo-inverse of the cosine matrix.
        head_weighting: ``"unweighted"`` (official MTL runs) or ``"weighted"``.
    """

    min_tasks = 1
    weight_sum: WeightSum = "data-dependent"
    num_tasks_source = "has a preference of {n} entries (tasks)"

    def __init__(
        self,
        pref: Literal["ones"] | Sequence[float] | Tensor = "ones",
        length: Length = "projection",
        *,
        eps: float = DEFAULT_EPS,
        head_weighting: HeadWeighting = "unweighted",
    ) -> None:
        check_method_options(self, length=(length, Length), head_weighting=(head_weighting, HeadWeighting))
        if isinstance(pref, str):
            check_method_options(self, pref=(pref, Literal["ones"]))
            self.pref: str | Tensor = pref
        else:
            vector = torch.as_tensor(pref, dtype=torch.float64).detach().cpu()
            if vector.ndim != 1 or vector.numel() == 0 or not bool((vector > 0).all()):
                raise ValueError(f"ConFIG pref must be 'ones' or K positive numbers; got {pref!r}")
            if not bool(torch.isfinite(vector).all()):
                raise ValueError(f"ConFIG pref must be 'ones' or K positive numbers; got {pref!r}")
            self.pref = vector
            self.num_tasks = vector.numel()
        if not (isinstance(eps, (int, float)) and 0 < eps < 1):
            raise ValueError(f"ConFIG eps must be a number in (0, 1); got {eps!r}")
        self.length: Length = length
        self.eps = float(eps)
        self.head_weighting = head_weighting

    def preference(self, K: int) -> Tensor:
        """The right-hand side p for K tasks (float64)."""
        return self.pref if isinstance(self.pref, Tensor) else torch.ones(K, dtype=torch.float64)

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        weights, info = config_weights(gramian, self.preference(gramian.shape[0]), self.length, self.eps)
        return WeightingOutput(weights, dict(info))

    def __repr__(self) -> str:
        pref = self.pref if isinstance(self.pref, str) else self.pref.tolist()
        return (
            f"ConFIG(pref={pref!r}, length={self.length!r}, eps={self.eps!r}, "
            f"head_weighting={self.head_weighting!r})"
        )
