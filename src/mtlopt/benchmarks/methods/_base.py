"""The interface of a benchmark method (:class:`MethodRunner`), its options, and the registry."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..interfaces import MultiTaskModel, RunnerTasks


@dataclass(frozen=True)
class Option:
    """A method option: its command-line flag is ``--<name>``; values are parsed with ``parse``."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] = str


@dataclass(frozen=True)
class OptimizerSettings:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0

    def make(self, params) -> torch.optim.Optimizer:
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer {self.name!r}; expected 'sgd' or 'adam'")


class MethodRunner(ABC):
    """How one method trains. Subclasses set ``name``, ``description`` and ``options``."""

    name: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    produces_set: ClassVar[bool] = False  # True for methods that train one model per trade-off
    scaler: Any = None  # a torch.amp.GradScaler under float16 mixed precision (set by the trainer)
    # --weight-total: rescale the shared update to this total weight on the tasks (set by the trainer
    # before build; None: the method's own total). Methods that cannot rescale leave it and say so in
    # weight_convention().
    weight_total: float | None = None
    steps_per_epoch: int = 1  # training steps per epoch (set by the trainer before build)

    def __init__(self, options: dict[str, Any], num_tasks: int, seed: int = 0) -> None:
        unknown = sorted(set(options) - {option.name for option in self.options})
        if unknown:
            raise ValueError(f"method {self.name} has no option {', '.join(unknown)}")
        self.config = {option.name: options.get(option.name, option.default) for option in self.options}
        self.num_tasks = num_tasks
        self.seed = seed

    @abstractmethod
    def build(
        self,
        make_model: Callable[[], MultiTaskModel],
        optimizer: OptimizerSettings,
        total_steps: int | None,
        tasks: RunnerTasks,
    ) -> None:
        """Create the model(s) and optimizer(s); called once, after the seed is set.

        ``total_steps``: the training steps of the run (None where unknown, as in the speed suite);
        ``tasks``: the losses (and batches) of the benchmark's tasks.
        """

    @property
    def batches_per_step(self) -> int:
        """How many independent training batches one step reads (after ``build``): 1, or what the
        method declares (MoDo, SDMGrad: 2 or 3). The trainer then draws ``batches_per_step - 1`` more
        batches per step and calls :meth:`train_step_with_extra` instead of :meth:`train_step`."""
        return 1

    @abstractmethod
    def train_step(self, x: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """One training step on a batch; returns detached per-step values to log (e.g. losses (K,))."""

    def train_step_with_extra(
        self, x: Tensor, targets: Tensor, extra_batches: Sequence[tuple[Any, Any]]
    ) -> dict[str, Tensor]:
        """One training step of a method that reads several batches (:attr:`batches_per_step` > 1):
        the step's batch and the list of its other ``(x, targets)`` batches (independent draws)."""
        raise NotImplementedError(f"method {self.name} reads one batch per step")

    @abstractmethod
    def predict(self, x: Tensor) -> list[Tensor]:
        """Every task's output for a batch (the trainer sets eval mode and no_grad)."""

    def predict_members(self, x: Tensor) -> list[list[Tensor]]:
        """Every member's task outputs: one member for single-model methods."""
        return [self.predict(x)]

    def set_training(self, mode: bool) -> None:
        for module in self.modules():
            module.train(mode)

    @abstractmethod
    def modules(self) -> list[nn.Module]:
        """All trained modules (for train/eval mode and the device)."""

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """All optimizers (the trainer sets their learning rate each epoch)."""

    def _step(self, *optimizers: torch.optim.Optimizer) -> None:
        """Step the optimizers, through the GradScaler when there is one (one scale update per step)."""
        for optimizer in optimizers:
            if self.scaler is None:
                optimizer.step()
            else:
                self.scaler.step(optimizer)
        if self.scaler is not None:
            self.scaler.update()

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for per-epoch changes (e.g. regrouping tasks)."""

    def uses_run_length(self) -> bool:
        """Whether training depends on the run's length (``build``'s ``total_steps``, e.g. a schedule
        decayed over the run): such a run cannot be extended to more epochs after it finished."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": [m.state_dict() for m in self.modules()],
            "optimizers": [o.state_dict() for o in self.optimizers()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for module, saved in zip(self.modules(), state["modules"], strict=True):
            module.load_state_dict(saved)
        for optimizer, saved in zip(self.optimizers(), state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)

    def weight_convention(self) -> str:
        """The total weight this method's default shared update puts on the tasks ("1", "K", ...)."""
        return "1"

    def rescaled(self) -> bool:
        """Whether ``weight_total`` rescales this method's update (False: it runs at its own total)."""
        return False

    def describe(self) -> dict[str, Any]:
        """Name and options, as written to result files."""
        return {
            "method": self.name,
            "options": dict(self.config),
            "weight_sum": {
                "convention": self.weight_convention(),
                "weight_total": self.weight_total if self.rescaled() else None,
            },
        }


class OneModelRunner(MethodRunner):
    """A method that trains one multi-task model (``self.model``) with one optimizer (``self.optimizer``)."""

    model: MultiTaskModel
    optimizer: torch.optim.Optimizer

    def predict(self, x: Tensor) -> list[Tensor]:
        return self.model(x)

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]


METHODS: dict[str, type[MethodRunner]] = {}


def register(runner: type[MethodRunner]) -> type[MethodRunner]:
    METHODS[runner.name] = runner
    return runner


def get_method(name: str) -> type[MethodRunner]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name]


def _float_pair(text: str) -> tuple[float, float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) != 2:
        raise ValueError(f"expected two comma-separated numbers, got {text!r}")
    return float(parts[0]), float(parts[1])


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a number in [0, 1], got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"expected a number >= 0, got {value}")
    return value


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def method_options(names: Sequence[str]) -> dict[str, list[tuple[str, Option]]]:
    """Every method's definition of each option flag: ``{flag: [(method, option), ...]}``.

    Methods may define the same flag differently (``--order`` is a group order for ``alternating`` and a
    projection order for ``pcgrad``): a value given on the command line is checked by each method that
    accepts the flag, against its own choices and parser.
    """
    merged: dict[str, list[tuple[str, Option]]] = {}
    for name in names:
        for option in get_method(name).options:
            merged.setdefault(option.name, []).append((name, option))
    return merged
