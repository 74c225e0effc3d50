r"""Pareto hypernetworks (PHN): one network that maps a preference ray to a target network's weights.

Aviv Navon, Aviv Shamsian, Gal Chechik, Ethan Fetaya, "Learning the Pareto Front with
Hypernetworks", ICLR 2021; official code ``AvivNavon/pareto-hypernetworks`` (``phn/solvers.py``,
``experiments/multimnist``).

A hypernetwork :math:`h(\cdot; \phi)` maps a ray :math:`r \in \Delta_K` to the parameters
:math:`\theta = h(r; \phi)` of a target network f; the task losses :math:`L(\theta)` then depend on r
and :math:`\phi`. Training draws :math:`r \sim \mathrm{Dir}(\alpha)` every step and descends

- **PHN-LS**: :math:`\sum_t r_t L_t(h(r; \phi))`;
- **PHN-EPO**: :math:`\sum_t \alpha_t L_t(h(r; \phi))` with :math:`\alpha` the EPO weights for the
  preference r (:class:`mtlopt.EPO`, its LP on the Gramian :math:`G G^\top` of the task gradients
  with respect to :math:`\phi`), held constant in the backward pass.

At test time one forward pass of h per ray gives that ray's model: the whole front from one network.
Linear scalarization reaches only the points of the front on its convex hull: on a concave front the
minimizers of :math:`r^\top L` are its end points, so PHN-LS is for convex fronts and PHN-EPO (or COSMOS)
for the others.
The hypernetwork here is the official one: a ray MLP :math:`K \to d \to d \to d` (ReLU between, none
after) and one linear head :math:`d \to |\theta_p|` per generated target parameter p, with PyTorch's
default initialization. The target is evaluated with ``torch.func.functional_call`` on the generated
parameters: the user's model is never copied, and its other parameters and buffers are used as they are.

=======================  ======================  =========================================================
choice                   default                 official code
=======================  ======================  =========================================================
ray MLP width d          100                     100 (MultiMNIST), 25 (SARCOS)
Dirichlet α              0.2                     0.2
EPO weight scale         Σα = K                  ``alpha *= n_tasks``
EPO LP                   :class:`mtlopt.EPO`     cvxpy/GLPK; falls back to r/Σr on failure, as here
optimizer (yours)        —                       Adam, lr 1e-4, 150 epochs (MultiMNIST), batch 256
test rays                25 (two tasks)          25, angles in [0.1, π/2 − 0.1]
=======================  ======================  =========================================================

The official ResNet hypernetwork generates the weights in chunks (a shared head and learned chunk
embeddings); that is not implemented: a head per parameter suits small targets (LeNet, MLPs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._options import check_choice
from ..distributed import Sync, all_reduce_mean_, resolve_group
from ..errors import NonFiniteError
from ..weighting.epo import EPO
from ._rays import RaySampler

__all__ = ["PHN", "ParetoHypernetwork", "SetStepResult"]

Objective = Literal["ls", "epo"]


class ParetoHypernetwork(nn.Module):
    """Maps a preference ray (K,) to the generated parameters of ``target``.

    Args:
        target: the target network (not copied and not registered as a submodule: the hypernetwork's
            ``parameters()`` and ``state_dict()`` are its own).
        num_tasks: K, the ray's length.
        hidden_dim: d, the ray MLP's width.
        generate: which of the target's parameters are generated (a predicate on the name); default: every
            parameter that requires grad. The rest are taken from ``target`` as they are.
    """

    def __init__(
        self,
        target: nn.Module,
        num_tasks: int,
        *,
        hidden_dim: int = 100,
        generate: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(target, nn.Module):
            raise TypeError(f"target must be an nn.Module, got {type(target).__name__}")
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 2:
            raise ValueError(f"ParetoHypernetwork needs an integer num_tasks >= 2, got {num_tasks!r}")
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"ParetoHypernetwork hidden_dim must be an integer >= 1, got {hidden_dim!r}")
        chosen = [
            (name, p)
            for name, p in target.named_parameters()
            if (generate(name) if generate is not None else p.requires_grad)
        ]
        if not chosen:
            raise ValueError("ParetoHypernetwork: the target has no parameters to generate")
        self._target = [target]  # a list: keeps the target out of this module's parameters
        self.num_tasks = num_tasks
        self.names = [name for name, _ in chosen]
        self.shapes = {name: tuple(p.shape) for name, p in chosen}
        first = chosen[0][1]
        self.ray_mlp = nn.Sequential(
            nn.Linear(num_tasks, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
        )
        self.heads = nn.ModuleDict(
            {name.replace(".", "__"): nn.Linear(hidden_dim, p.numel()) for name, p in chosen}
        )
        self.to(device=first.device, dtype=first.dtype)

    @property
    def target(self) -> nn.Module:
        return self._target[0]

    def forward(self, ray: Tensor) -> dict[str, Tensor]:
        """The generated parameters for one ray, by the target's parameter names."""
        ray = self._check_ray(ray)
        features = self.ray_mlp(ray)
        return {
            name: self.heads[name.replace(".", "__")](features).reshape(self.shapes[name])
            for name in self.names
        }

    def call_target(self, ray: Tensor, *args: Any, **kwargs: Any) -> Any:
        """The target network with the parameters generated for ``ray``, called on ``args``/``kwargs``."""
        return functional_call(self.target, self(ray), args, kwargs)

    def _check_ray(self, ray: Tensor) -> Tensor:
        ray = torch.as_tensor(ray)
        if ray.shape != (self.num_tasks,):
            raise ValueError(f"the ray must have shape ({self.num_tasks},), got {tuple(ray.shape)}")
        weight = next(self.ray_mlp.parameters())
        return ray.to(device=weight.device, dtype=weight.dtype)


