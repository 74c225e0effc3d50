r"""SDMGrad: stochastic direction-oriented multi-objective gradient descent (double sampling).

Peiyao Xiao, Hao Ban and Kaiyi Ji, "Direction-oriented Multi-objective Learning: Simple and Provable
Stochastic Algorithms", NeurIPS 2023 (arXiv:2305.18409). Official code: OptMN-Lab/sdmgrad
``methods/weight_methods.py::SDMGrad``; LibMTL has ``SDMGrad``; TorchJD ``SDMGradWeighting`` (on a
given matrix).

The direction is kept near a target direction, the mean gradient :math:`\bar g = J^\top\tilde w`
(:math:`\tilde w = 1/K`): :math:`\min_{w\in\Delta} \tfrac12\|J^\top(w + \lambda\tilde w)\|^2`. Per step,
with independent batches ξ, ξ′ (the weights) and ζ (the update) and their per-task Jacobians w.r.t. the
shared parameters:

.. math::

    A = \frac{J_\xi J_{\xi'}^\top}{s^2 + 10^{-8}}, \quad
    s = \operatorname{mean}_t \sqrt{\max(A_{tt}, 0)}, \qquad
    v \leftarrow \mu v + A(w + \lambda\tilde w), \quad w \leftarrow \Pi_\Delta(w - \eta v)
    \ \ (n \text{ times}), \qquad
    d = J_\zeta^\top c, \quad c = \frac{w + \lambda\tilde w}{1 + \lambda},

v restarted at 0 every step (a fresh SGD with momentum μ), w warm-started across steps (from 1/K),
:math:`\Pi_\Delta` the Euclidean projection onto the simplex (float64). :math:`A(w+\lambda\tilde w)` is
an unbiased estimate (up to the scale s) of the gradient of the objective above. The update needs no
Jacobian of ζ: one backward pass of :math:`\sum_t c_t L_t(\zeta)`. Batch 0 (``losses`` of
:func:`mtlopt.backward`) is ζ, batches 1 and 2 (``extra_losses``) are ξ and ξ′, as in LibMTL.

The weights are c (Σc = 1, ``weight_sum = "1"``; λ → ∞ gives EW's mean, λ = 0 a stochastic MGDA);
``weight_scale="num-tasks"`` multiplies them by K (the official code's "to match the sum loss").

==================  =========================================  ========================================
choice              here (default)                             peers
==================  =========================================  ========================================
``lambda_``         0.3 (official ``run.sh``, LibMTL,          official class default 0.6
                    TorchJD)
``n_iter``          20 (official, LibMTL, TorchJD)
``lr``,             10, 0.5 (official, TorchJD)                LibMTL lr 5
``momentum``
``scale``           ``"clamp"``: :math:`\max(A_{tt}, 0)`,      ``"official"``: :math:`s = \operatorname
                    :math:`s^2 + 10^{-8}` (LibMTL, TorchJD)    {mean}_t\sqrt{A_{tt} + 10^{-4}}`, A/s²
                                                               (NaN for a cross-Gramian with
                                                               :math:`A_{tt} < -10^{-4}`)
``weight_scale``    ``"one"``                                  ``"num-tasks"`` (official ×K)
``head_batches``    ``"update"``: heads get ζ's gradients      ``"all"`` with ``reduction="sum"``:
                                                               the sum over ζ, ξ, ξ′ (official, LibMTL:
                                                               their per-task backward passes)
``head_weighting``  ``"unweighted"`` (official, LibMTL)        ``"weighted"``: :math:`c_t\nabla L_t`
==================  =========================================  ========================================

**Official bug** (not reproduced): its three gradient buffers are one tensor repeated, so A is the last
batch's own Gramian and the update uses that batch, not ζ: the double sampling is lost. The official
code also clips the shared gradient to norm 1 (its ``max_norm``, in the base class of the FAMO
codebase for every method): a recipe setting, not offered here. Only ``shared_params=`` (as MoDo).
State: w (float64) and the step; :meth:`reset` restores w = 1/K. Diagnostics: ``step``, ``scale`` (s),
``objective`` (:math:`\tfrac12 (w+\lambda\tilde w)^\top A (w+\lambda\tilde w)` after the inner loop,
normalized A).

**SDMGrad-OS** (objective sampling, ``objectives=n``; the paper's variant for many tasks): each step
reads the gradients of a random subset S of the tasks only. As in the official code
(``mtrl_files/sdmgrad.py::sdmgrad_os``, MT10 with n = 4), every task enters S independently with
probability n/K, the draw repeated until S is non-empty; the rows and columns of A outside S are
zero (s still averages over all K, zeros included), and the update is

.. math::

    c_t = \frac{K}{n}\,\frac{w_t + \lambda/K}{1 + \lambda} \ (t \in S), \qquad c_t = 0 \ (t \notin S),

for a fixed w an unbiased estimate of the full update (but for the redraw of an empty S). :func:`mtlopt.backward` computes the
per-task gradients of the cross-Gramian's batches for S only (:meth:`sampled_tasks`), so a step costs
about |S| instead of K backward passes there. The draws come from the method's own generator (seeded by
``seed``, saved in the state), so every rank of a ``torchrun`` job draws the same S. The sampling rule
is the official code's: the paper's text was not available to check it against. With ``objectives=K``
every task is drawn and the rule is the full one. The weights then sum to a random total
(``weight_sum = "data-dependent"``); the heads follow ``head_weighting`` (the official model has none).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ._base import (
    BatchReduction,
    GramianWeighting,
    HeadWeighting,
    WeightingOutput,
    WeightSum,
    check_method_options,
)
from ._state import check_state_keys, copied, projection_simplex, simplex_start
from .modo import HeadBatches, check_rate, roles_of

__all__ = ["SDMGrad"]

Scale = Literal["clamp", "official"]
WeightScale = Literal["one", "num-tasks"]
_KEYS = {"w", "step"}
_SAMPLING_KEYS = {"seed", "generator"}


class SDMGrad(GramianWeighting):
    """SDMGrad (Xiao et al. 2023); see the module docstring for the rule and the options.

    Args:
        lambda_: pull λ towards the mean gradient (0: stochastic MGDA; large: EW).
        n_iter: inner projected-SGD iterations on w per step.
        lr: the inner SGD's step size.
        momentum: the inner SGD's momentum.
        scale: ``"clamp"`` or ``"official"`` normalization of A.
        weight_scale: ``"one"`` (Σc = 1) or ``"num-tasks"`` (×K).
        reduction: how the update batches' gradients are combined (``"mean"`` or ``"sum"``).
        head_batches: the batches the heads' gradients are taken on.
        head_weighting: heads get :math:`\\nabla L_t` (``"unweighted"``) or :math:`c_t \\nabla L_t`.
        objectives: SDMGrad-OS: the expected number n of tasks sampled per step (None: every task).
        seed: the seed of the task sampling's generator (with ``objectives``); :meth:`reset` restarts it.
    """

    def __init__(
        self,
        lambda_: float = 0.3,
        n_iter: int = 20,
        lr: float = 10.0,
        momentum: float = 0.5,
        *,
        scale: Scale = "clamp",
        weight_scale: WeightScale = "one",
        reduction: BatchReduction = "mean",
        head_batches: HeadBatches = "update",
        head_weighting: HeadWeighting = "unweighted",
        objectives: int | None = None,
        seed: int = 0,
    ) -> None:
        check_method_options(
            self,
            scale=(scale, Scale),
            weight_scale=(weight_scale, WeightScale),
            reduction=(reduction, BatchReduction),
            head_batches=(head_batches, HeadBatches),
            head_weighting=(head_weighting, HeadWeighting),
        )
        self.lambda_ = check_rate("SDMGrad", "lambda_", lambda_, nonnegative=True)
        if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 1:
            raise ValueError(f"SDMGrad n_iter must be an integer >= 1, got {n_iter!r}")
        self.n_iter = n_iter
        self.lr = check_rate("SDMGrad", "lr", lr)
        self.momentum = check_rate("SDMGrad", "momentum", momentum, nonnegative=True)
        if self.momentum >= 1:
            raise ValueError(f"SDMGrad momentum must be in [0, 1), got {momentum!r}")
        self.scale = scale
        self.weight_scale = weight_scale
        self.reduction = reduction
        self.head_batches = head_batches
        self.head_weighting = head_weighting
        self.batch_roles = roles_of((1, 2), (0,), head_batches, 3, reduction)
        if objectives is not None and (
            isinstance(objectives, bool) or not isinstance(objectives, int) or objectives < 1
        ):
            raise ValueError(f"SDMGrad objectives must be None or an integer >= 1, got {objectives!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"SDMGrad seed must be an int >= 0, got {seed!r}")
        self.objectives = objectives
        self.seed = seed
        self.reset()

    @property
    def weight_sum(self) -> WeightSum:  # type: ignore[override]
        """1 (every task read); with ``objectives``, the random total of the sampled tasks' weights."""
        return "1" if self.objectives is None else "data-dependent"

    def reset(self) -> None:
        """w = 1/K again, the step count and (with ``objectives``) the generator restarted."""
        self.w: Tensor | None = None
        self.step = 0
        self.generator = torch.Generator(device="cpu").manual_seed(self.seed)
        self._drawn: list[int] | None = None

    def sampled_tasks(self, num_tasks: int) -> list[int] | None:
        """With ``objectives``: draw this step's tasks S (held for :meth:`weigh`); None: every task."""
        if self.objectives is None:
            return None
        self._drawn = self._draw(num_tasks)
        return self._drawn

    def _draw(self, num_tasks: int) -> list[int]:
        if self.objectives is None or self.objectives > num_tasks:
            raise ValueError(
                f"SDMGrad objectives must be at most the number of tasks {num_tasks}, got {self.objectives!r}"
            )
        p = self.objectives / num_tasks
        while True:  # the official rule: independent draws, repeated until one task is drawn
            drawn = torch.rand(num_tasks, generator=self.generator, dtype=torch.float64) < p
            if bool(drawn.any()):
                return drawn.nonzero().flatten().tolist()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"w": copied(self.w), "step": self.step}
        if self.objectives is not None:
            state.update(seed=self.seed, generator=self.generator.get_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(self, state, _KEYS if self.objectives is None else _KEYS | _SAMPLING_KEYS)
        self.w = copied(state["w"])
        self.step = int(state["step"])
        self._drawn = None
        if self.objectives is not None:
            self.seed = int(state["seed"])
            self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        K = gramian.shape[0]
        self.w = simplex_start(self, self.w, K, "w")
        drawn: Tensor | None = None
        if self.objectives is not None:  # the tasks sampled_tasks drew, or a draw now
            drawn = torch.zeros(K, dtype=torch.float64)
            drawn[self._drawn if self._drawn is not None else self._draw(K)] = 1.0
            self._drawn = None
            gramian = gramian * drawn[:, None] * drawn[None, :]
        diag = gramian.diagonal()
        if self.scale == "clamp":
            s = float(diag.clamp(min=0).sqrt().mean())
            A = gramian / (s**2 + 1e-8)
        else:
            s = float((diag + 1e-4).sqrt().mean())
            A = gramian / s**2
        target = torch.full((K,), self.lambda_ / K, dtype=torch.float64)  # λ w̃
        w = self.w
        velocity: Tensor | None = None
        for _ in range(self.n_iter):
            grad = A @ (w + target)
            velocity = grad if velocity is None else self.momentum * velocity + grad
            w = projection_simplex(w - self.lr * velocity)
        self.w = w
        self.step += 1
        c = (w + target) / (1.0 + self.lambda_)
        if self.weight_scale == "num-tasks":
            c = c * K
        u = w + target
        diagnostics: dict[str, Any] = {"step": self.step, "scale": s, "objective": float(0.5 * u @ A @ u)}
        if drawn is not None:
            assert self.objectives is not None
            c = c * drawn * (K / self.objectives)
            diagnostics["sampled_tasks"] = drawn.nonzero().flatten().tolist()
        return WeightingOutput(c, diagnostics)
