r"""Alternating task-specific steps with per-group optimizer state and random task grouping.

Lucas Pascal, Pietro Michiardi, Xavier Bost, Benoit Huet, Maria A. Zuluaga, "Improved optimization
strategies for deep Multi-Task Networks", arXiv:2109.11678 (2021); authors' code
``lucaspascal/AITSO_MTL``.

The T tasks are partitioned into groups :math:`G_1, \dots, G_K` with group losses
:math:`L_k = \sum_{t \in G_k} \ell_t`. On every batch, for k = 1..K in turn: a fresh forward pass at the
current parameters, :math:`g_k = \nabla L_k`, and one optimizer step on :math:`g_k`.

- ``state="per-group"`` (IO, "independent optimizers"): group k steps with its own optimizer instance,
  holding state only for the shared parameters and group k's own heads. With Adam, each group's step is
  normalized by its own moments, so rescaling a whole group's loss leaves the trajectory unchanged (up to
  ε). With one task per group that is a per-task rescaling; in a group of several tasks, rescaling one
  task's loss changes the direction of the group's gradient, and the run changes with it.
- ``state="shared"`` (IUS, "independent update steps"): one optimizer for everything; its state mixes all
  groups' gradients, and the shared parameters take K optimizer steps per batch.
- One group holding every task is the ordinary step on the summed loss (SUS).

Grouping: ``group_size=None`` gives one group per task in task order (the authors' setting for
per-task steps); ``group_size=g`` draws a random partition into ⌈T/g⌉ groups of size g (the last one
possibly smaller) from ``seed``, kept for the run (``regroup="never"``, as in the authors' code) or
drawn again at every :meth:`AlternatingSteps.new_epoch` (``regroup="epoch"``). Groups run in a fixed
order (the last group gets the final word, as in the authors' code) or in an order shuffled per batch.

Heads outside the active group are left untouched: before each sub-step every managed gradient is set
to ``None``, and PyTorch optimizers skip parameters without a gradient, so an inactive head does not
drift on stale momentum. When the grouping is redrawn, each parameter keeps its optimizer state: a
head's state moves with the head to its new group, and group slot k keeps slot k's state of the shared
parameters.

Diagnostic: the covered distance :math:`\sum \|\theta_{sh}^{after} - \theta_{sh}^{before}\|_2` over all
sub-steps (the paper's measure of exploration). As in the authors' code, it leaves out the parameters of
BatchNorm layers by default (``distance_parameters="no-batchnorm"``; ``"all"`` counts them).

The closure returns the active group's losses: one scalar per task of the group, or their sum as one
scalar. A sequence or mapping with another number of losses (e.g. every task's loss) is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._checks import all_finite, check_finite_on_every_rank
from ._options import check_choice
from .distributed import Sync, all_reduce_mean_, grads_of, resolve_group
from .errors import NonFiniteError

__all__ = ["AlternatingStepResult", "AlternatingSteps"]

State = Literal["per-group", "shared"]
Order = Literal["fixed", "shuffled"]
Regroup = Literal["never", "epoch"]
DistanceParameters = Literal["no-batchnorm", "all"]
GroupLosses = Tensor | Sequence[Tensor] | Mapping[str, Tensor]


@dataclass(frozen=True)
class AlternatingStepResult:
    """What one :meth:`AlternatingSteps.step` did.

    Attributes:
        order: the groups in the order they stepped (each a list of task indices).
        group_losses: the loss of each group at its own sub-step, in ``order``.
        distance: Σ‖Δθ_shared‖₂ over this batch's sub-steps (0.0 when tracking is off).
    """

    order: list[list[int]]
    group_losses: list[float]
    distance: float


class AlternatingSteps:
    """One optimizer step per task group per batch (Pascal et al. 2021).

    Args:
        shared: the shared parameters (a module or an iterable of tensors).
        heads: one entry per task: that task's own parameters (a module or an iterable of tensors).
        optimizer: builds an optimizer from a list of parameters, e.g.
            ``functools.partial(torch.optim.Adam, lr=1e-3)``.
        state: ``"per-group"`` (one optimizer per group) or ``"shared"`` (one optimizer).
        group_size: tasks per group; ``None`` for one group per task in task order.
        regroup: ``"never"`` or ``"epoch"`` (a new random partition at every :meth:`new_epoch`).
        order: ``"fixed"`` or ``"shuffled"`` (a new group order for every batch).
        seed: seeds the partition and the order (reproducible; saved in :meth:`state_dict`).
        track_distance: accumulate the covered distance of the shared parameters.
        distance_parameters: which shared parameters the covered distance measures:
            ``"no-batchnorm"`` (default, as the authors' code: those outside BatchNorm layers, found when
            ``shared`` is a module; a list of tensors is taken whole), ``"all"``, or the tensors
            themselves (each one a shared parameter).
        sync: average each sub-step's gradients across processes (see :mod:`mtlopt.distributed`);
            every rank draws the same groups and order from ``seed``.
        scaler: a ``torch.amp.GradScaler``: each sub-step scales its loss, steps through the scaler
            (skipped on overflow) and updates the scale.
    """

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor],
        heads: Sequence[nn.Module | Iterable[Tensor]],
        optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
        *,
        state: State = "per-group",
        group_size: int | None = None,
        regroup: Regroup = "never",
        order: Order = "fixed",
        seed: int = 0,
        track_distance: bool = True,
        distance_parameters: DistanceParameters | Iterable[Tensor] = "no-batchnorm",
        sync: Sync = "auto",
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        check_choice("AlternatingSteps", "state", state, State)
        check_choice("AlternatingSteps", "regroup", regroup, Regroup)
        check_choice("AlternatingSteps", "order", order, Order)
        self.shared = _parameters(shared, "shared")
        self.heads = [_parameters(head, f"heads[{t}]") for t, head in enumerate(heads)]
        if not self.heads:
            raise ValueError("heads is empty: AlternatingSteps needs one entry per task")
        num_tasks = len(self.heads)
        if group_size is not None and not 1 <= group_size:
            raise ValueError(f"group_size must be >= 1 (or None for one group per task), got {group_size}")
        if regroup == "epoch" and group_size is None:
            raise ValueError("regroup='epoch' needs a random grouping: set group_size")
        ids = [id(p) for p in self.shared] + [id(p) for head in self.heads for p in head]
        if len(ids) != len(set(ids)):
            raise ValueError("a parameter appears twice among shared and heads (or in two heads)")
        self.num_tasks = num_tasks
        self.state_mode: State = state
        self.group_size = group_size
        self.regroup: Regroup = regroup
        self.order: Order = order
        self.seed = seed
        self.track_distance = track_distance
        self._distance_params = _distance_parameters(shared, self.shared, distance_parameters)
        resolve_group(sync)  # validated now (sync=True without a process group fails here)
        self._sync = sync
        self.scaler = scaler
        self._make_optimizer = optimizer
        self._generator = torch.Generator().manual_seed(seed)
        self.groups = self._draw_groups()
        self.grouping_history: list[list[list[int]]] = [self.groups]
        self.covered_distance = 0.0
        self.steps = 0
        self._optimizers = self._build_optimizers(self.groups, previous=None)

    # --- public API -----------------------------------------------------------------------------

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizer of each group (``state="per-group"``), or the single shared one."""
        return list(self._optimizers)

    def step(self, closure: Callable[[list[int]], GroupLosses]) -> AlternatingStepResult:
        """Take one optimizer step per group on the current batch.

        Args:
            closure: called once per group with the group's task indices; it runs a fresh forward pass
                and returns the group's losses (a scalar, or a sequence/mapping of per-task scalars,
                which are summed).
        """
        order = list(range(len(self.groups)))
        if self.order == "shuffled":
            order = torch.randperm(len(order), generator=self._generator).tolist()
        losses, distance = [], 0.0
        process_group = resolve_group(self._sync)  # looked up at each step: may be built before init
        for k in order:
            group = self.groups[k]
            self._zero_grad()
            loss = _group_loss(closure(list(group)), group, self.num_tasks)

            def describe(group: Sequence[int] = group, loss: Tensor = loss) -> str:
                return f"the loss of the group of tasks {list(group)} is {float(loss.detach())}"

            check_finite_on_every_rank(
                loss, process_group, describe, f"the loss of the group of tasks {list(group)}"
            )
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            grads = grads_of(self._group_parameters(group))
            all_reduce_mean_(grads, process_group)
            if self.scaler is None and not all_finite(grads):  # a GradScaler skips such a step itself
                raise NonFiniteError(
                    f"a gradient of the group of tasks {list(group)} contains NaN or inf (its loss is "
                    f"{float(loss.detach())}); no parameter was changed by this group's step"
                )
            before = [p.detach().clone() for p in self._distance_params] if self.track_distance else None
            optimizer = self._optimizers[k] if self.state_mode == "per-group" else self._optimizers[0]
            if self.scaler is None:
                optimizer.step()
            else:
                self.scaler.step(optimizer)
                self.scaler.update()
            if before is not None:
                distance += _distance(self._distance_params, before)
            losses.append(float(loss.detach()))
        self._zero_grad()
        self.covered_distance += distance
        self.steps += 1
        return AlternatingStepResult([list(self.groups[k]) for k in order], losses, distance)

    def new_epoch(self) -> None:
        """Start a new epoch: with ``regroup="epoch"``, draw a new random partition.

        With ``state="per-group"`` the groups get new optimizers, which take over the old ones' state and
        hyperparameters (e.g. a decayed ``lr``); an LR scheduler must be attached to :attr:`optimizers`
        again.
        """
        if self.regroup != "epoch":
            return
        previous = self.groups
        self.groups = self._draw_groups()
        self.grouping_history.append(self.groups)
        self._optimizers = self._build_optimizers(self.groups, previous=(previous, self._optimizers))

    def state_dict(self) -> dict[str, Any]:
        """Grouping, RNG, every optimizer's state and the diagnostics (exact resume)."""
        return {
            "groups": [list(g) for g in self.groups],
            "grouping_history": [[list(g) for g in grouping] for grouping in self.grouping_history],
            "generator": self._generator.get_state(),
            "optimizers": [opt.state_dict() for opt in self._optimizers],
            "covered_distance": self.covered_distance,
            "steps": self.steps,
            "settings": self._settings(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["settings"] != self._settings():
            raise ValueError(
                f"state was saved with settings {state['settings']}, these are {self._settings()}"
            )
        self.groups = [list(g) for g in state["groups"]]
        self.grouping_history = [[list(g) for g in grouping] for grouping in state["grouping_history"]]
        self._generator.set_state(state["generator"])
        self._optimizers = self._build_optimizers(self.groups, previous=None)
        for optimizer, saved in zip(self._optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.covered_distance = float(state["covered_distance"])
        self.steps = int(state["steps"])

    # --- internals ------------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {
            "num_tasks": self.num_tasks,
            "state": self.state_mode,
            "group_size": self.group_size,
            "regroup": self.regroup,
            "order": self.order,
            "seed": self.seed,
        }

    def _draw_groups(self) -> list[list[int]]:
        if self.group_size is None:
            return [[t] for t in range(self.num_tasks)]
        tasks = torch.randperm(self.num_tasks, generator=self._generator).tolist()
        return [sorted(tasks[i : i + self.group_size]) for i in range(0, self.num_tasks, self.group_size)]

    def _group_parameters(self, group: Sequence[int]) -> list[Tensor]:
        return [*self.shared, *(p for t in group for p in self.heads[t])]

    def _build_optimizers(
        self,
        groups: Sequence[Sequence[int]],
        previous: tuple[Sequence[Sequence[int]], list[torch.optim.Optimizer]] | None,
    ) -> list[torch.optim.Optimizer]:
        if self.state_mode == "shared":
            if previous is not None:
                return previous[1]  # one optimizer over everything: nothing to move
            return [self._make_optimizer([*self.shared, *(p for head in self.heads for p in head)])]
        optimizers = [self._make_optimizer(self._group_parameters(group)) for group in groups]
        if previous is not None:
            old_groups, old_optimizers = previous
            owner = {t: k for k, group in enumerate(old_groups) for t in group}
            for k, (group, optimizer) in enumerate(zip(groups, optimizers)):
                source = old_optimizers[min(k, len(old_optimizers) - 1)]
                for new_group, old_group in zip(optimizer.param_groups, source.param_groups):
                    new_group.update({key: value for key, value in old_group.items() if key != "params"})
                for p in self.shared:
                    if k < len(old_optimizers) and p in old_optimizers[k].state:
                        optimizer.state[p] = old_optimizers[k].state[p]
                for t in group:
                    for p in self.heads[t]:
                        if p in old_optimizers[owner[t]].state:
                            optimizer.state[p] = old_optimizers[owner[t]].state[p]
        return optimizers

    def _zero_grad(self) -> None:
        for p in self.shared:
            p.grad = None
        for head in self.heads:
            for p in head:
                p.grad = None


def _group_loss(losses: GroupLosses, group: Sequence[int], num_tasks: int) -> Tensor:
    if isinstance(losses, Tensor):
        values = [losses]
    elif isinstance(losses, Mapping):
        values = list(losses.values())
    else:
        values = list(losses)
    if not values:
        raise ValueError(f"the closure returned no loss for group {list(group)}")
    if not isinstance(losses, Tensor) and len(values) != len(group):
        every = " (one per task of the model)" if len(values) == num_tasks else ""
        raise ValueError(
            f"the closure returned {len(values)} losses{every} for the group of tasks {list(group)}: "
            f"return its {len(group)} task losses, in the group's order, or their sum as one scalar"
        )
    for value in values:
        if not isinstance(value, Tensor) or value.ndim != 0:
            raise ValueError(
                f"the closure must return scalar losses for group {list(group)}, got "
                f"{type(value).__name__}{'' if not isinstance(value, Tensor) else f' of shape {tuple(value.shape)}'}"
            )
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def _distance(params: Sequence[Tensor], before: Sequence[Tensor]) -> float:
    if not params:
        return 0.0
    squares = torch.stack([(p.detach() - b).pow(2).sum() for p, b in zip(params, before)])
    return float(squares.sum().sqrt())


def _distance_parameters(
    source: nn.Module | Iterable[Tensor],
    shared: Sequence[Tensor],
    choice: DistanceParameters | Iterable[Tensor],
) -> list[Tensor]:
    """The shared parameters the covered distance measures."""
    if isinstance(choice, str):
        check_choice("AlternatingSteps", "distance_parameters", choice, DistanceParameters)
        if choice == "all" or not isinstance(source, nn.Module):
            return list(shared)
        batchnorm = {
            id(p)
            for module in source.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            for p in module.parameters()
        }
        return [p for p in shared if id(p) not in batchnorm]
    chosen = list(choice)
    known = {id(p) for p in shared}
    for i, p in enumerate(chosen):
        if not isinstance(p, Tensor) or id(p) not in known:
            raise ValueError(
                f"distance_parameters[{i}] is not one of the shared parameters: give shared tensors, "
                "'no-batchnorm' or 'all'"
            )
    return chosen


def _parameters(source: nn.Module | Iterable[Tensor], what: str) -> list[Tensor]:
    """A module's trainable parameters, or the given tensors (each must require grad)."""
    if isinstance(source, nn.Module):
        return [p for p in source.parameters() if p.requires_grad]
    params = list(source)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or not p.requires_grad:
            raise ValueError(f"{what}[{i}] is not a tensor that requires grad")
    return params
