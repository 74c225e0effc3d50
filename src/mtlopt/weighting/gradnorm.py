r"""GradNorm: task weights that balance the gradient norms of the tasks on a shared layer.

Zhao Chen, Vijay Badrinarayanan, Chen-Yu Lee and Andrew Rabinovich, "GradNorm: Gradient Normalization
for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018, arXiv:1711.02257.

The model is trained on :math:`\sum_t w_t L_t` with learnable task weights :math:`w_t` (initialized to
1). At every step, on the chosen shared weights W (the paper uses the last shared layer),

.. math::

    G_t = \| \nabla_W (w_t L_t) \| = w_t \|\nabla_W L_t\|, \qquad
    \tilde L_t = \frac{L_t}{L_t(0)}, \qquad
    r_t = \frac{\tilde L_t}{\operatorname{mean}_j \tilde L_j}, \qquad
    L_{\text{grad}} = \sum_t \Big| G_t - \big[\operatorname{mean}_j G_j\big]\, r_t^{\alpha} \Big|,

with the targets :math:`[\operatorname{mean}_j G_j]\, r_t^\alpha` held constant. Since
:math:`G_t = w_t n_t` with :math:`n_t = \|\nabla_W L_t\|`, the gradient is exact without second-order
autograd: :math:`\partial L_{\text{grad}} / \partial w_t = \operatorname{sign}(G_t - \text{target}_t)\,
n_t` (0 where the two are equal, as autograd's ``abs``). Then (Algorithm 1 of the paper)

1. the model update uses the weights :math:`w(t)` *before* this step's change: :meth:`weigh` returns
   them and :func:`mtlopt.backward` backpropagates :math:`\sum_t w_t(t) L_t`;
2. :math:`w` takes one step on :math:`\nabla_w L_{\text{grad}}` of size ``lr``;
3. :math:`w` is clamped to at least ``min_weight`` (a guard: the paper does not say what happens to a
   weight pushed below 0) and renormalized to :math:`\sum_t w_t = K`.

:math:`L_t(0)` is the loss of the first step (the paper's definition), or given with
``initial_losses`` (e.g. :math:`\log C`, the loss of a uniform prediction for a C-class cross-entropy).

Choices the paper leaves open, and how other implementations differ:

- **Step on w** (``optimizer``): Algorithm 1 says only "update :math:`w_i(t)` using
  :math:`\nabla_{w_i} L_{\text{grad}}`", without naming the optimizer. The default ``"adam"`` keeps an
  internal Adam state (float64, the update of ``torch.optim.Adam`` without weight decay): LibMTL steps
  its weights with the model's optimizer, Adam by default, and the PyTorch re-implementations that use
  ``lr=0.025`` use it with Adam. Adam's step is about ``lr`` whatever the scale of the gradients,
  whereas a plain step ``lr · n_t`` depends on their units (with large :math:`n_t` one step pushes a
  weight to the floor). ``"sgd"`` is that plain gradient step (the literal reading; as
  ``lucidrains/gradnorm-pytorch``). The value 0.025 could not be traced to the paper's text.
- **LibMTL** (``median-research-group/LibMTL``, ``LibMTL/weighting/GradNorm.py``) differs in five ways:
  its weights are :math:`K\,\operatorname{softmax}(\theta)` (positive and summing to K without
  clamping) with θ stepped by the model's own optimizer and learning rate; :math:`n_t` is taken over
  *all* shared parameters; the whole first epoch uses equal weights; :math:`L_t(0)` is the first
  epoch's mean training loss; and the task heads get the unweighted :math:`\nabla L_t` (only the shared
  parameters get :math:`\sum_t w_t \nabla L_t`). ``parameters=`` the whole encoder and
  ``initial_losses=`` reproduce the second and the fourth; the others are not options here.

Numerical guards: a zero gradient norm gives :math:`G_t = 0` and no NaN (if every norm is 0 the step
leaves w unchanged); if every loss ratio is 0 the rates are taken as equal (:math:`r_t = 1`);
:math:`L_t(0) \le 0` or a negative loss (:math:`r_t^\alpha` undefined) raises a ``ValueError`` naming
the task; a non-finite gradient norm raises :class:`mtlopt.NonFiniteError`; a task whose loss does not
depend on W raises a ``ValueError``.

GradNorm is a Gramian weighting that reads the Gramian at its own layer (its ``probe``, the balanced
parameters W: :math:`n_t = \sqrt{G_{tt}}`) and updates with the reweighted loss (``update = "loss"``).
So :func:`mtlopt.backward` gives it what it gives every gradient method: the per-task gradients at W
averaged across processes, the losses scaled and the Gramian unscaled under a ``GradScaler`` (a step
that overflows is skipped, and w is not updated), and finite checks that name the task.

Use: ``mtlopt.backward(losses, GradNorm(K, model.encoder.last_layer))`` (the per-task gradients at W,
then one backward pass of :math:`\sum_t w_t L_t`). Total weight: :math:`\sum_t w_t = K`.
``state_dict()`` holds w, :math:`L(0)`, the step count and the Adam moments; ``reset()`` starts over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._checks import as_tensors
from .._options import check_choice
from ._base import GramianWeighting, WeightingOutput, WeightSum

__all__ = ["GradNorm"]

WeightOptimizer = Literal["sgd", "adam"]


class GradNorm(GramianWeighting):
    r"""Gradient-norm balancing task weights (Chen et al. 2018).

    Args:
        num_tasks: K.
        parameters: the shared weights W whose per-task gradient norms are balanced (a module or
            tensors; the paper uses the last shared layer).
        alpha: the asymmetry α (1.5 in the paper's NYUv2 experiments).
        lr: step size of the update of w.
        optimizer: ``"adam"`` (internal Adam state, default) or ``"sgd"`` (plain gradient step).
        betas: Adam's β₁, β₂ (``optimizer="adam"`` only).
        eps: Adam's ε.
        initial_losses: :math:`L_t(0)`, all > 0; None: the losses of the first step.
        min_weight: the floor applied to w before renormalization (> 0).
    """

    min_tasks = 1
    num_tasks: int  # always set: GradNorm is built for K tasks
    update = "loss"
    weight_sum: WeightSum = "K"

    def __init__(
        self,
        num_tasks: int,
        parameters: nn.Module | Iterable[Tensor] | Tensor,
        alpha: float = 1.5,
        lr: float = 0.025,
        *,
        optimizer: WeightOptimizer = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        initial_losses: Sequence[float] | Tensor | None = None,
        min_weight: float = 1e-6,
    ) -> None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"GradNorm num_tasks must be a positive int, got {num_tasks!r}")
        if isinstance(parameters, nn.Module):
            params: list[Tensor] = [p for p in parameters.parameters() if p.requires_grad]
            if not params:
                raise ValueError("GradNorm parameters: the module has no parameter that requires grad")
        else:
            params = as_tensors(parameters, "GradNorm parameters", hint="pass the last shared layer")
        for name, value in (("alpha", alpha), ("lr", lr), ("eps", eps)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"GradNorm {name} must be finite and >= 0, got {value}")
        check_choice("GradNorm", "optimizer", optimizer, WeightOptimizer)
        if optimizer == "adam" and eps == 0:
            raise ValueError(
                "GradNorm eps must be > 0 with optimizer='adam' (a zero gradient would give 0/0)"
            )
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"GradNorm betas must be two values in [0, 1), got {betas}")
        if not (math.isfinite(min_weight) and 0.0 < min_weight < 1.0):
            raise ValueError(f"GradNorm min_weight must be in (0, 1), got {min_weight}")
        self.num_tasks = num_tasks
        self.balanced_params = params
        self.probe = params  # where mtlopt.backward takes the per-task gradients for this method
        self.alpha = float(alpha)
        self.lr = float(lr)
        self.optimizer: WeightOptimizer = optimizer
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.min_weight = float(min_weight)
        self._given_initial = None if initial_losses is None else self._check_initial(initial_losses)
        self.reset()

    # -- state ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Weights back to 1, :math:`L(0)` forgotten (or back to ``initial_losses``), Adam state cleared."""
        K = self.num_tasks
        self.weights = torch.ones(K, dtype=torch.float64)
        self.initial_losses: Tensor | None = (
            None if self._given_initial is None else self._given_initial.clone()
        )
        self.step_count = 0
        self.exp_avg = torch.zeros(K, dtype=torch.float64)
        self.exp_avg_sq = torch.zeros(K, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.clone(),
            "initial_losses": None if self.initial_losses is None else self.initial_losses.clone(),
            "step": self.step_count,
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"weights", "initial_losses", "step", "exp_avg", "exp_avg_sq"}
        if set(state) != expected:
            raise ValueError(f"GradNorm state must have keys {sorted(expected)}, got {sorted(state)}")
        K = self.num_tasks
        tensors = {}
        for key in ("weights", "exp_avg", "exp_avg_sq"):
            value = torch.as_tensor(state[key]).to("cpu", torch.float64)
            if value.shape != (K,):
                raise ValueError(f"GradNorm state {key!r} has shape {tuple(value.shape)}, expected ({K},)")
            tensors[key] = value.clone()
        initial = state["initial_losses"]
        self.initial_losses = None if initial is None else self._check_initial(initial)
        self.weights = tensors["weights"]
        self.exp_avg = tensors["exp_avg"]
        self.exp_avg_sq = tensors["exp_avg_sq"]
        self.step_count = int(state["step"])

    # -- the method -------------------------------------------------------------------------------

    def weigh(self, gramian: Tensor, losses: Tensor) -> WeightingOutput:
        """The weights of this step (w before the update), then one step of w on :math:`L_{\\text{grad}}`.

        ``gramian``: the Gramian of the task gradients at the balanced parameters;
        :math:`n_t = \\sqrt{G_{tt}}`.
        """
        K = self.num_tasks
        negative = [t for t in range(K) if losses[t] < 0]
        if negative:
            raise ValueError(
                f"GradNorm needs non-negative losses (the rate r_t**alpha); task(s) {negative} have "
                f"{[float(losses[t]) for t in negative]}"
            )
        if self.initial_losses is None:
            self.initial_losses = self._check_initial(losses, when="at the first step")
        norms = gramian.diagonal().clamp_min(0.0).sqrt()
        used = self.weights.clone()
        G = used * norms
        ratios = losses / self.initial_losses
        mean_ratio = ratios.mean()
        rates = ratios / mean_ratio if mean_ratio > 0 else torch.ones(K, dtype=torch.float64)
        targets = G.mean() * rates.pow(self.alpha)
        gradnorm_loss = (G - targets).abs().sum()
        self._update(torch.sign(G - targets) * norms)
        return WeightingOutput(
            used, {"gradnorm_loss": float(gradnorm_loss), "mean_grad_norm": float(G.mean())}
        )

    def _update(self, grad: Tensor) -> None:
        self.step_count += 1
        if self.optimizer == "sgd":
            w = self.weights - self.lr * grad
        else:  # Adam, as torch.optim.Adam (no weight decay), in float64
            beta1, beta2 = self.betas
            self.exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias1 = 1 - beta1**self.step_count
            bias2 = 1 - beta2**self.step_count
            denom = self.exp_avg_sq.sqrt() / math.sqrt(bias2) + self.eps
            w = self.weights - (self.lr / bias1) * self.exp_avg / denom
        w = w.clamp_min(self.min_weight)
        self.weights = w * (self.num_tasks / w.sum())

    def _check_initial(self, values: Sequence[float] | Tensor, when: str = "") -> Tensor:
        initial = torch.as_tensor(values).detach().to("cpu", torch.float64).clone()
        if initial.shape != (self.num_tasks,):
            raise ValueError(
                f"GradNorm initial_losses has shape {tuple(initial.shape)}, expected ({self.num_tasks},)"
            )
        bad = [t for t in range(self.num_tasks) if not (initial[t] > 0 and math.isfinite(float(initial[t])))]
        if bad:
            where = f" {when}" if when else ""
            raise ValueError(
                f"GradNorm divides by the initial loss L_t(0), but it is not a positive finite number for "
                f"task(s) {bad}{where} ({[float(initial[t]) for t in bad]}); pass initial_losses=... "
                "(e.g. log C for a C-class cross-entropy)"
            )
        return initial

    def __repr__(self) -> str:
        return (
            f"GradNorm(num_tasks={self.num_tasks}, alpha={self.alpha}, lr={self.lr}, "
            f"optimizer={self.optimizer!r})"
        )
