r"""GradVac: gradient vaccine, cosine targets tracked by an EMA, as task weights from the Gramian.

Zirui Wang, Yulia Tsvetkov, Orhan Firat and Yuan Cao, "Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models", ICLR 2021, arXiv:2010.05874. No official
code was found; the references are LibMTL's ``GradVac.py`` and TorchJD's ``GradVacWeighting``.

For each task i, :math:`g_i' = g_i`; for the other tasks j in a random order, with
:math:`\phi = \cos(g_i', g_j) = g_i'^\top g_j / (\|g_i'\|\|g_j\| + \epsilon)` and the target
:math:`\hat\phi_{ij}`: if :math:`\phi < \hat\phi_{ij}`,

.. math::

    g_i' \leftarrow g_i' + \frac{\|g_i'\|\,\big(\hat\phi_{ij}\sqrt{1-\phi^2} - \phi\sqrt{1-\hat\phi_{ij}^2}\big)}
                               {\|g_j\|\sqrt{1-\hat\phi_{ij}^2} + \epsilon}\; g_j ,

(which raises the cosine to the target), and in every case :math:`\hat\phi_{ij} \leftarrow
(1-\beta)\hat\phi_{ij} + \beta\phi`, with φ measured before the correction. The update is
:math:`\sum_i g_i'`. As in :class:`~mtlopt.PCGrad`, each :math:`g_i' = \sum_k C_{ik} g_k` (C starts as
the identity, a correction adds its coefficient to :math:`C_{ij}`), :math:`g_i'^\top g_j = (C G)_{ij}`
and :math:`\|g_i'\|^2 = (C G C^\top)_{ii}`, so the method runs on the K×K Gramian and the task weights
are :math:`w_k = \sum_i C_{ik}`. Every correction coefficient is :math:`\ge 0` (it is
:math:`\sin(\theta - \hat\theta)` times positive factors), so :math:`\sum_k w_k \ge K`: exactly K until
the first correction.

**State:** the K×K targets :math:`\hat\phi` (zero at the start and after :meth:`~GradVac.reset`) and
the ``torch.Generator`` of the orders (seeded by ``seed``), both in :meth:`~GradVac.state_dict`, so a
resumed run continues exactly. The orders: at every step, for i = 0, …, K−1,
``torch.randperm(K - 1, generator=g)`` permutes the other tasks listed in index order. TorchJD draws
the same permutations from torch's global generator: ``torch.manual_seed(s)`` before it and
``GradVac(seed=s)`` visit the tasks in the same orders.

**Parameter groups.** The paper and LibMTL can keep one set of targets per group of parameters
(LibMTL ``GradVac_group_type``: 0 the whole model, 1 each layer, 2 each tensor); each group then gets
its own weights. ``groups="whole-model"`` (LibMTL's type 0, the default): one Gramian of all the shared
parameters, one K×K target matrix. ``groups="layer"`` (type 1: one group per module that owns shared
parameters, from ``shared_params=module``'s parameter names) and ``"tensor"`` (type 2: one per
parameter tensor): :func:`mtlopt.backward` forms one Gramian per group, :meth:`weigh_groups` corrects
each group with its own targets (held as a groups×K×K tensor), and each group's parameters get
:math:`\sum_k w^{(g)}_k g^{(g)}_k`. As in LibMTL, the visiting orders are drawn once per step and shared
by the groups. The result's ``weights`` are then the mean over groups (each group's are in
``diagnostics["group_weights"]``).
Use it with ``shared_params=`` (``mtlopt.backward(losses, GradVac(), shared_params=encoder)``); with
``features=`` it would act on representation gradients, which is not GradVac (LibMTL refuses
``rep_grad`` for it).

Deviations from the references, on purpose: :math:`1-\phi^2` and :math:`1-\hat\phi^2` are clamped at 0
(as TorchJD; LibMTL can take the root of a rounding-negative number), and a task with
:math:`g_j = 0` is never corrected towards (the references add an arbitrarily large multiple of the
zero vector, which leaves d unchanged but puts a weight of order :math:`\|g_i'\|/\epsilon` on task j).

Options:

=================  ==================================  ===============================================
option             default                             alternatives
=================  ==================================  ===============================================
``beta``           0.5 (LibMTL, TorchJD)               any value in [0, 1]
``eps``            1e-8 in both denominators (LibMTL   0 (exact cosines, scale-invariant; a zero norm
                   HEAD, TorchJD)                      then gives φ = 0)
``target_update``  ``"always"`` (paper, LibMTL HEAD,   ``"on-correction"``: only when a correction was
                   TorchJD)                            made (LibMTL 1.1.5 on PyPI, with ``eps=0``)
``groups``         ``"whole-model"`` (LibMTL's type    ``"layer"`` (type 1), ``"tensor"`` (type 2):
                   0)                                  see above
``head_weighting`` ``"unweighted"``: head t gets       ``"weighted"``: :math:`w_t \nabla L_t`
                   :math:`\nabla L_t` (LibMTL)
=================  ==================================  ===============================================

Diagnostics: the number of corrections this step and the mean target.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ._base import GramianWeighting, Groups, HeadWeighting, WeightingOutput, WeightSum, check_method_options
from ._state import held_state

__all__ = ["GradVac"]

TargetUpdate = Literal["always", "on-correction"]
_STATE_KEYS = {"generator", "targets"}


class GradVac(GramianWeighting):
    """Gradient vaccine (Wang et al. 2021) on the Gramian of the shared parameters.

    Args:
        beta: EMA rate of the cosine targets.
        eps: added to the denominators of the cosine and of the correction.
        seed: seed of the generator of the task orders.
        target_update: ``"always"`` (paper) or ``"on-correction"`` (LibMTL 1.1.5).
        groups: ``"whole-model"`` (one Gramian, one target matrix), ``"layer"`` or ``"tensor"`` (one per
            module or parameter tensor of ``shared_params``; see above).
        head_weighting: ``"unweighted"`` (LibMTL) or ``"weighted"``.
    """

    min_tasks = 1
    weight_sum: WeightSum = "K"

    def __init__(
        self,
        beta: float = 0.5,
        eps: float = 1e-8,
        seed: int = 0,
        *,
        target_update: TargetUpdate = "always",
        groups: Groups = "whole-model",
        head_weighting: HeadWeighting = "unweighted",
    ) -> None:
        check_method_options(
            self,
            target_update=(target_update, TargetUpdate),
            groups=(groups, Groups),
            head_weighting=(head_weighting, HeadWeighting),
        )
        if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
            raise ValueError(f"GradVac beta must be a number in [0, 1]; got {beta!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0.0 and eps < float("inf")):
            raise ValueError(f"GradVac eps must be a finite number >= 0; got {eps!r}")
        self.beta = float(beta)
        self.eps = float(eps)
        self.seed = int(seed)
        self.target_update: TargetUpdate = target_update
        self.groups: Groups = groups
        self.head_weighting = head_weighting
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)
        self.targets: Tensor | None = None  # φ̂, K×K float64, created at the first step

    def reset(self) -> None:
        """Zero the targets (forget them) and reseed the generator of the orders."""
        self.targets = None
        self.generator.manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        targets = None if self.targets is None else self.targets.clone()
        return {"generator": self.generator.get_state(), "targets": targets}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != _STATE_KEYS:
            raise ValueError(f"GradVac state must have the keys {sorted(_STATE_KEYS)}, got {sorted(state)}")
        targets = state["targets"]
        if targets is not None:
            targets = torch.as_tensor(targets).detach().to("cpu", torch.float64).clone()
            if targets.ndim not in (2, 3) or targets.shape[-1] != targets.shape[-2]:
                raise ValueError(
                    f"GradVac targets must be K×K (or groups×K×K), got shape {tuple(targets.shape)}"
                )
        self.generator.set_state(state["generator"])
        self.targets = targets

    def orders(self, K: int) -> list[list[int]]:
        """The visiting order of the other tasks j for each task i (draws from the generator)."""
        result = []
        for i in range(K):
            others = [j for j in range(K) if j != i]
            perm = torch.randperm(len(others), generator=self.generator).tolist()
            result.append([others[p] for p in perm])
        return result

    def coefficients(self, gramian: Tensor, orders: list[list[int]], targets: Tensor) -> tuple[Tensor, int]:
        r"""C with :math:`g_i' = \sum_k C_{ik} g_k` for given orders; updates ``targets`` in place."""
        G = gramian.detach().to("cpu", torch.float64)
        K = G.shape[0]
        Gl = G.tolist()
        norms = [max(Gl[j][j], 0.0) ** 0.5 for j in range(K)]
        C = torch.eye(K, dtype=torch.float64)
        T = targets.tolist()
        corrections = 0
        for i in range(K):
            cG = list(Gl[i])  # (C_i G)_j = g_i'·g_j; C_i = e_i at the start
            norm_i_sq = Gl[i][i]
            c_row = [0.0] * K
            c_row[i] = 1.0
            for j in orders[i]:
                norm_i = max(norm_i_sq, 0.0) ** 0.5
                denom = norm_i * norms[j] + self.eps
                phi = cG[j] / denom if denom > 0 else 0.0
                hat = T[i][j]
                corrected = False
                if phi < hat and norms[j] > 0:
                    root_phi = max(1.0 - phi * phi, 0.0) ** 0.5
                    root_hat = max(1.0 - hat * hat, 0.0) ** 0.5
                    denom_w = norms[j] * root_hat + self.eps
                    if denom_w > 0:
                        w = norm_i * (hat * root_phi - phi * root_hat) / denom_w
                        # ‖g_i' + w g_j‖² = ‖g_i'‖² + 2w g_i'·g_j + w²‖g_j‖²
                        norm_i_sq = norm_i_sq + 2.0 * w * cG[j] + w * w * Gl[j][j]
                        c_row[j] += w
                        cG = [cG[k] + w * Gl[j][k] for k in range(K)]
                        corrections += 1
                        corrected = True
                if self.target_update == "always" or corrected:
                    T[i][j] = (1.0 - self.beta) * hat + self.beta * phi
            C[i] = torch.tensor(c_row, dtype=torch.float64)
        targets.copy_(torch.tensor(T, dtype=torch.float64))
        return C, corrections

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        K = gramian.shape[0]
        start = torch.zeros(K, K, dtype=torch.float64)
        self.targets = held_state(self, self.targets, (K, K), "targets", start)
        C, corrections = self.coefficients(gramian, self.orders(K), self.targets)
        weights = C.sum(dim=0)
        off = ~torch.eye(K, dtype=torch.bool)
        mean_target = float(self.targets[off].mean()) if K > 1 else 0.0
        return WeightingOutput(weights, {"corrections": corrections, "mean_target": mean_target})

    def weigh_groups(self, gramians: list[Tensor], losses: Tensor) -> WeightingOutput:
        K, m = gramians[0].shape[0], len(gramians)
        start = torch.zeros(m, K, K, dtype=torch.float64)
        self.targets = held_state(self, self.targets, (m, K, K), "targets", start)
        orders = self.orders(K)  # one draw per step, shared by the groups (LibMTL)
        rows, corrections = [], 0
        for k, G in enumerate(gramians):
            C, count = self.coefficients(G, orders, self.targets[k])  # updates the group's targets
            rows.append(C.sum(dim=0))
            corrections += count
        off = ~torch.eye(K, dtype=torch.bool).expand(m, K, K)
        mean_target = float(self.targets[off].mean()) if K > 1 else 0.0
        return WeightingOutput(
            torch.stack(rows), {"corrections": corrections, "mean_target": mean_target, "groups": m}
        )

    def __repr__(self) -> str:
        return (
            f"GradVac(beta={self.beta!r}, eps={self.eps!r}, seed={self.seed}, "
            f"target_update={self.target_update!r}, groups={self.groups!r}, "
            f"head_weighting={self.head_weighting!r})"
        )
