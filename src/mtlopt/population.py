r"""A population of models, one per scalarized subproblem, trained jointly with parameter transfer.

Lu Bai, Abhishek Gupta, Yew-Soon Ong, "Multi-Task Learning with Multi-Task Optimization",
arXiv:2403.16162 (2024); the transfer rule is that of the authors' multi-task gradient descent (MGD:
Bai, Ong, He, Gupta, Memetic Computing 12(4), 2020; code ``BaiLu-BL/MGD_MultiMNIST``).

The multi-objective problem :math:`\min_\theta (L_1(\theta), \dots, L_m(\theta))` is split into K
scalar subproblems :math:`f_k(\theta) = s(L(\theta); \lambda_k)`, one per preference vector
:math:`\lambda_k` (linear or Tchebycheff scalarization), each with its own model :math:`\theta^k`. They
are solved jointly: every step, each member takes a step of the base optimizer on its own subproblem, and
the members exchange parameters,

.. math::

    \theta^k \leftarrow \sum_j M_{kj}\, \theta^j - \eta\, d_k,

where :math:`d_k` is the optimizer's direction for :math:`\nabla f_k` at :math:`\theta^k` and the mixing
uses the parameters *before* any member moved. The transfer matrix is :math:`M = (1-\rho) I + \rho W`,
:math:`\rho` the transfer strength (optionally decayed to 0 over training so that each member converges
to its own subproblem) and W with rows summing to 1, non-negative off the diagonal, built from the cosine similarity
:math:`c_{kj} = \max(0, \cos(\lambda_k, \lambda_j))` over the ``neighbours`` most similar subproblems
:math:`j \ne k`, in one of two forms, or given by the user (``Transfer(matrix=W)``):

==========================  =================================  ====================================
\                           ``form="normalized"`` (default)    ``form="mgd"``
==========================  =================================  ====================================
W_kj, j a neighbour of k    c_kj / Σ_j' c_kj'                  c_kj / (1 + c_kj)
weight k takes from others  ρ, whatever the similarities       ρ Σ_j c_kj/(1 + c_kj) ≤ ρ·neighbours/2
neighbours all at c = 0     share ρ uniformly                  exchange nothing
source                      seed paper (Bai et al. 2024)       MGD's code: w = η·c/(1 + c)
==========================  =================================  ====================================

The default is ``"normalized"``: this module implements the seed paper (Bai, Gupta & Ong 2024), whose
transfer, as designed here (its body could not be obtained), weighs each subproblem's nearest neighbours
by the similarity of their preference vectors under one strength ρ, which is then the weight every
member takes from the others, whatever K and the layout of the preference vectors. MGD is the same
group's earlier two-task method, whose code scales the exchange with the similarity of the tasks' label
vectors; ``form="mgd"`` is its form on preference vectors (ρ in the role of η), under which members with
orthogonal preferences, such as (1, 0) and (0, 1), never exchange.

With plain SGD every form is gradient descent on :math:`f_k + \tfrac{\rho}{2\eta} \sum_{j \ne k} W_{kj}
\|\theta^k - \theta^j\|^2` with the partners held fixed (MGD's elastic coupling). Strength 0 gives
M = I: K independent trainings, the linear-scalarization sweep. Only parameters that require grad are
transferred (a frozen layer stays as it is). The other choices (neighbours, strength, schedule, which
parameters, how often) are options too. The default strength 5e-4 is the size of MGD's per-step
w = η·c/(1+c) (η = 1e-3); MGD mixes two independently initialized LeNets, in the convolutional layers
only. Strong transfer between independently initialized members averages units that do not correspond
and stalls training.

The K members can be trained as one vectorized model (``torch.func.stack_module_state`` +
``functional_call`` + ``vmap`` over the stacked parameters) or with a per-member loop; both give the same
numbers up to floating-point reassociation. ``vectorize="auto"`` vectorizes on accelerators, where one
batched kernel replaces K launches, and loops on the CPU, where vmap is slower for a few large batches
but can be faster with many small per-task ops (see the speed report, ``docs/benchmarks/speed/speed.md``):
pass ``vectorize="always"`` there. Modules with running statistics (BatchNorm) always loop: they cannot
be updated in place under vmap.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ._checks import check_finite_on_every_rank
from ._options import check_choice
from .distributed import Sync, all_gather_stack, resolve_group, world_size
from .preferences import check_preferences
from .scalarization import IdealPoint, Tchebycheff, linear_scalarization
from .weighting._base import GramianWeighting, LossWeighting

__all__ = ["Population", "PopulationStepResult", "Transfer", "transfer_matrix"]

Scalarization = Literal["linear", "tchebycheff"]
Vectorize = Literal["auto", "always", "never"]
TransferParameters = Literal["all", "shared"]
Schedule = Literal["constant", "linear", "cosine"]
TransferForm = Literal["normalized", "mgd"]


@dataclass(frozen=True)
class Transfer:
    """How members exchange parameters: M = (1 − ρ) I + ρ W (see the module docstring).

    Attributes:
        strength: ρ ∈ [0, 1] (0: no transfer).
        neighbours: how many of the most similar subproblems each member mixes with.
        schedule: ``"constant"``, or ρ decayed to 0 over ``total_steps`` (``"linear"``, ``"cosine"``).
        every: transfer every this many steps.
        parameters: ``"all"``, or ``"shared"``: only the parameters the population's ``shared`` predicate
            selects (e.g. the trunk, as the MGD code transfers the first layers). Parameters that do
            not require grad are never transferred.
        form: how W comes from the preference vectors: ``"normalized"`` (default: each member takes ρ,
            split over its neighbours by similarity) or ``"mgd"`` (ρ·c/(1+c) from each neighbour).
        matrix: your own W instead (K×K, entries finite and >= 0, rows summing to 1; ``form`` and
            ``neighbours`` are then unused; ``strength=1.0`` applies W as given).
    """

    strength: float = 5e-4
    neighbours: int = 2
    schedule: Schedule = "constant"
    every: int = 1
    parameters: TransferParameters = "all"
    form: TransferForm = "normalized"
    matrix: Tensor | Sequence[Sequence[float]] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"transfer strength must be in [0, 1], got {self.strength}")
        if self.neighbours < 1:
            raise ValueError(f"transfer neighbours must be >= 1, got {self.neighbours}")
        check_choice("Transfer", "schedule", self.schedule, Schedule)
        if self.every < 1:
            raise ValueError(f"transfer every must be >= 1, got {self.every}")
        check_choice("Transfer", "parameters", self.parameters, TransferParameters)
        check_choice("Transfer", "form", self.form, TransferForm)
        if self.matrix is not None:
            if self.form != "normalized":
                raise ValueError(f"give a transfer form ({self.form!r}) or a matrix, not both")
            matrix = _check_matrix(self.matrix)  # stored as nested tuples: the dataclass stays immutable
            object.__setattr__(self, "matrix", tuple(tuple(row) for row in matrix.tolist()))

    def strength_at(self, step: int, total_steps: int | None) -> float:
        """ρ at a (0-based) step under the schedule."""
        if self.schedule == "constant" or self.strength == 0.0:
            return self.strength
        if total_steps is None or total_steps < 1:
            raise ValueError(f"a {self.schedule!r} transfer schedule needs total_steps")
        progress = min(step / total_steps, 1.0)
        if self.schedule == "linear":
            return self.strength * (1.0 - progress)
        return self.strength * 0.5 * (1.0 + math.cos(math.pi * progress))

    def matrix_for(self, preferences: Tensor, strength: float | None = None) -> Tensor:
        """M for these preference vectors at ``strength`` (default: :attr:`strength`)."""
        rho = self.strength if strength is None else strength
        return transfer_matrix(preferences, rho, self.neighbours, form=self.form, matrix=self.matrix)


def _check_matrix(matrix: Tensor | Sequence[Sequence[float]], size: int | None = None) -> Tensor:
    """A user's W as float64, after checking it; errors name the bad value and what was expected."""
    W = torch.as_tensor(matrix, dtype=torch.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or (size is not None and W.shape[0] != size):
        expected = f"({size}, {size}), one row and column per member" if size is not None else "(K, K)"
        raise ValueError(f"the transfer matrix has shape {tuple(W.shape)}, expected {expected}")
    if not bool(torch.isfinite(W).all()) or bool((W < 0).any()):
        row = int(((~torch.isfinite(W)) | (W < 0)).any(1).nonzero()[0])
        raise ValueError(
            f"transfer matrix row {row} is {[float(f'{v:.6g}') for v in W[row].tolist()]}: entries must be "
            "finite and >= 0"
        )
    sums = W.sum(1)
    bad = (sums - 1.0).abs() > 1e-6
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise ValueError(f"transfer matrix row {row} sums to {float(sums[row]):.6g}; expected 1")
    return W


def transfer_matrix(
    preferences: Tensor,
    strength: float,
    neighbours: int = 2,
    *,
    form: TransferForm = "normalized",
    matrix: Tensor | Sequence[Sequence[float]] | None = None,
) -> Tensor:
    """M = (1 − ρ) I + ρ W for K preference vectors (K×K, float64, rows summing to 1).

    W from the cosine similarity c = max(0, cos) of the preference vectors over each member's
    ``neighbours`` most similar subproblems (ties: the closer index): ``form="normalized"`` spreads
    weight 1 over them proportionally to c (uniformly if all are 0); ``form="mgd"`` gives each c/(1+c)
    and leaves the rest on the diagonal. ``matrix``: W given (checked). Refused where an entry of M
    would be negative.
    """
    check_choice("transfer_matrix", "form", form, TransferForm)
    prefs = torch.as_tensor(preferences, dtype=torch.float64)
    K = prefs.shape[0]
    eye = torch.eye(K, dtype=torch.float64)
    if matrix is not None:
        W = _check_matrix(matrix, K)
    elif K == 1 or strength == 0.0:
        return eye
    else:
        unit = prefs / prefs.norm(dim=1, keepdim=True).clamp_min(1e-300)
        similarity = (unit @ unit.T).clamp_min(0.0)
        W = torch.zeros(K, K, dtype=torch.float64)
        for k in range(K):
            others = sorted(
                (j for j in range(K) if j != k), key=lambda j: (-float(similarity[k, j]), abs(j - k), j)
            )
            chosen = others[: min(neighbours, K - 1)]
            weights = similarity[k, chosen]
            if form == "mgd":
                W[k, chosen] = weights / (1.0 + weights)
                W[k, k] = 1.0 - float(W[k].sum())
            else:
                W[k, chosen] = weights / weights.sum() if float(weights.sum()) > 0 else 1.0 / len(chosen)
    M = (1.0 - strength) * eye + strength * W
    if bool((M < 0).any()):
        k = int((M < 0).any(1).nonzero()[0])
        raise ValueError(
            f"the transfer matrix at strength {strength} gives member {k} the self-weight "
            f"{float(M[k, k]):.6g} < 0: lower the strength to at most {1.0 / float(1.0 - W[k, k]):.6g} "
            "or use fewer neighbours"
        )
    return M


@dataclass(frozen=True)
class PopulationStepResult:
    """Per-member task losses (K, m) and scalarized losses (K,) of a step, and the ρ it used."""

    losses: Tensor
    scalarized: Tensor
    strength: float


class Population:
    """K models, one per preference vector, trained jointly with parameter transfer.

    Args:
        models: K models of one architecture (each with its own initialization).
        preferences: (K, m) preference vectors, one per model (see :mod:`mtlopt.preferences`).
        optimizer: builds the base optimizer from a list of tensors, e.g.
            ``functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9)``. It must act element-wise
            (SGD, Adam, ...), since in vectorized mode one optimizer holds every member's parameters.
        scalarization: how each member's task losses become its objective: a function from a preference
            vector to a :class:`mtlopt.LossWeighting` (one is built per member), or the name of one:
            ``"linear"`` (:func:`mtlopt.scalarization.linear_scalarization`, fixed weights λ) or
            ``"tchebycheff"`` (:class:`mtlopt.scalarization.Tchebycheff` reading the population's
            running ideal-point estimate, lowered by every member's losses).
        transfer: the transfer settings; ``None`` or strength 0 for independent training.
        shared: predicate on parameter names selecting the shared trunk (for
            ``transfer.parameters="shared"``).
        vectorize: ``"auto"`` (vectorized on accelerators unless a module keeps running statistics,
            a loop on the CPU), ``"always"``, ``"never"``.
        total_steps: training length, for decaying transfer schedules.
        sync: spread the members over processes (see :mod:`mtlopt.distributed`): with W ranks, each
            rank passes its K/W ``models`` (rank r holds members r·K/W .. (r+1)·K/W − 1) and all K
            ``preferences``; every rank must feed the same batches. The transfer gathers the other
            ranks' parameters; checkpoints gather every member.
        scaler: a ``torch.amp.GradScaler`` for float16 mixed precision (the step goes through it).
        weightings: instead of a scalarization, one :class:`mtlopt.GramianWeighting` per (local) member, e.g.
            Pareto MTL or EPO for that member's preference: each member's update is then
            ``mtlopt.backward(its losses, its weighting, shared_params=member)`` (per-member loop).
        check_finite: raise :class:`mtlopt.NonFiniteError` naming the member and task when a loss is
            NaN or infinite (without a ``scaler``, which skips such steps); costs a host synchronization
            per step on accelerators.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        preferences: Tensor,
        optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
        *,
        scalarization: Scalarization | Callable[[Tensor], LossWeighting] = "linear",
        transfer: Transfer | None = None,
        shared: Callable[[str], bool] | None = None,
        vectorize: Vectorize = "auto",
        total_steps: int | None = None,
        ideal_margin: float = 1e-3,
        sync: Sync = "auto",
        scaler: torch.amp.GradScaler | None = None,
        weightings: Sequence[GramianWeighting] | None = None,
        check_finite: bool = True,
    ) -> None:
        models = list(models)
        if not models:
            raise ValueError("a population needs at least one model")
        self.preferences = check_preferences(preferences, torch.as_tensor(preferences).shape[-1])
        self.group = resolve_group(sync)
        self.world = world_size(self.group)
        rank = torch.distributed.get_rank(self.group) if self.group is not None else 0
        if self.preferences.shape[0] != len(models) * self.world:
            where = f" on each of {self.world} processes" if self.world > 1 else ""
            raise ValueError(
                f"{len(models)} models{where} but {self.preferences.shape[0]} preference vectors"
            )
        self.local = slice(rank * len(models), (rank + 1) * len(models))
        self.scaler = scaler
        self.check_finite = check_finite
        if weightings is not None:
            weightings = list(weightings)
            if len(weightings) != len(models):
                raise ValueError(
                    f"{len(weightings)} weightings for {len(models)} models: give one per member"
                )
            if vectorize == "always":
                raise ValueError(
                    "per-member weightings train the members in a loop: use vectorize='auto' or 'never'"
                )
            vectorize = "never"
        self.weightings = weightings
        if isinstance(scalarization, str):
            check_choice("Population", "scalarization", scalarization, Scalarization)
        elif not callable(scalarization):
            raise TypeError(
                "scalarization must be 'linear', 'tchebycheff' or a function from a preference vector to a "
                f"loss weighting, got {type(scalarization).__name__}"
            )
        check_choice("Population", "vectorize", vectorize, Vectorize)
        names = [n for n, _ in models[0].named_parameters()]
        _check_same_architecture(models)
        trainable = {n for n, p in models[0].named_parameters() if p.requires_grad}
        self.transfer = transfer or Transfer(strength=0.0)
        if self.transfer.parameters == "shared" and shared is None:
            raise ValueError("transfer parameters='shared' needs the `shared` predicate on parameter names")
        self.mixed_names = [
            n
            for n in names
            if n in trainable and (self.transfer.parameters == "all" or (shared is not None and shared(n)))
        ]
        self.transfer.matrix_for(self.preferences)  # a user matrix of the wrong size fails here, not later
        if self.transfer.strength > 0 and not self.mixed_names:
            raise ValueError("no parameter is selected for transfer")
        if (
            self.transfer.schedule != "constant"
            and self.transfer.strength > 0
            and not (total_steps or 0) >= 1
        ):
            raise ValueError(
                f"a {self.transfer.schedule!r} transfer schedule needs total_steps >= 1, got {total_steps}"
            )
        self.scalarization = scalarization
        # The population's ideal point: every member's losses lower it (across ranks), then the members'
        # Tchebycheff scalarizations read it.
        self.ideal = IdealPoint(self.preferences.shape[1], ideal_margin)
        if scalarization == "linear":
            make: Callable[[Tensor], LossWeighting] = linear_scalarization
        elif scalarization == "tchebycheff":
            make = functools.partial(Tchebycheff, ideal=self.ideal)
        else:
            make = scalarization
        self.scalarizations: list[LossWeighting] = []
        for preference in self.preferences[self.local]:
            member = make(preference)
            if not isinstance(member, LossWeighting):
                raise TypeError(
                    f"scalarization({preference.tolist()}) returned a {type(member).__name__}, expected a "
                    "loss weighting (e.g. mtlopt.FixedWeights); gradient methods go in weightings="
                )
            self.scalarizations.append(member)
        self.total_steps = total_steps
        self.steps = 0
        self._make_optimizer = optimizer
        self.num_members = len(models)
        running_stats = any(getattr(m, "track_running_stats", False) for m in models[0].modules())
        first = next(models[0].parameters(), None)
        on_accelerator = first is not None and first.device.type != "cpu"
        self.vectorized = vectorize == "always" or (
            vectorize == "auto" and on_accelerator and not running_stats
        )
        if self.vectorized:
            self._params, self._buffers = stack_module_state(models)
            self._base = copy.deepcopy(models[0]).to("meta")
            self.optimizer = optimizer(list(self._params.values()))
        else:
            self.models = models
            self.optimizer = optimizer([p for m in models for p in m.parameters()])
        self._fallback_allowed = vectorize == "auto"

    # --- training --------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> Population:
        for module in self._modules():
            module.train(mode)
        return self

    def eval(self) -> Population:
        return self.train(False)

    def forward(self, inputs: Any) -> list[Any]:
        """Every member's outputs for the same inputs (a list of length K)."""
        if self.vectorized:
            outputs = vmap(self._call, in_dims=(0, 0, None), randomness="different")(
                self._params, self._buffers, inputs
            )
            return [_select(outputs, k) for k in range(self.num_members)]
        return [model(inputs) for model in self.models]

    __call__ = forward

    def step(self, inputs: Any, targets: Any, loss_fn: Callable[[Any, Any], Tensor]) -> PopulationStepResult:
        """One joint step: each member's base-optimizer step on its subproblem, then the transfer.

        Args:
            inputs: one batch's inputs, shared by all members.
            targets: that batch's targets, passed to ``loss_fn``.
            loss_fn: ``loss_fn(outputs, targets)`` → the m task losses of one member, shape (m,).
        """
        if self.weightings is not None:
            return self._weighted_step(self.weightings, inputs, targets, loss_fn)
        if self.vectorized:
            try:
                losses = self._vectorized_losses(inputs, targets, loss_fn)
            except (RuntimeError, NotImplementedError) as error:
                if not self._fallback_allowed or self.steps > 0:
                    raise
                self._to_loop(error)
                losses = torch.stack([loss_fn(model(inputs), targets) for model in self.models])
        else:
            losses = torch.stack([loss_fn(model(inputs), targets) for model in self.models])
        if losses.shape != self.preferences[self.local].shape:
            raise ValueError(
                f"loss_fn must return {self.preferences.shape[1]} task losses per member, got shape {tuple(losses.shape[1:])}"
            )
        if self.scaler is None and self.check_finite:  # a GradScaler skips such steps itself
            self._check_finite_losses(losses)
        scalarized = self._scalarize(losses)
        self.optimizer.zero_grad(set_to_none=True)
        before = self._snapshot()
        total = scalarized.sum()  # members are independent: the sum's gradient is each member's own
        (total if self.scaler is None else self.scaler.scale(total)).backward()
        strength = self._step_and_transfer(before)
        return PopulationStepResult(losses.detach(), scalarized.detach(), strength)

    def _check_finite_losses(self, losses: Tensor) -> None:
        check_finite_on_every_rank(
            losses, self.group, lambda: self._non_finite_message(losses), "a member's loss"
        )

    def _non_finite_message(self, losses: Tensor) -> str:
        member, task = (~torch.isfinite(losses.detach())).nonzero()[0].tolist()
        return (
            f"member {self.local.start + member} "
            f"(preference {self.preferences[self.local.start + member].tolist()}) "
            f"has a non-finite loss for task {task}: {losses[member, task].item()}; lower the learning rate, "
            "or pass check_finite=False to train on it"
        )

    def _weighted_step(
        self,
        weightings: Sequence[GramianWeighting],
        inputs: Any,
        targets: Any,
        loss_fn: Callable[[Any, Any], Tensor],
    ) -> PopulationStepResult:
        from .backward import backward

        self.optimizer.zero_grad(set_to_none=True)
        before = self._snapshot()
        rows, combined = [], []
        for model, weighting in zip(self.models, weightings):
            losses = loss_fn(model(inputs), targets)
            # A member lives on one rank and sees the whole batch: nothing to synchronize.
            result = backward(losses, weighting, shared_params=model, sync=False, scaler=self.scaler)
            rows.append(result.losses)
            combined.append((result.weights.to(result.losses) * result.losses).sum())
        strength = self._step_and_transfer(before)
        return PopulationStepResult(torch.stack(rows), torch.stack(combined), strength)

    def _step_and_transfer(self, before: dict[str, Tensor]) -> float:
        """The optimizer step (through the scaler), then the transfer from the pre-step parameters."""
        strength = self.transfer.strength_at(self.steps, self.total_steps)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if strength > 0.0 and self.steps % self.transfer.every == 0:
            self._mix(before, self.transfer.matrix_for(self.preferences, strength))
        self.steps += 1
        return strength

    def member_state_dicts(self) -> list[dict[str, Tensor]]:
        """Each member's ``state_dict`` (parameters and buffers), detached copies."""
        if self.vectorized:
            tensors = {**self._params, **self._buffers}
            return [{n: t[k].detach().clone() for n, t in tensors.items()} for k in range(self.num_members)]
        return [{n: t.detach().clone() for n, t in m.state_dict().items()} for m in self.models]

    def state_dict(self) -> dict[str, Any]:
        """Every member's parameters and optimizer state (gathered from all ranks when distributed)."""
        local: dict[str, Any] = {
            "members": self.member_state_dicts(),
            "optimizer": self.optimizer.state_dict(),
            "weightings": [w.state_dict() for w in self.weightings] if self.weightings is not None else None,
        }
        parts = [local]
        if self.group is not None:
            gathered: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(gathered, local, group=self.group)
            parts = gathered
        return {
            "vectorized": self.vectorized,
            "weightings": [w for part in parts for w in part["weightings"]]
            if self.weightings is not None
            else None,
            "members": [m for part in parts for m in part["members"]],
            "optimizers": [part["optimizer"] for part in parts],
            "steps": self.steps,
            "ideal": self.ideal.state_dict(),
            "preferences": self.preferences.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_prefs = state.get("preferences")  # absent from older states: the member count is checked then
        if saved_prefs is None and len(state["members"]) != self.preferences.shape[0]:
            raise ValueError(
                f"the state holds {len(state['members'])} members, this population has "
                f"{self.preferences.shape[0]} preference vectors"
            )
        if saved_prefs is not None:
            saved_prefs = torch.as_tensor(saved_prefs, dtype=torch.float64).cpu()
            same = saved_prefs.shape == self.preferences.shape and torch.allclose(
                saved_prefs, self.preferences, rtol=0.0, atol=1e-9
            )
            if not same:
                raise ValueError(
                    f"the state was saved with preference vectors {_shown(saved_prefs)}, this population has "
                    f"{_shown(self.preferences)}"
                )
        if state["vectorized"] != self.vectorized:
            if not (self.vectorized and self._fallback_allowed):
                raise ValueError("the state was saved in the other vectorization mode")
            self._switch_to_loop()  # that run fell back to the loop at its first step: so does this one
        if len(state["optimizers"]) != self.world:
            raise ValueError(
                f"the state was saved with {len(state['optimizers'])} processes, this run has {self.world}"
            )
        members = state["members"][self.local]
        rank = self.local.start // max(1, self.local.stop - self.local.start)
        with torch.no_grad():
            if self.vectorized:
                for name, tensor in {**self._params, **self._buffers}.items():
                    tensor.copy_(torch.stack([member[name] for member in members]))
            else:
                for model, member in zip(self.models, members, strict=True):
                    model.load_state_dict(member)
        self.optimizer.load_state_dict(state["optimizers"][rank])
        if self.weightings is not None and state.get("weightings"):
            for weighting, saved in zip(self.weightings, state["weightings"][self.local], strict=True):
                weighting.load_state_dict(saved)
        self.steps = int(state["steps"])
        self.ideal.load_state_dict(state["ideal"])

    # --- internals -------------------------------------------------------------------------------

    def _call(self, params, buffers, inputs):
        return functional_call(self._base, (params, buffers), (inputs,))

    def _vectorized_losses(self, inputs: Any, targets: Any, loss_fn: Callable[[Any, Any], Tensor]) -> Tensor:
        def member_losses(params, buffers, x, y):
            return loss_fn(self._call(params, buffers, x), y)

        return vmap(member_losses, in_dims=(0, 0, None, None), randomness="different")(
            self._params, self._buffers, inputs, targets
        )

    def _scalarize(self, losses: Tensor) -> Tensor:
        """Each member's scalarized loss, (K,), from its task losses (K, m)."""
        if self.scalarization == "tchebycheff":  # the members read the population's ideal point
            self._update_ideal(losses)
        return torch.stack([member(row).loss for member, row in zip(self.scalarizations, losses)])

    def _update_ideal(self, losses: Tensor) -> None:
        self.ideal.update(losses)
        if self.group is not None:  # the ideal point over every rank's members, reduced where the losses are
            minimum = self.ideal.minimum.to(losses.device)
            torch.distributed.all_reduce(minimum, op=torch.distributed.ReduceOp.MIN, group=self.group)
            self.ideal.minimum = minimum.to("cpu", torch.float64)

    def _mixed_member_tensors(self) -> dict[str, Tensor | list[Tensor]]:
        """Per transferred name: the stacked tensor (vectorized) or each member's parameter."""
        if self.vectorized:
            return {name: self._params[name] for name in self.mixed_names}
        named = [dict(m.named_parameters()) for m in self.models]
        return {name: [params[name] for params in named] for name in self.mixed_names}

    def _snapshot(self) -> dict[str, Tensor]:
        """The transferred parameters before the step, when this step transfers (else empty)."""
        if self.steps % self.transfer.every or self.transfer.strength_at(self.steps, self.total_steps) == 0.0:
            return {}
        snapshot = {}
        for name, tensors in self._mixed_member_tensors().items():
            snapshot[name] = (
                tensors.detach().clone()
                if isinstance(tensors, Tensor)
                else torch.stack([t.detach() for t in tensors])
            )
        return snapshot

    @torch.no_grad()
    def _mix(self, before: dict[str, Tensor], M: Tensor) -> None:
        delta = (M - torch.eye(M.shape[0], dtype=M.dtype))[self.local]
        current = self._mixed_member_tensors()
        for name, local_old in before.items():
            old = all_gather_stack(local_old, self.group)  # every member's parameters, in member order
            shift = torch.tensordot(delta.to(old), old, dims=1)  # Σ_j M_kj θ^j_old − θ^k_old
            tensors = current[name]
            if isinstance(tensors, Tensor):
                tensors.add_(shift)
            else:
                for k, tensor in enumerate(tensors):
                    tensor.add_(shift[k])

    def _modules(self) -> list[nn.Module]:
        return [self._base] if self.vectorized else list(self.models)

    def _to_loop(self, error: Exception) -> None:
        import warnings

        warnings.warn(f"vectorized population failed ({error}); training members in a loop", stacklevel=3)
        self._switch_to_loop()

    def _switch_to_loop(self) -> None:
        """Rebuild the members as modules trained in a loop, with a fresh optimizer over them."""
        members = self.member_state_dicts()
        template = self._base
        self.models = []
        for member in members:
            model = copy.deepcopy(template).to_empty(device=next(iter(self._params.values())).device)
            model.load_state_dict(member)
            self.models.append(model)
        self.vectorized = False
        self.optimizer = self._make_optimizer([p for m in self.models for p in m.parameters()])


def _shown(vectors: Tensor) -> list[list[float]]:
    return [[float(f"{v:.6g}") for v in row] for row in vectors.tolist()]


def _check_same_architecture(models: Sequence[nn.Module]) -> None:
    """Every member has model 0's parameter names, shapes, dtypes and requires_grad flags."""
    reference = dict(models[0].named_parameters())
    for k, model in enumerate(models[1:], start=1):
        params = dict(model.named_parameters())
        if list(params) != list(reference):
            raise ValueError(f"model {k} does not have the architecture of model 0")
        for name, p in params.items():
            first = reference[name]
            if p.shape != first.shape:
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(p.shape)} in model {k} but {tuple(first.shape)} "
                    "in model 0: the members must have one architecture"
                )
            if p.dtype != first.dtype:
                raise ValueError(f"parameter {name!r} is {p.dtype} in model {k} but {first.dtype} in model 0")
            if p.requires_grad != first.requires_grad:
                raise ValueError(
                    f"parameter {name!r} {'requires' if p.requires_grad else 'does not require'} grad in "
                    f"model {k} but {'does' if first.requires_grad else 'does not'} in model 0: freeze the "
                    "same layers in every member"
                )


def _select(outputs: Any, k: int) -> Any:
    if isinstance(outputs, Tensor):
        return outputs[k]
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_select(o, k) for o in outputs)
    if isinstance(outputs, dict):
        return {key: _select(value, k) for key, value in outputs.items()}
    raise TypeError(f"cannot split model outputs of type {type(outputs).__name__} by member")