@dataclass(frozen=True)
class SetStepResult:
    """What a set learner's ``backward`` did.

    Attributes:
        loss: the scalarized loss that was backpropagated (detached).
        weights: the task weights used, (K,), float64.
        diagnostics: scalars worth logging (for PHN-EPO the LP's mode, non-uniformity and fallback).
    """

    loss: Tensor
    weights: Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)


class PHN:
    """Trains a :class:`ParetoHypernetwork` with PHN-LS or PHN-EPO, in your loop.

    Each step: ``ray = phn.sample_ray()``; compute the K task losses of
    ``hypernetwork.call_target(ray, x)``; ``phn.backward(losses, ray)`` (writes the hypernetwork's
    ``.grad``, accumulating); then your optimizer's step and ``zero_grad``.

    Args:
        hypernetwork: the :class:`ParetoHypernetwork`.
        objective: ``"ls"`` (PHN-LS) or ``"epo"`` (PHN-EPO; needs scipy).
        alpha: the Dirichlet concentration of the training rays (one value or K).
        seed: the ray sampler's seed (the same on every rank in data-parallel training).
        epo_eps: EPO's threshold on the non-uniformity between balance and descent mode.
        sync: data parallelism over the batch (``"auto"``: under an initialized ``torch.distributed``
            with more than one process): each rank's losses are on its share of the batch; the
            losses and the task gradients are averaged over the ranks before the weights are chosen,
            so every rank writes the one-process ``.grad`` of the global batch. Do not wrap the
            hypernetwork in DistributedDataParallel as well.
    """

    def __init__(
        self,
        hypernetwork: ParetoHypernetwork,
        *,
        objective: Objective = "ls",
        alpha: float | Sequence[float] = 0.2,
        seed: int = 0,
        epo_eps: float = 1e-4,
        sync: Sync = "auto",
    ) -> None:
        if not isinstance(hypernetwork, ParetoHypernetwork):
            raise TypeError(f"PHN needs a ParetoHypernetwork, got {type(hypernetwork).__name__}")
        check_choice("PHN", "objective", objective, Objective)
        self.hypernetwork = hypernetwork
        self.num_tasks = hypernetwork.num_tasks
        self.objective: Objective = objective
        self.sampler = RaySampler(self.num_tasks, alpha, seed=seed)
        self.epo_eps = float(epo_eps)
        if objective == "epo":
            EPO(torch.full((self.num_tasks,), 1.0 / self.num_tasks), eps=self.epo_eps)  # checks eps, scipy
        self.sync: Sync = sync
        self.steps = 0
        self.fallbacks = 0

    def sample_ray(self) -> Tensor:
        """The next training ray, (K,), float64."""
        return self.sampler.sample()

    def backward(self, losses: Tensor, ray: Tensor) -> SetStepResult:
        """Backpropagate the PHN objective for ``losses`` (K,) computed at ``ray`` into the
        hypernetwork's ``.grad``."""
        losses = _check_losses(losses, self.num_tasks)
        ray64 = _check_ray(ray, self.num_tasks)
        params = [p for p in self.hypernetwork.parameters() if p.requires_grad]
        group = resolve_group(self.sync)
        diagnostics: dict[str, Any] = {}
        if self.objective == "ls":
            weights = ray64
            grads = _grads((losses * ray64.to(losses)).sum(), params, retain_graph=False)
            all_reduce_mean_(grads, group)
            _accumulate(params, grads)
        else:
            rows = [_grads(losses[t], params, retain_graph=True) for t in range(self.num_tasks)]
            flat = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows])
            global_losses = losses.detach().clone()
            all_reduce_mean_([flat, global_losses], group)
            flat64 = flat.to(torch.float64)
            output = EPO(ray64, eps=self.epo_eps, weight_scale="num-tasks").weigh(
                flat64 @ flat64.T, global_losses
            )
            weights = output.weights
            diagnostics = output.diagnostics
            self.fallbacks += int(bool(diagnostics["fallback"]))
            # Σ α_t ∇L_t: the gradient of the official Σ α_t L_t with α held constant.
            update = weights.to(flat) @ flat
            sizes = [p.numel() for p in params]
            _accumulate(params, [u.view_as(p) for u, p in zip(update.split(sizes), params)])
        loss = (losses * weights.to(losses)).sum()
        self.steps += 1
        diagnostics["step"] = self.steps
        return SetStepResult(loss.detach(), weights.clone(), diagnostics)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's generator and the counters (the hypernetwork and optimizer have their own)."""
        return {"sampler": self.sampler.state_dict(), "steps": self.steps, "fallbacks": self.fallbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"sampler", "steps", "fallbacks"}:
            raise ValueError(
                f"PHN state must have keys ['fallbacks', 'sampler', 'steps'], got {sorted(state)}"
            )
        self.sampler.load_state_dict(state["sampler"])
        self.steps = int(state["steps"])
        self.fallbacks = int(state["fallbacks"])

    def __repr__(self) -> str:
        return f"PHN(objective={self.objective!r}, alpha={self.sampler.alpha.tolist()}, seed={self.sampler.seed})"


def _grads(loss: Tensor, params: Sequence[Tensor], *, retain_graph: bool) -> list[Tensor]:
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _accumulate(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g.detach().clone() if p.grad is None else p.grad + g.detach()


def _check_losses(losses: Tensor, num_tasks: int) -> Tensor:
    if not isinstance(losses, Tensor) or losses.shape != (num_tasks,):
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(f"losses must be a tensor of shape ({num_tasks},) (one per task), got {shape}")
    if not bool(torch.isfinite(losses.detach()).all()):
        bad = [t for t, v in enumerate(losses.detach().tolist()) if not math.isfinite(v)]
        raise NonFiniteError(f"the loss of task(s) {bad} is NaN or infinite: {losses.detach().tolist()}")
    return losses


def _check_ray(ray: Tensor, num_tasks: int) -> Tensor:
    ray = torch.as_tensor(ray).detach().to("cpu", torch.float64)
    if ray.shape != (num_tasks,):
        raise ValueError(f"the ray must have shape ({num_tasks},), got {tuple(ray.shape)}")
    if not bool(torch.isfinite(ray).all()) or bool((ray < 0).any()):
        raise ValueError(f"the ray must be finite and >= 0, got {ray.tolist()}")
    return ray
