r"""GradDrop: gradient sign dropout, each task's gradient kept only where its sign wins a draw.

Zhao Chen, Jiquan Ngiam, Yanping Huang, Thang Luong, Henrik Kretzschmar, Yuning Chai and Dragomir
Anguelov, "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS
2020, arXiv:2010.06808. No official code found; LibMTL has ``GradDrop`` (at the representation,
``rep_grad=True``), TorchJD ``GradDrop`` (an aggregator of the Jacobian: the parameter variant).

Algorithm 1, at an activation A (``level="features"``: A = Z, the shared representation passed as
``features=``, of shape (B, ...)): with the per-task gradients :math:`\nabla_A L_i`, per element of A's
non-batch shape

.. math::

    s_i = \sum_{b} \operatorname{sign}(A_b) \odot \nabla_{A_b} L_i, \qquad
    \mathcal P = \tfrac12\Big(1 + \frac{\sum_i s_i}{\sum_i |s_i| + \epsilon}\Big), \qquad
    U \sim \mathcal U(0, 1),

    M_i = \mathbb 1[f(\mathcal P) > U]\,\mathbb 1[s_i > 0] + \mathbb 1[f(\mathcal P) < U]\,\mathbb 1[s_i < 0],

and Z receives :math:`\sum_i (\ell_i + (1-\ell_i) M_i) \odot \nabla_{A} L_i` (the masks broadcast over
the batch), backpropagated once through the encoder; the heads get :math:`\nabla L_i` unweighted
(LibMTL: one backward per task through the heads). ``level="parameters"``: the same rule on each
coordinate of the Jacobian w.r.t. ``shared_params=`` (:math:`s_i = g_i`, no sign of A): the shared
update is :math:`\sum_i (\ell_i + (1-\ell_i)M_i)\odot g_i` (TorchJD; the CAGrad / FAMO codes' mean ×K).
U is drawn from the method's own seeded ``torch.Generator`` (float64, CPU), kept in
:meth:`state_dict`, so that a resumed run and every process draw the same U. Under several processes
:math:`s` is the global batch's (the ranks' sums averaged: each rank's losses are means over its share).
Where every :math:`s_i = 0` the purity is ½ (no gradient there to keep or drop).

=================  ==========================================  ======================================
choice             here (default)                               peers
=================  ==========================================  ======================================
``level``          ``"features"`` (paper; LibMTL requires       ``"parameters"``: J's coordinates, no
                   ``rep_grad=True``)                           sign(A) (TorchJD, CAGrad/FAMO codes)
``leak`` ℓ         0 (LibMTL ``leak``, TorchJD ``leak=None``)   a float, or one per task
``f``              identity                                     any monotone map of the purity
``purity_eps`` ε   0 (the paper's purity)                       1e-7 (LibMTL)
``seed``           0                                            LibMTL: ``torch.rand_like``, TorchJD:
                                                                ``torch.rand`` (the global RNG)
=================  ==========================================  ======================================

``weight_sum = "K"``: a masked sum; on K identical tasks every mask keeps everything and the update is
K times the gradient. The reported weights are ones (``weights_on_gradients = False``: the masks act
per element); ``weight_total`` divides the update by K / weight_total. State: the generator; :meth:`reset`
re-seeds it. Diagnostics: ``kept`` (the fraction of elements each task keeps), ``purity_mean``;
:func:`mtlopt.backward` adds ``weight_sum`` and ``direction_norm``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ._base import DirectionMethod, DirectionOutput, HeadWeighting, WeightSum, check_method_options
from ._state import check_state_keys

__all__ = ["GradDrop"]

Level = Literal["features", "parameters"]


def _identity(purity: Tensor) -> Tensor:
    return purity


class GradDrop(DirectionMethod):
    """GradDrop (Chen et al. 2020); see the module docstring for the rule and the options."""

    weight_sum: WeightSum = "K"
    weights_on_gradients = False
    head_weighting: HeadWeighting = "unweighted"

    def __init__(
        self,
        level: Level = "features",
        *,
        leak: float | Sequence[float] = 0.0,
        f: Callable[[Tensor], Tensor] = _identity,
        purity_eps: float = 0.0,
        seed: int = 0,
    ) -> None:
        check_method_options(self, level=(level, Level))
        values = [leak] if isinstance(leak, (int, float)) else list(leak)
        if not values or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values):
            raise ValueError(f"GradDrop leak must be a number in [0, 1] or one per task, got {leak!r}")
        if not (isinstance(purity_eps, (int, float)) and 0 <= purity_eps < float("inf")):
            raise ValueError(f"GradDrop purity_eps must be a finite number >= 0, got {purity_eps!r}")
        if not callable(f):
            raise TypeError(f"GradDrop f must be a callable of the purity tensor, got {type(f).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"GradDrop seed must be an integer, got {seed!r}")
        self.level = level
        self.reads = level
        self.leak = torch.tensor(values, dtype=torch.float64)
        if not isinstance(leak, (int, float)):
            self.num_tasks = len(values)
            self.num_tasks_source = "has {n} leak values (tasks)"  # type: ignore[misc]
        self.f = f
        self.purity_eps = float(purity_eps)
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(self, state, {"generator"})
        self.generator.set_state(state["generator"].clone())

    def masks(self, signed: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """The (K, ...) masks ``ℓ + (1 − ℓ) M`` from the (K, ...) signed gradients s (one draw of U)."""
        total, absolute = signed.sum(dim=0), signed.abs().sum(dim=0) + self.purity_eps
        ratio = torch.where(absolute > 0, total / torch.where(absolute > 0, absolute, 1.0), 0.0)
        purity = 0.5 * (1 + ratio)
        fp = self.f(purity)
        U = torch.rand(purity.shape, generator=self.generator, dtype=torch.float64)
        U = U.to(purity.device, purity.dtype)
        keep = (fp > U) & (signed > 0) | (fp < U) & (signed < 0)
        leak = self.leak.to(signed.device, signed.dtype).expand(signed.shape[0])
        leak = leak.reshape(-1, *([1] * (signed.ndim - 1)))
        mask = leak + (1 - leak) * keep.to(signed.dtype)
        kept = keep.reshape(keep.shape[0], -1).to(torch.float64).mean(dim=1)
        return mask, {"kept": kept.tolist(), "purity_mean": float(purity.mean())}

    def direct(self, jacobian: Tensor, losses: Tensor) -> DirectionOutput:
        if self.level != "parameters":
            raise ValueError(
                "GradDrop(level='features') reads the gradients w.r.t. the representation: pass features=... "
                "to mtlopt.backward, or build GradDrop(level='parameters') for a Jacobian"
            )
        mask, diagnostics = self.masks(jacobian)
        direction = (mask * jacobian).sum(dim=0)
        return DirectionOutput(direction, torch.ones(jacobian.shape[0], dtype=torch.float64), diagnostics)

    def direct_features(
        self, grads: Tensor, features: Tensor, losses: Tensor, reduce: Callable[[Tensor], Tensor]
    ) -> DirectionOutput:
        K = grads.shape[0]
        self.check_num_tasks(K)
        signed = reduce((grads * features.sign().to(grads.dtype)).sum(dim=1))
        mask, diagnostics = self.masks(signed)
        direction = (mask.unsqueeze(1) * grads).sum(dim=0)
        return DirectionOutput(direction, torch.ones(K, dtype=torch.float64), diagnostics)
