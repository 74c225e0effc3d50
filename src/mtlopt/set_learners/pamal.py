r"""PaMaL: Pareto Manifold Learning, a weight ensemble whose convex combinations trace the front.

Nikolaos Dimitriadis, Pascal Frossard and François Fleuret, "Pareto Manifold Learning: Tackling
multiple tasks via ensembles of single-task models", ICML 2023 (arXiv 2210.09759); official code
``nik-dim/pamal`` (``src/ll/weight_ensemble.py``, ``src/ll/subspace_modules.py``,
``src/trainer/multi_forward_ensemble_trainer.py``, ``src/methods/pamal_weight_methods.py``,
``configs/experiment/*/method/pamal.yaml``).

One member :math:`\theta_t` per task, all of one architecture f; the model for a preference ray
:math:`\alpha \in \Delta_K` is the convex combination of their parameters,

.. math::

    \theta(\alpha) = \sum_{t=1}^K \alpha_t\, \theta_t ,

so the vertex :math:`e_t` is member t itself (exactly: ``call_target(e_t)`` is member t's network) and
the edge between two vertices is the straight line between the two members. Each training step draws a
window of W rays :math:`\alpha^{(1)}, \dots, \alpha^{(W)} \sim \mathrm{Dir}(p)`, runs the batch through
each :math:`\theta(\alpha^{(w)})` and descends, for all members at once,

.. math::

    J = \sum_{w=1}^W \alpha^{(w)\top} L\big(\theta(\alpha^{(w)})\big) \;+\; \lambda\, R ,
    \qquad
    R = \sum_{t=1}^K \log \frac{1}{W-1} \sum_{j=1}^{W-1}
        \exp\!\big(T\, \mathrm{relu}(L_t^{(j+1)} - L_t^{(j)})\big),

the multi-forward regularization: for each task t the window is ordered by :math:`\alpha_t`
(ascending), so :math:`L_t^{(j)}` is task t's loss at the window's j-th smallest :math:`\alpha_t`, and
R is a soft maximum of the violations of the front's monotonicity (more weight on task t must not give
a larger loss on task t); R = 0 when the window is ordered, and when W = 1.
**Total weight on the tasks**: W per step (each ray's weights sum to 1), plus λR.

=========================  ==================  ===========================  ==============================
choice                     default             paper                        official code
=========================  ==================  ===========================  ==============================
members                    one per task        one per task (vertex e_t)    ``task_weights_list = eye(K)``
member initialization      yours (see below)   independent                  ``reinit_flag: true``: each a
                                                                            fresh initialization
ensembled parameters       every trainable     the whole network            Conv2d, Linear, BatchNorm2d
                           one (``ensemble=``)                              weights/biases; others shared
Dirichlet p (``alpha``)    1.0                 p                            1 (MultiMNIST, Census,
                                                                            MultiMNIST3), 2 UTKFace,
                                                                            7 Cityscapes
window W                   3                   W                            4 MultiMNIST, 2 Census,
                                                                            3 otherwise
λ (``penalty``)            1.0                 λ                            0 MultiMNIST, 5 Census,
                                                                            2 MultiMNIST3, 1 otherwise
temperature T              1.0                 not discussed (= 1)          1 in every config
window order of R          ``"monotone"``      monotone losses              ``"official"``: sorted by
                                                                            α_t descending (see below)
λR added                   always              always                       only when λR < Σ_w α·L
                                                                            (``penalty_cap=True``)
task weighting inside      α (linear           α; loss / gradient           ``inner_method``: ls
                           scalarization)      balancing as variants        (MultiMNIST, Census,
                                                                            MultiMNIST3), gradnorm
                                                                            (UTKFace, Cityscapes)
BatchNorm running stats    shared (below)      —                            one shared set, updated by
                                                                            every sampled α
optimizer (yours)          —                   —                            Adam 1e-3, 10 epochs
                                                                            (MultiMNIST)
test rays                  25 (two tasks)      —                            ``validate_models: 11``
                                                                            points on the edge
=========================  ==================  ===========================  ==============================

Notes on the differences.

- **The window's order.** The official trainer keys each task's window losses by :math:`\alpha_t`,
  sorts the keys in *descending* order and penalizes ``relu(diff)`` of that sequence: a positive
  difference there is the loss at the *smaller* :math:`\alpha_t` exceeding the loss at the larger,
  which is the monotone order the front should have. ``ordering="official"`` reproduces that sort
  (a penalty on the expected order: ``relu(diff)`` where ``relu(-diff)`` would penalize the
  violations; re-read line by line in ``multi_forward_ensemble_trainer.py`` at commit 26adf53, with
  ``torch.diff``'s x[j+1] - x[j]); the default penalizes the violations. The published MultiMNIST
  runs do not exercise it (λ = 0 in that config), and the cap below often switches it off.
  On the toy fronts of ``tests/test_set_learners.py`` the official order pulls the members together
  and the learned front collapses, while the default's reaches the analytic front's hypervolume.
  The paper's full text was not reachable from this machine (its abstract and the official configs'
  comments were), so the paper column states what those and the code establish.
- **The cap.** The official trainer adds λR only when λR is smaller than the window's summed loss;
  ``penalty_cap=True`` does the same (the decision is taken on detached values).
- **Loss and gradient balancing** (the official ``rwa``, ``gradnorm`` and ``full`` inner methods) are not
  implemented: the weights inside J are the rays, the paper's base method.
- **BatchNorm.** The members hold BatchNorm's affine weights like any parameter (interpolated); the
  running statistics are the target network's buffers, one set used and updated by every sampled ray,
  as in the official ``SubspaceBatchNorm2d``. :func:`recalibrate_batchnorm` instead re-estimates them
  for one ray from a few batches (Wortsman et al. 2021's treatment of subspaces of networks; the
  torch.optim.swa_utils.update_bn recipe): call it before evaluating that ray.
- **The rays** are drawn from a NumPy generator (resumable, the siblings' :class:`RaySampler`), not
  torch's ``Dirichlet.rsample``; the official code evaluates 11 points on the edge for two tasks, here
  the siblings' fixed test rays.
- LibMTL and LibMOON have no PaMaL.

The members are the user's K models (``WeightEnsemble([make_model() for _ in range(K)])``: independent
initializations, the official default; pass deep copies of one model for a common start). The first
model is the *target*: the interpolated parameters are put into it with ``torch.func.functional_call``,
its parameters outside ``ensemble=`` are shared by every ray (trained, and part of the ensemble's
``parameters()``), and its buffers are used as they are (save ``target.state_dict()`` for them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._options import check_choice
from ..distributed import Sync, all_reduce_mean_, resolve_group
from ..errors import NonFiniteError
from ._rays import RaySampler
from .hypernetwork import SetStepResult, _accumulate, _grads

__all__ = ["PaMaL", "WeightEnsemble", "recalibrate_batchnorm"]

Ordering = Literal["monotone", "official"]

_SIMPLEX_TOLERANCE = 1e-5


class WeightEnsemble(nn.Module):
    """K members of one architecture; the network at a ray α (K,) on the simplex has parameters
    Σ_i α_i θ_i.

    Args:
        models: the K >= 2 members' initial networks, all with the same parameter names, shapes and
            dtypes. Their ensembled parameters are copied into this module (``members.<i>``); the first
            model is the target the combined parameters are put into (not registered as a submodule).
        ensemble: which parameters are ensembled (a predicate on the name); default every parameter
            that requires grad. The target's other trainable parameters are shared by every ray
            (registered here as ``shared``, the same tensors as the target's).
    """

    def __init__(self, models: Sequence[nn.Module], *, ensemble: Callable[[str], bool] | None = None) -> None:
        super().__init__()
        models = list(models)
        if len(models) < 2 or not all(isinstance(m, nn.Module) for m in models):
            kinds = [type(m).__name__ for m in models]
            raise ValueError(f"WeightEnsemble needs a sequence of >= 2 nn.Module members, got {kinds}")
        target = models[0]
        chosen = [
            name
            for name, p in target.named_parameters()
            if (ensemble(name) if ensemble is not None else p.requires_grad)
        ]
        if not chosen:
            raise ValueError("WeightEnsemble: the target has no parameters to ensemble")
        reference = dict(target.named_parameters())
        for index, model in enumerate(models[1:], start=1):
            params = dict(model.named_parameters())
            if set(params) != set(reference):
                raise ValueError(
                    f"WeightEnsemble: member {index} has parameters {sorted(set(params) ^ set(reference))} "
                    "that member 0 lacks or has (the members must share one architecture)"
                )
            for name in chosen:
                a, b = reference[name], params[name]
                if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
                    raise ValueError(
                        f"WeightEnsemble: member {index}'s parameter {name!r} is {tuple(b.shape)} "
                        f"{b.dtype} on {b.device}, member 0's {tuple(a.shape)} {a.dtype} on {a.device}"
                    )
        self._target = [target]  # a list: keeps the target out of this module's parameters
        self.num_members = len(models)
        self.names = chosen
        self.members = nn.ModuleList(_copies(model, chosen) for model in models)
        shared = [
            (name, p) for name, p in target.named_parameters() if name not in set(chosen) and p.requires_grad
        ]
        self.shared_names = [name for name, _ in shared]
        self.shared = nn.ParameterDict([(_key(name), p) for name, p in shared])

    @property
    def target(self) -> nn.Module:
        return self._target[0]

    def forward(self, ray: Tensor) -> dict[str, Tensor]:
        """The parameters at ``ray`` (K,): Σ_i ray_i θ_i for the ensembled ones, the shared ones as they
        are, by the target's parameter names."""
        ray = self._check_ray(ray)
        out: dict[str, Tensor] = {}
        for name in self.names:
            key = _key(name)
            stacked = torch.stack([self._params(i)[key] for i in range(self.num_members)])
            weights = ray.to(device=stacked.device, dtype=stacked.dtype)
            out[name] = (weights.reshape(-1, *([1] * (stacked.ndim - 1))) * stacked).sum(0)
        for name in self.shared_names:
            out[name] = self.shared[_key(name)]
        return out

    def call_target(self, ray: Tensor, *args: Any, **kwargs: Any) -> Any:
        """The target network with the parameters at ``ray``, called on ``args``/``kwargs``."""
        return functional_call(self.target, self(ray), args, kwargs)

    def member(self, index: int) -> dict[str, Tensor]:
        """Member ``index``'s own parameters, by the target's names."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_members:
            raise ValueError(f"member index must be an integer in [0, {self.num_members}), got {index!r}")
        return {name: self._params(index)[_key(name)] for name in self.names}

    def _params(self, index: int) -> nn.ParameterDict:
        return cast(nn.ParameterDict, self.members[index])

    def _check_ray(self, ray: Tensor) -> Tensor:
        return check_simplex(ray, self.num_members)


def check_simplex(ray: Tensor, size: int) -> Tensor:
    """``ray`` as a detached float64 CPU tensor, after checking it is a point of the simplex Δ_size."""
    ray = torch.as_tensor(ray).detach().to("cpu", torch.float64)
    if ray.shape != (size,):
        raise ValueError(f"the ray must have shape ({size},) (one weight per member), got {tuple(ray.shape)}")
    total = float(ray.sum())
    if not bool(torch.isfinite(ray).all()) or bool((ray < 0).any()) or abs(total - 1.0) > _SIMPLEX_TOLERANCE:
        raise ValueError(
            f"the ray must lie on the simplex (finite entries >= 0 summing to 1), got {ray.tolist()} "
            f"(sum {total})"
        )
    return ray


class PaMaL:
    """Trains a :class:`WeightEnsemble` with PaMaL (a window of rays per step), in your loop.

    Each step: ``rays = pamal.sample_rays()`` (W, K); the K task losses of
    ``ensemble.call_target(ray, x)`` for every ray, stacked to (W, K); ``pamal.backward(losses, rays)``
    (writes the members' and shared parameters' ``.grad``, accumulating); your optimizer's step over
    ``ensemble.parameters()`` and ``zero_grad``.

    Args:
        ensemble: the :class:`WeightEnsemble`, one member per task.
        num_tasks: K, checked against the ensemble's members (default: the number of members).
        window: W >= 1, rays per step (the official ``num``).
        alpha: the Dirichlet concentration p of the training rays (one value or K).
        penalty: λ >= 0, the weight of the multi-forward regularization (unused when W = 1).
        temperature: T > 0 inside the regularization's exponential.
        ordering: ``"monotone"`` (penalize a task's loss rising with its weight) or ``"official"`` (the
            official trainer's descending sort; see the module docstring).
        penalty_cap: add λR only when λR < Σ_w α·L (the official trainer).
        seed: the ray sampler's seed (the same on every rank in data-parallel training).
        sync: data parallelism over the batch (``"auto"``: under an initialized ``torch.distributed``
            with more than one process): J is taken at the losses averaged over the ranks and its
            gradient Σ_{w,t} (∂J/∂L̄_{w,t}) ∇L̄_{w,t} written to the ensemble's ``.grad`` after averaging
            over the ranks (do not wrap the ensemble in DistributedDataParallel as well).
    """

    def __init__(
        self,
        ensemble: WeightEnsemble,
        *,
        num_tasks: int | None = None,
        window: int = 3,
        alpha: float | Sequence[float] = 1.0,
        penalty: float = 1.0,
        temperature: float = 1.0,
        ordering: Ordering = "monotone",
        penalty_cap: bool = False,
        seed: int = 0,
        sync: Sync = "auto",
    ) -> None:
        if not isinstance(ensemble, WeightEnsemble):
            raise TypeError(f"PaMaL needs a WeightEnsemble, got {type(ensemble).__name__}")
        if num_tasks is not None and num_tasks != ensemble.num_members:
            raise ValueError(
                f"PaMaL needs one ensemble member per task: the ensemble has {ensemble.num_members} "
                f"members for {num_tasks!r} tasks"
            )
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"PaMaL window must be an integer >= 1, got {window!r}")
        penalty, temperature = float(penalty), float(temperature)
        if not (math.isfinite(penalty) and penalty >= 0.0):
            raise ValueError(f"PaMaL penalty must be finite and >= 0, got {penalty!r}")
        if not (math.isfinite(temperature) and temperature > 0.0):
            raise ValueError(f"PaMaL temperature must be finite and > 0, got {temperature!r}")
        check_choice("PaMaL", "ordering", ordering, Ordering)
        self.ensemble = ensemble
        self.num_tasks = ensemble.num_members
        self.window = window
        self.sampler = RaySampler(self.num_tasks, alpha, seed=seed)
        self.penalty = penalty
        self.temperature = temperature
        self.ordering: Ordering = ordering
        self.penalty_cap = bool(penalty_cap)
        self.sync: Sync = sync
        self.steps = 0

    def sample_rays(self) -> Tensor:
        """The next window of training rays, (W, K), float64, each row on the simplex."""
        return torch.stack([self.sampler.sample() for _ in range(self.window)])

    def regularizer(self, losses: Tensor, rays: Tensor) -> Tensor:
        """R for the window's losses (W, K) at ``rays`` (W, K), differentiable in ``losses``."""
        losses, rays64 = self._check(losses, rays)
        if self.window == 1:
            return losses.sum() * 0.0
        total = losses.new_zeros(())
        for t in range(self.num_tasks):
            order = torch.argsort(rays64[:, t], stable=True)
            if self.ordering == "official":
                order = order.flip(0)
            ordered = losses[order.to(losses.device), t]
            violation = torch.relu(ordered[1:] - ordered[:-1])
            total = total + torch.exp(self.temperature * violation).mean().log()
        return total

    def loss(self, losses: Tensor, rays: Tensor) -> tuple[Tensor, Tensor]:
        """J and R for the window's losses (W, K) at ``rays`` (W, K), both differentiable."""
        losses, rays64 = self._check(losses, rays)
        scalarized = (losses * rays64.to(losses)).sum()
        reg = self.regularizer(losses, rays64)
        if self.penalty == 0.0 or self.window == 1:
            return scalarized, reg
        if self.penalty_cap and not bool(self.penalty * reg.detach() < scalarized.detach()):
            return scalarized, reg
        return scalarized + self.penalty * reg, reg

    def backward(self, losses: Tensor, rays: Tensor) -> SetStepResult:
        """Backpropagate J for ``losses`` (W, K) computed at ``rays`` (W, K) into the ensemble's
        ``.grad``. The result's ``weights`` are the rays (W, K)."""
        group = resolve_group(self.sync)
        if group is None:
            loss, reg = self.loss(losses, rays)
            loss.backward()
        else:
            local, rays64 = self._check(losses, rays)
            mean = local.detach().clone()
            all_reduce_mean_([mean], group)
            at_mean = mean.requires_grad_()
            loss, reg = self.loss(at_mean, rays64)
            (coefficients,) = torch.autograd.grad(loss, at_mean)
            params = [p for p in self.ensemble.parameters() if p.requires_grad]
            grads = _grads((coefficients * local).sum(), params, retain_graph=False)
            all_reduce_mean_(grads, group)
            _accumulate(params, grads)
        self.steps += 1
        return SetStepResult(
            loss.detach(),
            torch.as_tensor(rays).detach().to("cpu", torch.float64).clone(),
            {"regularizer": float(reg.detach()), "step": self.steps},
        )

    def _check(self, losses: Tensor, rays: Tensor) -> tuple[Tensor, Tensor]:
        shape = (self.window, self.num_tasks)
        if not isinstance(losses, Tensor) or losses.shape != shape:
            got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(
                f"losses must be a tensor of shape {shape} (one row per ray of the window, one column per "
                f"task and member), got {got}"
            )
        if not bool(torch.isfinite(losses.detach()).all()):
            bad = sorted(
                {t for t in range(self.num_tasks) if not bool(torch.isfinite(losses[:, t].detach()).all())}
            )
            raise NonFiniteError(f"the loss of task(s) {bad} is NaN or infinite: {losses.detach().tolist()}")
        rays64 = torch.as_tensor(rays).detach().to("cpu", torch.float64)
        if rays64.shape != shape:
            raise ValueError(f"rays must have shape {shape} (window × tasks), got {tuple(rays64.shape)}")
        for ray in rays64:
            check_simplex(ray, self.num_tasks)
        return losses, rays64

    def state_dict(self) -> dict[str, Any]:
        """The sampler's generator and the step count (the ensemble, target and optimizer have their own)."""
        return {"sampler": self.sampler.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"sampler", "steps"}:
            raise ValueError(f"PaMaL state must have keys ['sampler', 'steps'], got {sorted(state)}")
        self.sampler.load_state_dict(state["sampler"])
        self.steps = int(state["steps"])

    def __repr__(self) -> str:
        return (
            f"PaMaL(window={self.window}, alpha={self.sampler.alpha.tolist()}, penalty={self.penalty}, "
            f"ordering={self.ordering!r}, seed={self.sampler.seed})"
        )


_NORMS = (nn.modules.batchnorm._BatchNorm,)


def recalibrate_batchnorm(
    ensemble: WeightEnsemble, ray: Tensor, batches: Iterable[Any], call: Callable[..., Any] | None = None
) -> int:
    """Re-estimate the target's BatchNorm running statistics for the network at ``ray``.

    Every BatchNorm module of the target with running statistics is reset and given a cumulative
    average (``momentum=None``); each batch is passed through ``call(ensemble, ray, batch)`` (default:
    ``ensemble.call_target(ray, batch)``) in training mode under ``torch.no_grad()``; the modules'
    momentum and the target's train/eval mode are restored. Returns the number of BatchNorm modules.
    """
    ray = check_simplex(ray, ensemble.num_members)
    norms = [m for m in ensemble.target.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    was_training = ensemble.target.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    ensemble.target.train()
    try:
        with torch.no_grad():
            for batch in batches:
                if call is None:
                    ensemble.call_target(ray, batch)
                else:
                    call(ensemble, ray, batch)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        ensemble.target.train(was_training)
    return len(norms)


def _copies(model: nn.Module, names: Sequence[str]) -> nn.ParameterDict:
    params = dict(model.named_parameters())
    return nn.ParameterDict(
        [
            (
                _key(name),
                nn.Parameter(params[name].detach().clone(), requires_grad=params[name].requires_grad),
            )
            for name in names
        ]
    )


def _key(name: str) -> str:
    return name.replace(".", "__")
