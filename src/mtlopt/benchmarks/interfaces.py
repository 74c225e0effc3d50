"""The interfaces of the benchmark side: what the trainer, the method runners and the reports use.

- :class:`BenchmarkData`: a benchmark's data: batches of (inputs, targets), each task's training loss,
  and an evaluator of the task metrics over a split. Image classification (the MultiMNIST family),
  molecular regression (QM9), attributes (CelebA) and dense prediction (NYUv2, Cityscapes) implement it
  next to their loaders in :mod:`mtlopt.benchmarks.data`.
- :class:`Metric`: a metric's name and its "higher is better" flag.
- :class:`MultiTaskModel`: a shared encoder and one head per task (:mod:`mtlopt.benchmarks.models`).
- :class:`TrainDefaults`, :class:`DataOptions` and :class:`Benchmark`: a registry entry
  (:mod:`mtlopt.benchmarks.suite`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "Benchmark",
    "BenchmarkData",
    "DataOptions",
    "Metric",
    "MultiTaskModel",
    "TrainDefaults",
]


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool


CLASSIFICATION_METRICS = (Metric("accuracy", True), Metric("cross_entropy", False))
REGRESSION_METRICS = (Metric("mae", False),)


@dataclass(frozen=True)
class TrainDefaults:
    """Published training settings of a protocol (used when the command line does not set them)."""

    epochs: int
    lr: float
    batch_size: int
    optimizer: str = "sgd"
    momentum: float = 0.9
    lr_decay_every: int = 0  # epochs; 0 = constant learning rate
    lr_decay: float = 0.5


@dataclass(frozen=True)
class DataOptions:
    data_root: str | None = None
    mnist_root: str | None = None
    cache_dir: str | None = None
    download: bool = True
    data_seed: int = 0
    max_sources: int | None = None
    sizes: tuple[int, int, int] | None = None  # examples for train, val, test (protocol-specific default)


class RunnerTasks(Protocol):
    """What a method runner reads of the tasks (``MethodRunner.build``'s ``tasks``): their losses, their
    kinds and training batches. :class:`BenchmarkData` has it; so has the speed suite's ``RunnerData``."""

    @property
    def task_types(self) -> tuple[str, ...]: ...

    def batch(self, split: str, index: Tensor, device: torch.device) -> tuple[Any, Any]: ...

    def task_loss(self, task: int, output: Tensor, targets: Any) -> Tensor: ...

    def losses(self, outputs: Sequence[Tensor], targets: Any) -> list[Tensor]: ...


class BenchmarkData(ABC):
    """What the trainer needs of a benchmark's data.

    Evaluation goes through :meth:`evaluator`, an accumulator with ``update(outputs, targets)`` and
    ``compute() -> {task: {metric: value}}``; the default sums :meth:`metric_sums` over the split.
    ``task_metrics`` maps each task to its metrics (all tasks share ``metrics`` unless overridden).
    """

    task_names: tuple[str, ...]
    metrics: tuple[Metric, ...]
    meta: dict[str, Any]
    hv_objective: str | None = None  # the per-task metric used as an objective for hypervolumes

    @property
    def task_types(self) -> tuple[str, ...]:
        """``"classification"`` or ``"regression"`` per task (the kind of its training loss)."""
        return ("classification",) * len(self.task_names)

    @property
    def task_metrics(self) -> dict[str, tuple[Metric, ...]]:
        return {task: self.metrics for task in self.task_names}

    @abstractmethod
    def size(self, split: str) -> int:
        """Examples in a split (``"train"``, ``"val"``, ``"test"``)."""

    @abstractmethod
    def batch(self, split: str, index: Tensor, device: torch.device) -> tuple[Any, Any]:
        """(inputs, targets) of the given examples, on ``device``."""

    @abstractmethod
    def task_loss(self, task: int, output: Tensor, targets: Any) -> Tensor:
        """The training loss of one task (a scalar)."""

    def losses(self, outputs: Sequence[Tensor], targets: Any) -> list[Tensor]:
        return [self.task_loss(t, output, targets) for t, output in enumerate(outputs)]

    def metric_sums(self, outputs: Sequence[Tensor], targets: Any) -> Tensor:
        """(tasks, metrics) float64 sums over the batch, for the default evaluator."""
        raise NotImplementedError(f"{type(self).__name__} defines neither metric_sums nor evaluator")

    def metric_values(self, sums: Tensor, count: int) -> dict[str, dict[str, float]]:
        values = (sums / count).tolist()
        return {
            task: {m.name: values[t][j] for j, m in enumerate(self.metrics)}
            for t, task in enumerate(self.task_names)
        }

    def evaluator(self) -> Any:
        """A fresh accumulator of the task metrics over a split."""
        return _SumEvaluator(self)


class _SumEvaluator:
    def __init__(self, data: BenchmarkData) -> None:
        self.data, self.count = data, 0
        self.sums: Tensor | None = None

    def update(self, outputs: Sequence[Tensor], targets: Any) -> None:
        sums = self.data.metric_sums(outputs, targets)
        self.sums = sums if self.sums is None else self.sums + sums
        first = targets if isinstance(targets, Tensor) else next(iter(targets.values()))
        self.count += len(first)

    def compute(self) -> dict[str, dict[str, float]]:
        assert self.sums is not None, "no batch was evaluated"
        return self.data.metric_values(self.sums.cpu(), self.count)


class MultiTaskModel(nn.Module):
    """``encoder`` maps the input to a shared representation Z; ``heads[t]`` maps Z to task t's output."""

    encoder: nn.Module
    heads: nn.ModuleList

    def forward(self, x: Tensor) -> list[Tensor]:
        z = self.encoder(x)
        return [head(z) for head in self.heads]


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    task_names: tuple[str, ...]
    metrics: tuple[Metric, ...]
    protocols: tuple[str, ...]
    defaults: dict[str, TrainDefaults]
    load: Callable[[str, DataOptions], BenchmarkData]
    model: Callable[[str], MultiTaskModel]
    notes: str = ""
    hv_reference: tuple[float, ...] | None = None  # hypervolume reference point of hv_objective per task
    protocol_notes: dict[str, str] = field(default_factory=dict)

    @property
    def default_protocol(self) -> str:
        return self.protocols[0]
