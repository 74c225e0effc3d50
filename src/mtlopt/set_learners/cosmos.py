r"""COSMOS: one network conditioned on the preference through its input, with a cosine penalty.

Michael Ruchte and Josif Grabocka, "Scalable Pareto Front Approximation for Deep Multi-Objective
Learning", ICDM 2021; official code ``ruchtem/cosmos`` (``multi_objective/methods/cosmos/cosmos.py``,
``multi_objective/settings.py``).

The preference ray :math:`r \sim \mathrm{Dir}(\alpha)`, drawn every step, is appended to every input
:math:`x` of the batch; the network :math:`f([x, r]; \theta)` is trained on

.. math::

    \sum_t r_t L_t(\theta; r) \;-\; \lambda\, \cos\big(L(\theta; r),\, r\big),
    \qquad \cos(u, v) = \frac{u^\top v}{\|u\|\,\|v\|},

the linear scalarization plus a penalty pulling the loss vector toward the ray, which lets points on
non-convex parts of the front be reached. At test time one forward pass per ray, with that ray appended.

=========================  ===================  ====================================================
choice                     default              official code
=========================  ===================  ====================================================
λ (``penalty``)            2.0                  2 (Multi-MNIST / Fashion; 8 on Fashion+MNIST, 0.01
                                                on the fairness data sets, 3 on CelebA)
Dirichlet α                1.2                  1.2 (Multi-MNIST; 0.5 or [0.1, 0.5] fairness; 1 CelebA)
conditioning               ray appended         tabular: appended features; images: a learned
                                                transposed-CNN "upsampler" to K extra channels
optimizer (yours)          —                    Adam, lr 1e-3, 100 epochs, batch 256
test rays                  25 (two tasks)       25, angles in [0.1, π/2 − 0.1]
=========================  ===================  ====================================================

:class:`PreferenceInput` appends the ray as K extra features (2-D inputs) or K constant channels
(inputs with spatial dimensions); the official image upsampler is not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..distributed import Sync, all_reduce_mean_, resolve_group
from ._rays import RaySampler
from .hypernetwork import SetStepResult, _accumulate, _check_losses, _check_ray, _grads

__all__ = ["COSMOS", "PreferenceInput"]


class PreferenceInput(nn.Module):
    """``model([x, r])``: the ray r (K,) appended to every sample of x along dimension 1.

    ``model`` is your network, whose first layer takes K more input features (or channels); it is a
    submodule here (trained as it is, not copied).
    """

    def __init__(self, model: nn.Module, num_tasks: int) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 2:
            raise ValueError(f"PreferenceInput needs an integer num_tasks >= 2, got {num_tasks!r}")
        self.model = model
        self.num_tasks = num_tasks

    def forward(self, x: Tensor, ray: Tensor) -> Any:
        ray = torch.as_tensor(ray)
        if ray.shape != (self.num_tasks,):
            raise ValueError(f"the ray must have shape ({self.num_tasks},), got {tuple(ray.shape)}")
        if x.ndim < 2:
            raise ValueError(f"x must have a batch and a feature dimension, got shape {tuple(x.shape)}")
        ray = ray.to(device=x.device, dtype=x.dtype)
        shape = (x.shape[0], self.num_tasks, *x.shape[2:])
        planes = ray.reshape(1, self.num_tasks, *([1] * (x.ndim - 2))).expand(shape)
        return self.model(torch.cat([x, planes], dim=1))


class COSMOS:
    """Trains a preference-conditioned network with the COSMOS objective, in your loop.

    Each step: ``ray = cosmos.sample_ray()``; the K task losses of ``net(x, ray)`` (a
    :class:`PreferenceInput`, or any model that takes the ray); ``cosmos.backward(losses, ray)``; your
    optimizer's step and ``zero_grad``.

    Args:
        num_tasks: K.
        penalty: λ >= 0, the weight of the cosine-similarity term (0: linear scalarization on random rays).
        alpha: the Dirichlet concentration of the training rays (one value or K).
        seed: the ray sampler's seed (the same on every rank in data-parallel training).
        parameters: the trained parameters; needed only for data parallelism (below).
        sync: data parallelism over the batch (``"auto"``: under an initialized ``torch.distributed``
            with more than one process): the objective is taken at the losses averaged over the ranks,
            its gradient Σ_t (∂J/∂L̄_t) ∇L̄_t written to
            ``parameters``' ``.grad`` after averaging over the ranks (do not wrap the model in
            DistributedDataParallel as well).
    """

    def __init__(
        self,
        num_tasks: int,
        *,
        penalty: float = 2.0,
        alpha: float | Sequence[float] = 1.2,
        seed: int = 0,
        parameters: Iterable[Tensor] | None = None,
        sync: Sync = "auto",
    ) -> None:
        penalty = float(penalty)
        if not (math.isfinite(penalty) and penalty >= 0.0):
            raise ValueError(f"COSMOS penalty must be finite and >= 0, got {penalty!r}")
        self.sampler = RaySampler(num_tasks, alpha, seed=seed)
        self.num_tasks = num_tasks
        self.penalty = penalty
        self.parameters = None if parameters is None else [p for p in parameters if p.requires_grad]
        self.sync: Sync = sync
        self.steps = 0

    def sample_ray(self) -> Tensor:
        """The next training ray, (K,), float64."""
        return self.sampler.sample()

    def loss(self, losses: Tensor, ray: Tensor) -> tuple[Tensor, Tensor]:
        """The COSMOS objective and the cosine similarity, both differentiable."""
        losses = _check_losses(losses, self.num_tasks)
        r = _check_ray(ray, self.num_tasks).to(losses)
        cosine = torch.nn.functional.cosine_similarity(losses, r, dim=0)
        return (losses * r).sum() - self.penalty * cosine, cosine

    def backward(self, losses: Tensor, ray: Tensor) -> SetStepResult:
        """Backpropagate the COSMOS objective for ``losses`` (K,) computed at ``ray``."""
        group = resolve_group(self.sync)
        if group is None:
            loss, cosine = self.loss(losses, ray)
            loss.backward()
        else:
            if self.parameters is None:
                raise ValueError("COSMOS needs parameters= for data-parallel training (sync)")
            mean = _check_losses(losses, self.num_tasks).detach().clone()
            all_reduce_mean_([mean], group)
            at_mean = mean.requires_grad_()
            loss, cosine = self.loss(at_mean, ray)
            (coefficients,) = torch.autograd.grad(loss, at_mean)
            grads = _grads((coefficients * losses).sum(), self.parameters, retain_graph=False)
            all_reduce_mean_(grads, group)
            _accumulate(self.parameters, grads)
        self.steps += 1
        return SetStepResult(
            loss.detach(),
            _check_ray(ray, self.num_tasks).clone(),
            {"cosine": float(cosine.detach()), "step": self.steps},
        )

    def state_dict(self) -> dict[str, Any]:
        """The sampler's generator and the step count (the network and optimizer have their own)."""
        return {"sampler": self.sampler.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"sampler", "steps"}:
            raise ValueError(f"COSMOS state must have keys ['sampler', 'steps'], got {sorted(state)}")
        self.sampler.load_state_dict(state["sampler"])
        self.steps = int(state["steps"])

    def __repr__(self) -> str:
        return (
            f"COSMOS(penalty={self.penalty}, alpha={self.sampler.alpha.tolist()}, seed={self.sampler.seed})"
        )
