"""The speed suite's models, their synthetic batches, one configuration (:class:`Setup`) and a method
ready to be timed (:class:`Step`)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..interfaces import MultiTaskModel
from ..models import QM9MLP, SenerLeNet
from ..models.vision import ResNet18MultiTask


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model with its synthetic batch and per-task loss.

    Attributes:
        name: the model's name on the command line.
        description: one line for the report.
        make: builds the model for K tasks.
        make_batch: ``(batch size, K, generator, image size)`` → ``(inputs, targets)``, on the CPU.
        task_loss: ``(t, output of head t, targets)`` → the scalar loss of task t.
        batch_sizes: default batch sizes.
        has_batchnorm: the model keeps running statistics (no vmapped population).
        task_type: ``"classification"`` or ``"regression"`` (the kind of every task's loss).
    """

    name: str
    description: str
    make: Callable[[int], MultiTaskModel]
    make_batch: Callable[[int, int, torch.Generator, int], tuple[Tensor, Tensor]]
    task_loss: Callable[[int, Tensor, Tensor], Tensor]
    batch_sizes: tuple[int, ...]
    has_batchnorm: bool = False
    task_type: str = "classification"

    def losses(self, outputs: Sequence[Tensor], targets: Tensor) -> list[Tensor]:
        return [self.task_loss(t, output, targets) for t, output in enumerate(outputs)]


def _classification_loss(t: int, output: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(output, targets[:, t])


def _regression_loss(t: int, output: Tensor, targets: Tensor) -> Tensor:
    return F.mse_loss(output.reshape(-1), targets[:, t])


def _lenet_batch(batch: int, tasks: int, generator: torch.Generator, size: int) -> tuple[Tensor, Tensor]:
    x = torch.randn(batch, 1, 28, 28, generator=generator)
    return x, torch.randint(0, 10, (batch, tasks), generator=generator)


def _resnet_batch(batch: int, tasks: int, generator: torch.Generator, size: int) -> tuple[Tensor, Tensor]:
    x = torch.randn(batch, 3, size, size, generator=generator)
    return x, torch.randint(0, 2, (batch, tasks), generator=generator)


def _mlp_batch(batch: int, tasks: int, generator: torch.Generator, size: int) -> tuple[Tensor, Tensor]:
    x = torch.randn(batch, QM9MLP.input_dim, generator=generator)
    return x, torch.randn(batch, tasks, generator=generator)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "lenet",
            "Sener & Koltun's MultiMNIST LeNet (shared conv-conv-FC encoder, 50→50→10 heads), 28×28 input",
            SenerLeNet,
            _lenet_batch,
            _classification_loss,
            (256, 64),
        ),
        ModelSpec(
            "resnet18",
            "Sener & Koltun's CelebA ResNet-18 (CIFAR-style, 11.2M shared parameters), Linear(2048→2) "
            "heads, synthetic 64×64 images",
            ResNet18MultiTask,
            _resnet_batch,
            _classification_loss,
            (8,),
            has_batchnorm=True,
        ),
        ModelSpec(
            "mlp",
            "MLP on a QM9-sized input (435 → 256 → 256 → 128), Linear(128→1) regression heads, MSE",
            QM9MLP,
            _mlp_batch,
            _regression_loss,
            (120,),
            task_type="regression",
        ),
    )
}


@dataclass
class Setup:
    """One configuration: the model template, the batch, the device and the base optimizer."""

    spec: ModelSpec
    tasks: int
    batch: int
    x: Tensor
    y: Tensor
    template: MultiTaskModel
    device: torch.device
    lr: float = 1e-3
    seed: int = 0
    population: int = 5

    def model(self) -> MultiTaskModel:
        """A fresh copy of the template (every method starts from the same weights)."""
        return copy.deepcopy(self.template)

    def optimizer(self, params: Any) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.lr)

    def forward(self, model: MultiTaskModel) -> tuple[Tensor, list[Tensor]]:
        """The shared representation and the K task losses."""
        z = model.encoder(self.x)
        return z, self.spec.losses([head(z) for head in model.heads], self.y)


@dataclass
class Step:
    """A method ready to train: ``run()`` is one full training step.

    ``optimizers`` (their parameters and state), ``modules`` (their buffers) and ``tensors`` are what the
    step keeps between calls, counted as the memory held at the start of a step.
    """

    run: Callable[[], Any]
    optimizers: list[torch.optim.Optimizer]
    modules: list[nn.Module] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)

    def clear_grads(self) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        for module in self.modules:
            for p in module.parameters():
                p.grad = None

    def resident_bytes(self) -> int:
        """Bytes of the tensors held between steps (deduplicated by storage)."""
        seen: set[tuple[int, str]] = set()
        total = 0

        def add(tensor: Any) -> None:
            nonlocal total
            if not isinstance(tensor, Tensor) or tensor.device.type == "meta":
                return
            storage = tensor.untyped_storage()
            key = (storage.data_ptr(), str(tensor.device))
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()

        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    add(p)
                    add(p.grad)
            for state in optimizer.state.values():
                for value in state.values():
                    add(value)
        for module in self.modules:
            for tensor in (*module.parameters(), *module.buffers()):
                add(tensor)
        for tensor in self.tensors:
            add(tensor)
        return total


class RunnerData:
    """A configuration as the method runners (:mod:`mtlopt.benchmarks.methods`) see benchmark data: the
    model spec's losses, and the configuration's fixed batch as the training split."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    @property
    def task_types(self) -> tuple[str, ...]:
        return (self.setup.spec.task_type,) * self.setup.tasks

    def losses(self, outputs: Sequence[Tensor], targets: Tensor) -> list[Tensor]:
        return self.setup.spec.losses(outputs, targets)

    def task_loss(self, task: int, output: Tensor, targets: Tensor) -> Tensor:
        return self.setup.spec.task_loss(task, output, targets)

    def batch(self, split: str, index: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        return self.setup.x[index].to(device), self.setup.y[index].to(device)


def make_setup(config: Any, spec: ModelSpec, tasks: int, batch: int, device: torch.device) -> Setup:
    """The configuration (model template and batch) of ``spec`` with K = ``tasks``; ``config`` is a
    :class:`~mtlopt.benchmarks.speed.SpeedConfig` (its seed, image size and population size)."""
    torch.manual_seed(config.seed)
    template = spec.make(tasks).to(device).train()
    generator = torch.Generator().manual_seed(config.seed + 1)
    x, y = spec.make_batch(batch, tasks, generator, config.image_size)
    return Setup(
        spec,
        tasks,
        batch,
        x.to(device),
        y.to(device),
        template,
        device,
        seed=config.seed,
        population=config.population,
    )
