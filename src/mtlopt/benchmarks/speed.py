r"""The speed suite behind ``mtlopt speed``: the price of every method relative to equal weighting.

For each configuration (a model, a number of tasks K, a batch size) every method trains the same model
(identical initial weights, copied from one template) on the same fixed synthetic batch, with the same
base optimizer (Adam, lr 1e-3, unless a method replaces it: MAO is its own optimizer). What is measured:

Time per training step
    One step is what a training loop does per batch: ``zero_grad``, the forward pass, the method's
    backward (weights, per-task gradients, solvers, ...) and the optimizer step. Every method first takes
    ``warmup`` untimed steps. Then come ``rounds`` *interleaved* rounds: in each round every method takes
    ``steps`` timed steps in turn (the order rotates and reverses from round to round) and the round's
    median is kept. The ratio to EW is taken **per round** (EW's median of the same round), and the
    table reports the median of those ratios and their interquartile range, so a change of machine load
    during the run affects both sides of each ratio alike. The thread count is set with
    ``torch.set_num_threads`` and recorded; on CUDA every step is bracketed by
    ``torch.cuda.synchronize()``. ``budget`` caps the seconds spent timing one configuration: slow
    configurations get fewer rounds (at least ``min_rounds``) and one timed step per round.

Peak memory
    On CUDA: ``torch.cuda.max_memory_allocated()`` over one step, after ``reset_peak_memory_stats()``.
    On the CPU there is no allocator statistic, so the suite uses the PyTorch profiler's memory
    accounting (``profile_memory=True``), which records every allocation and free of tensor memory made
    through PyTorch's CPU allocator: the peak is the memory held at the start of the step (the
    parameters, optimizer state, buffers and the batch; gradients are set to ``None`` first) plus the
    high-water mark of the allocations minus frees recorded during one step. Memory that a peer keeps
    from the previous step outside those tensors (LibMTL keeps the last representation) is not counted
    at the start; its release during the step is not recorded either, so it is not subtracted.
    Allocations outside PyTorch (NumPy in the solvers: K×K) are not seen; they are negligible.

Agreement with the peers (``torchjd``, ``libmtl``)
    Before timing, in the same run, each peer method and the mtlopt method implementing the same
    algorithm take one step's backward from identical parameters on the identical batch, and the suite
    reports the largest difference of their task weights, the relative difference of the resulting
    update of the shared parameters, and, for MGDA, how far the peer's weights are above the optimal
    min-norm objective (their solvers are iterative and stop early; mtlopt's is exact). PCGrad draws
    random task orders; the suite replays the peer's own draws through :meth:`mtlopt.PCGrad.coefficients`,
    so equal orders give equal weights.

Min-norm solver table
    Gramians of real per-task gradients (a LeNet with K heads on scikit-learn's digits, relabeled per
    task, at several points of a short training run), each solved by mtlopt's default solver and the
    peers' MGDA solvers; time per call and the excess of the objective over the optimum. mtlopt's
    optimality is certified by its Frank–Wolfe duality gap: :math:`f - f^* \le 2\,\mathrm{gap}`.

Models: ``lenet`` (Sener & Koltun's MultiMNIST LeNet, 28×28, 10-class heads), ``resnet18`` (their
CelebA ResNet-18 on synthetic 64×64 images, two-class heads), ``mlp`` (an MLP on a QM9-sized input: the
upper triangle of a 29-atom Coulomb matrix, 435 values; one regression head per task, MSE).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import datetime
import functools
import importlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import random
import signal
import statistics
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import mtlopt

from .interfaces import MultiTaskModel
from .models import QM9MLP, SenerLeNet, cross_entropy_losses
from .models.vision import ResNet18MultiTask

__all__ = [
    "METHODS",
    "MODELS",
    "PEERS",
    "QM9MLP",
    "Agreement",
    "ConfigResult",
    "MethodResult",
    "ModelSpec",
    "Setup",
    "SolverRow",
    "SpeedConfig",
    "SpeedReport",
    "Step",
    "agreement",
    "import_peer",
    "run_speed",
    "write_report",
]


# --- models --------------------------------------------------------------------------------------


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
    """

    name: str
    description: str
    make: Callable[[int], MultiTaskModel]
    make_batch: Callable[[int, int, torch.Generator, int], tuple[Tensor, Tensor]]
    task_loss: Callable[[int, Tensor, Tensor], Tensor]
    batch_sizes: tuple[int, ...]
    has_batchnorm: bool = False

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
        ),
    )
}


# --- one method's training step ------------------------------------------------------------------


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


def _single_model_step(s: Setup, backward: Callable[[MultiTaskModel, Tensor, list[Tensor]], Any]) -> Step:
    model = s.model()
    optimizer = s.optimizer(model.parameters())

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        z, losses = s.forward(model)
        backward(model, z, losses)
        optimizer.step()

    return Step(run, [optimizer], [model], [s.x, s.y])


def _forward_only(s: Setup) -> Step:
    model = s.model()
    optimizer = s.optimizer(model.parameters())

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        s.forward(model)

    return Step(run, [optimizer], [model], [s.x, s.y])


def _ew(s: Setup) -> Step:
    weighting = mtlopt.EW()
    return _single_model_step(s, lambda model, z, losses: mtlopt.backward(losses, weighting))


def _ew_plain(s: Setup) -> Step:
    return _single_model_step(s, lambda model, z, losses: torch.stack(losses).mean().backward())


def _mgda(s: Setup) -> Step:
    weighting = mtlopt.MGDA()
    return _single_model_step(
        s, lambda model, z, losses: mtlopt.backward(losses, weighting, shared_params=model.encoder)
    )


def _mgda_ub(s: Setup) -> Step:
    weighting = mtlopt.MGDA()
    return _single_model_step(s, lambda model, z, losses: mtlopt.backward(losses, weighting, features=z))


def _pcgrad(s: Setup) -> Step:
    weighting = mtlopt.PCGrad(seed=s.seed)
    return _single_model_step(
        s, lambda model, z, losses: mtlopt.backward(losses, weighting, shared_params=model.encoder)
    )


def _uw(s: Setup) -> Step:
    model = s.model()
    uw = mtlopt.UncertaintyWeighting(s.tasks).to(s.device)
    optimizer = s.optimizer([{"params": model.parameters()}, {"params": uw.parameters()}])

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        _, losses = s.forward(model)
        mtlopt.backward(losses, uw)
        optimizer.step()

    return Step(run, [optimizer], [model, uw], [s.x, s.y])


def _gradnorm(s: Setup) -> Step:
    from .methods import last_weight_layer

    model = s.model()
    weighting = mtlopt.GradNorm(s.tasks, last_weight_layer(model.encoder, s.x)[1])
    optimizer = s.optimizer(model.parameters())

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        _, losses = s.forward(model)
        mtlopt.backward(losses, weighting)
        optimizer.step()

    return Step(run, [optimizer], [model], [s.x, s.y])


def _mao(s: Setup) -> Step:
    model = s.model()
    optimizer = mtlopt.MAO(
        [{"params": model.encoder.parameters(), "shared": True}, {"params": model.heads.parameters()}],
        num_tasks=s.tasks,
        lr=s.lr,
    )

    def run() -> None:
        optimizer.zero_grad()
        _, losses = s.forward(model)
        optimizer.backward(losses)
        optimizer.step()

    return Step(run, [optimizer], [model], [s.x, s.y])


def _alternating(s: Setup) -> Step:
    model = s.model()
    steps = mtlopt.AlternatingSteps(
        model.encoder, model.heads, functools.partial(torch.optim.Adam, lr=s.lr), state="per-group"
    )

    def closure(group: list[int]) -> list[Tensor]:
        z = model.encoder(s.x)
        return [s.spec.task_loss(t, model.heads[t](z), s.y) for t in group]

    # One optimizer per group (its Adam moments hold the shared parameters' state per group).
    return Step(lambda: steps.step(closure), list(steps._optimizers), [model], [s.x, s.y])


def _member_preferences(s: Setup) -> Tensor:
    generator = torch.Generator().manual_seed(s.seed)
    rows = 1.0 + torch.rand(s.population, s.tasks, generator=generator, dtype=torch.float64)
    return rows / rows.sum(dim=1, keepdim=True)


def _population_losses(s: Setup) -> Callable[[Any, Tensor], Tensor]:
    def task_losses(outputs: Any, targets: Tensor) -> Tensor:
        return torch.stack(s.spec.losses(outputs, targets))

    return task_losses


def _population(vectorize: str) -> Callable[[Setup], Step]:
    def build(s: Setup) -> Step:
        members = [s.model() for _ in range(s.population)]
        population = mtlopt.Population(
            members,
            _member_preferences(s),
            functools.partial(torch.optim.Adam, lr=s.lr),
            transfer=mtlopt.Transfer(),
            vectorize=vectorize,  # type: ignore[arg-type]
        )
        task_losses = _population_losses(s)
        modules = [] if population.vectorized else members
        return Step(
            lambda: population.step(s.x, s.y, task_losses), [population.optimizer], modules, [s.x, s.y]
        )

    return build


def _two_task_rays(s: Setup) -> Tensor:
    return mtlopt.circle_preferences(s.population, 1e-4 * math.pi / 2, (1 - 1e-4) * math.pi / 2)


def _pareto_population(kind: str) -> Callable[[Setup], Step]:
    def build(s: Setup) -> Step:
        rays = _two_task_rays(s)
        if kind == "pmtl":
            weightings: list[mtlopt.Weighting] = [mtlopt.ParetoMTL(rays, k) for k in range(s.population)]
        else:
            weightings = [mtlopt.EPO(rays[k]) for k in range(s.population)]
        members = [s.model() for _ in range(s.population)]
        population = mtlopt.Population(
            members,
            rays / rays.sum(dim=1, keepdim=True),
            functools.partial(torch.optim.Adam, lr=s.lr),
            weightings=weightings,
        )
        task_losses = _population_losses(s)
        return Step(
            lambda: population.step(s.x, s.y, task_losses), [population.optimizer], members, [s.x, s.y]
        )

    return build


# --- peers ---------------------------------------------------------------------------------------

PEERS: dict[str, str] = {
    "torchjd": "torchjd",
    "libmtl": "LibMTL",
}
_TORCHVISION_STUBS = ("torchvision", "torchvision.models", "torchvision.models.utils")


def import_peer(peer: str) -> types.ModuleType | None:
    """Import a peer library, or return None when it is not installed (or does not import).

    LibMTL 1.1.5 imports ``torchvision.models.utils`` at import time (for a pretrained ResNet it never
    downloads here), and torchvision does not import beside this project's torch: a stub of the three
    torchvision modules stands in during ``import LibMTL`` only and is removed right after, so later
    imports see no fake torchvision.
    """
    module_name = PEERS[peer]
    if module_name in sys.modules:
        return sys.modules[module_name]
    if importlib.util.find_spec(module_name) is None:
        return None
    if peer != "libmtl":
        try:
            return importlib.import_module(module_name)
        except Exception:
            return None
    added = [name for name in _TORCHVISION_STUBS if name not in sys.modules]
    for name in added:
        sys.modules[name] = types.ModuleType(name)

    def no_download(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision is stubbed out: LibMTL's pretrained weights are not available")

    if "torchvision.models.utils" in added:
        sys.modules["torchvision.models.utils"].load_state_dict_from_url = no_download  # type: ignore[attr-defined]
    try:
        module = importlib.import_module(module_name)
        importlib.import_module(f"{module_name}.weighting")
        importlib.import_module(f"{module_name}.architecture")
        return module
    except Exception:
        return None
    finally:
        for name in added:
            sys.modules.pop(name, None)


def peer_version(peer: str) -> str:
    try:
        return importlib.metadata.version(PEERS[peer])
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _torchjd_step(aggregator_name: str) -> Callable[[Setup], Step]:
    def build(s: Setup) -> Step:
        import_peer("torchjd")
        from torchjd import aggregation
        from torchjd.autojac import jac_to_grad, mtl_backward

        aggregator = getattr(aggregation, aggregator_name)()
        model = s.model()
        optimizer = s.optimizer(model.parameters())

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            z, losses = s.forward(model)
            mtl_backward(losses, features=z)
            jac_to_grad(model.encoder.parameters(), aggregator)
            optimizer.step()

        return Step(run, [optimizer], [model], [s.x, s.y])

    return build


def _libmtl_model(
    s: Setup, weighting_name: str, rep_grad: bool, base: MultiTaskModel | None = None
) -> nn.Module:
    """LibMTL's hard-parameter-sharing model (``HPS`` + a weighting), outside LibMTL's trainer.

    LibMTL's ``Trainer`` hard-codes ``cuda:0``, so the model class is built the way the trainer builds
    it, from this configuration's encoder and heads. One compatibility shim: LibMTL 1.1.5 zeroes the
    shared gradients between tasks with ``encoder.zero_grad()``, which since torch 2.0 sets them to
    ``None`` and then breaks its own ``_reset_grad``; the shim zeroes them in place (the behaviour of the
    torch versions LibMTL was written for).
    """
    libmtl = import_peer("libmtl")
    if libmtl is None:
        raise RuntimeError("LibMTL is not importable")
    from LibMTL.architecture import HPS

    weighting = getattr(libmtl.weighting, weighting_name)
    source = base if base is not None else s.model()
    names = [f"task{t}" for t in range(s.tasks)]
    encoder = source.encoder
    decoders = nn.ModuleDict(dict(zip(names, source.heads)))

    class Model(HPS, weighting):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(names, lambda: encoder, decoders, rep_grad, False, s.device)
            self.init_param()

        def zero_grad_share_params(self) -> None:
            self.encoder.zero_grad(set_to_none=False)

    model = Model().to(s.device)
    model.task_names = names
    if weighting_name == "GradNorm":  # past LibMTL's first (equal-weight) epoch, L(0) known
        model.epoch = 1
        model.train_loss_buffer = np.ones((s.tasks, 1))
    return model


_LIBMTL_KWARGS: dict[str, dict[str, Any]] = {"MGDA": {"mgda_gn": "none"}, "GradNorm": {"alpha": 1.5}}


def _libmtl_losses(s: Setup, model: nn.Module) -> Tensor:
    out = model(s.x)
    return torch.stack(s.spec.losses([out[name] for name in model.task_names], s.y))


def _libmtl_step(weighting_name: str, rep_grad: bool = False) -> Callable[[Setup], Step]:
    def build(s: Setup) -> Step:
        model = _libmtl_model(s, weighting_name, rep_grad)
        optimizer = s.optimizer(model.parameters())
        kwargs = _LIBMTL_KWARGS.get(weighting_name, {})

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            model.backward(_libmtl_losses(s, model), **kwargs)
            optimizer.step()

        return Step(run, [optimizer], [model], [s.x, s.y])

    return build


# --- the methods ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A row of the table.

    Attributes:
        name: the name on the command line and in the files.
        description: one line for the report.
        build: makes the method's :class:`Step` for a configuration.
        peer: the peer library it comes from (None: mtlopt).
        reference: the mtlopt method implementing the same algorithm (for the agreement check).
        skip: returns why the method is skipped for a configuration, or None.
    """

    name: str
    description: str
    build: Callable[[Setup], Step]
    peer: str | None = None
    reference: str | None = None
    skip: Callable[[Setup], str | None] = field(default=lambda s: None)


def _only_two_tasks(s: Setup) -> str | None:
    if s.tasks != 2:
        return "two-task preference rays only (each of the 5 members takes K backward passes)"
    return None


def _no_batchnorm(s: Setup) -> str | None:
    if s.spec.has_batchnorm:
        return "vmap cannot update BatchNorm running statistics (the population loops)"
    return None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("forward-only", "zero_grad and the forward pass, no backward (reference)", _forward_only),
        Method("ew", "equal weighting through mtlopt.backward (the reference)", _ew),
        Method("ew-plain", "equal weighting as torch.stack(losses).mean().backward(), no mtlopt", _ew_plain),
        Method("mgda", "exact MGDA: per-task gradients of the shared parameters", _mgda),
        Method("mgda-ub", "MGDA-UB: per-task gradients of the representation", _mgda_ub),
        Method("pcgrad", "PCGrad on the shared parameters", _pcgrad),
        Method("uw", "uncertainty weighting (learned log-variances)", _uw),
        Method("gradnorm", "GradNorm at the last shared layer", _gradnorm),
        Method("mao", "MAO: per-task Adam moments of the shared parameters", _mao),
        Method("alternating", "alternating steps, one group per task, per-group Adam", _alternating),
        Method(
            "population", "5 models with transfer (vectorize='auto': a loop on the CPU)", _population("auto")
        ),
        Method(
            "population-vmap",
            "5 models with transfer, vmapped (vectorize='always')",
            _population("always"),
            skip=_no_batchnorm,
        ),
        Method(
            "pmtl", "Pareto MTL, 5 models (one per ray)", _pareto_population("pmtl"), skip=_only_two_tasks
        ),
        Method("epo", "EPO, 5 models (one per ray)", _pareto_population("epo"), skip=_only_two_tasks),
        Method(
            "torchjd-mgda",
            "TorchJD: mtl_backward + jac_to_grad(MGDA())",
            _torchjd_step("MGDA"),
            peer="torchjd",
            reference="mgda",
        ),
        Method(
            "torchjd-pcgrad",
            "TorchJD: mtl_backward + jac_to_grad(PCGrad())",
            _torchjd_step("PCGrad"),
            peer="torchjd",
            reference="pcgrad",
        ),
        Method(
            "libmtl-mgda",
            "LibMTL: HPS + MGDA (gradients of the shared parameters)",
            _libmtl_step("MGDA"),
            peer="libmtl",
            reference="mgda",
        ),
        Method(
            "libmtl-mgda-ub",
            "LibMTL: HPS + MGDA with rep_grad=True (gradients of the representation)",
            _libmtl_step("MGDA", rep_grad=True),
            peer="libmtl",
            reference="mgda-ub",
        ),
        Method(
            "libmtl-pcgrad", "LibMTL: HPS + PCGrad", _libmtl_step("PCGrad"), peer="libmtl", reference="pcgrad"
        ),
        Method("libmtl-uw", "LibMTL: HPS + UW", _libmtl_step("UW"), peer="libmtl", reference="uw"),
        Method(
            "libmtl-gradnorm",
            "LibMTL: HPS + GradNorm (all shared parameters, softmax weights)",
            _libmtl_step("GradNorm"),
            peer="libmtl",
        ),
    )
}
REFERENCE_METHODS = ("forward-only", "ew")
DEFAULT_METHODS = tuple(m for m in METHODS if METHODS[m].peer is None)


# --- agreement with the peers --------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """How a peer's step compares with mtlopt's on identical parameters and batch.

    Attributes:
        reference: the mtlopt method compared with.
        weight_diff: largest absolute difference of the task weights.
        update_diff: ‖d_peer − d_mtlopt‖ / ‖d_mtlopt‖ over the compared parameters.
        objective_excess: MGDA: :math:`(w^\\top G w - f^*) / f^*` of the peer's weights, with f* the
            optimum (mtlopt's exact solution, certified by its duality gap); None otherwise.
        note: what was compared.
    """

    reference: str
    weight_diff: float
    update_diff: float
    objective_excess: float | None
    note: str


def _flat_grads(params: Sequence[Tensor]) -> Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double().cpu() for p in params]
    )


def _relative(a: Tensor, b: Tensor) -> float:
    scale = float(b.norm())
    return float((a - b).norm()) / scale if scale > 0 else float((a - b).norm())


def _excess(G: Tensor, weights: Tensor, optimum: float) -> float:
    w = weights.double().cpu()
    w = w / w.sum()
    value = float(w @ G @ w)
    return (value - optimum) / optimum if optimum > 0 else value


def agreement(s: Setup, method: Method) -> Agreement:
    """Run ``method`` (a peer) and its mtlopt reference once from identical weights; compare."""
    name = method.name
    base = s.model()
    if name in ("torchjd-mgda", "torchjd-pcgrad"):
        return _torchjd_agreement(s, base, "MGDA" if name.endswith("mgda") else "PCGrad")
    if name == "libmtl-mgda":
        return _libmtl_mgda_agreement(s, base, rep_grad=False)
    if name == "libmtl-mgda-ub":
        return _libmtl_mgda_agreement(s, base, rep_grad=True)
    if name == "libmtl-pcgrad":
        return _libmtl_pcgrad_agreement(s, base)
    if name == "libmtl-uw":
        return _libmtl_uw_agreement(s, base)
    raise ValueError(f"no agreement check for {name}")


def _ours_mgda(s: Setup, base: MultiTaskModel, **options: Any) -> tuple[mtlopt.BackwardResult, Tensor]:
    model = copy.deepcopy(base)
    z, losses = s.forward(model)
    if options.pop("features", False):
        result = mtlopt.backward(losses, mtlopt.MGDA(**options), features=z)
    else:
        result = mtlopt.backward(losses, mtlopt.MGDA(**options), shared_params=model.encoder)
    return result, _flat_grads(list(model.encoder.parameters()))


def _ours_pcgrad(s: Setup, base: MultiTaskModel, orders: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """mtlopt's PCGrad weights for given task orders, its Gramian and its shared update."""
    model = copy.deepcopy(base)
    _, losses = s.forward(model)
    J = mtlopt.jacobian(losses, list(model.encoder.parameters()), retain_graph=False)
    G = mtlopt.gramian(J).double().cpu()
    weights = mtlopt.PCGrad().coefficients(G, orders).sum(dim=0)
    return weights, G, (weights.to(J.dtype) @ J).double().cpu()


def _torchjd_agreement(s: Setup, base: MultiTaskModel, aggregator_name: str) -> Agreement:
    import_peer("torchjd")
    from torchjd import aggregation
    from torchjd.autojac import jac_to_grad, mtl_backward

    K = s.tasks
    state = torch.random.get_rng_state()
    permutations = [torch.randperm(K).tolist() for _ in range(K)]  # TorchJD's PCGrad draws these
    torch.random.set_rng_state(state)
    peer = copy.deepcopy(base)
    z, losses = s.forward(peer)
    mtl_backward(losses, features=z)
    weights = jac_to_grad(peer.encoder.parameters(), getattr(aggregation, aggregator_name)())
    update = _flat_grads(list(peer.encoder.parameters()))
    if aggregator_name == "MGDA":
        ours, ours_update = _ours_mgda(s, base)
        assert ours.gramian is not None
        return Agreement(
            "mgda",
            float((weights.double().cpu() - ours.weights).abs().max()),
            _relative(update, ours_update),
            _excess(ours.gramian, weights, ours.diagnostics["min_norm"]),
            "TorchJD's Frank–Wolfe (ε = 0.001, at most 100 iterations) vs the exact optimum",
        )
    orders = [[j for j in perm if j != i] for i, perm in enumerate(permutations)]
    ours_weights, _, ours_update = _ours_pcgrad(s, base, orders)
    return Agreement(
        "pcgrad",
        float((weights.double().cpu() - ours_weights).abs().max()),
        _relative(update, ours_update),
        None,
        "TorchJD's random orders replayed",
    )


def _libmtl_mgda_agreement(s: Setup, base: MultiTaskModel, rep_grad: bool) -> Agreement:
    model = _libmtl_model(s, "MGDA", rep_grad, copy.deepcopy(base))
    weights = torch.as_tensor(np.asarray(model.backward(_libmtl_losses(s, model), mgda_gn="none")))
    update = _flat_grads(list(model.encoder.parameters()))
    clip = (0.001, 0.999) if s.tasks == 2 else (0.0, 1.0)  # LibMTL's two-task rule: the official clip
    if rep_grad:
        ours, ours_update = _ours_mgda(s, base, features=True, feature_batch="sum", clip=clip)
        note = "MGDA-UB with per-sample gradients summed over the batch (feature_batch='sum')"
    else:
        ours, ours_update = _ours_mgda(s, base, clip=clip)
        note = "LibMTL's projected-gradient solver (no iteration cap) vs the exact optimum"
    assert ours.gramian is not None
    return Agreement(
        "mgda-ub" if rep_grad else "mgda",
        float((weights.double() - ours.weights).abs().max()),
        _relative(update, ours_update),
        _excess(ours.gramian, weights, ours.diagnostics["min_norm"]),
        note,
    )


def _libmtl_pcgrad_agreement(s: Setup, base: MultiTaskModel) -> Agreement:
    K = s.tasks
    state = random.getstate()
    orders = []
    for _ in range(K):  # LibMTL's PCGrad draws these with random.shuffle, task i included
        order = list(range(K))
        random.shuffle(order)
        orders.append(order)
    random.setstate(state)
    model = _libmtl_model(s, "PCGrad", False, copy.deepcopy(base))
    weights = torch.as_tensor(np.asarray(model.backward(_libmtl_losses(s, model)), dtype=np.float64))
    update = _flat_grads(list(model.encoder.parameters()))
    ours_weights, _, ours_update = _ours_pcgrad(s, base, orders)
    return Agreement(
        "pcgrad",
        float((weights - ours_weights).abs().max()),
        _relative(update, ours_update),
        None,
        "LibMTL's random orders replayed (include_self=True)",
    )


def _libmtl_uw_agreement(s: Setup, base: MultiTaskModel) -> Agreement:
    model = _libmtl_model(s, "UW", False, copy.deepcopy(base))
    weights = torch.as_tensor(np.asarray(model.backward(_libmtl_losses(s, model)), dtype=np.float64))
    update = _flat_grads([*model.encoder.parameters(), *model.decoders.parameters()])
    ours_model = copy.deepcopy(base)
    uw = mtlopt.UncertaintyWeighting(s.tasks, convention="libmtl").to(s.device)
    _, losses = s.forward(ours_model)
    result = mtlopt.backward(losses, uw)
    ours_update = _flat_grads([*ours_model.encoder.parameters(), *ours_model.heads.parameters()])
    return Agreement(
        "uw",
        float((weights - result.weights).abs().max()),
        _relative(update, ours_update),
        None,
        "UncertaintyWeighting(convention='libmtl'); update of every model parameter",
    )


# --- measuring -----------------------------------------------------------------------------------


class StepTimeout(Exception):
    """A step ran past the time limit."""


@contextlib.contextmanager
def _time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise :class:`StepTimeout` in the main thread after ``seconds`` (a no-op elsewhere)."""
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise StepTimeout(f"{what} did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))  # type: ignore[arg-type]
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Step, device: torch.device, limit: float | None, what: str) -> float:
    with _time_limit(limit, what):
        _synchronize(device)
        began = time.perf_counter()
        step.run()
        _synchronize(device)
        return time.perf_counter() - began


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null (C++ log lines bypass ``sys.stderr``)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            sys.stderr.flush()
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _peak_memory(step: Step, device: torch.device) -> tuple[int, int, int]:
    """(peak, resident at the start, high-water above it) of one step, in bytes."""
    step.clear_grads()
    resident = step.resident_bytes()
    if device.type == "cuda":
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step.run()
        _synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak, start, peak - start
    from torch.profiler import ProfilerActivity, profile

    profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # the profiler's C++ back end logs its start and stop on stderr
        profiler.start()
    try:
        step.run()
    finally:
        with _quiet_stderr():
            profiler.stop()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in profiler.profiler.kineto_results.events()  # type: ignore[union-attr]
        if event.name() == "[memory]"
    )
    current = high = 0
    for _, nbytes in events:
        current += nbytes
        high = max(high, current)
    return resident + high, resident, high


@dataclass
class MethodResult:
    """One row: a method in one configuration."""

    model: str
    tasks: int
    batch: int
    method: str
    peer: str | None
    status: str = "ok"  # ok | skipped | failed | timeout
    note: str = ""
    times: list[float] = field(default_factory=list)  # per-round median step time (s)
    ratios: list[float] = field(default_factory=list)  # per-round ratio to EW
    peak_bytes: int | None = None
    resident_bytes: int | None = None
    transient_bytes: int | None = None
    memory_ratio: float | None = None
    agreement: Agreement | None = None

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def ratio_iqr(self) -> tuple[float, float] | None:
        if len(self.ratios) < 2:
            return None
        q1, _, q3 = statistics.quantiles(self.ratios, n=4, method="inclusive")
        return q1, q3

    @property
    def step_ms(self) -> float | None:
        return 1e3 * statistics.median(self.times) if self.times else None


@dataclass
class ConfigResult:
    """Every method of one (model, K, batch) configuration, measured in the same rounds."""

    model: str
    tasks: int
    batch: int
    rounds: int
    steps: int
    rows: dict[str, MethodResult]

    def pair_ratio(self, method: str, other: str) -> list[float]:
        """Per-round ratios of two methods' step times (same rounds)."""
        a, b = self.rows.get(method), self.rows.get(other)
        if a is None or b is None or not a.times or not b.times:
            return []
        return [x / y for x, y in zip(a.times, b.times)]


@dataclass(frozen=True)
class SpeedConfig:
    """What ``mtlopt speed`` measures.

    Attributes:
        models: model names (see :data:`MODELS`).
        tasks: per model, the numbers of tasks K.
        batch_sizes: per model, the batch sizes.
        methods: mtlopt methods (``ew`` and ``forward-only`` are always measured: the references).
        peers: peer libraries whose methods are added (skipped with a note when not installed).
        repeats: the most interleaved rounds per configuration.
        min_rounds: the fewest rounds, whatever the budget.
        steps: timed steps per method per round (1 when the budget is tight).
        warmup: untimed steps per method before measuring (1 when a step takes over budget / 50).
        budget: seconds of timing per configuration (rounds are reduced to fit).
        threads: ``torch.set_num_threads`` (recorded).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or ``"auto"``.
        memory: measure the peak memory.
        solver_tasks: K of the min-norm solver table (empty: no table).
        solver_gramians: Gramians per K in the solver table.
        step_timeout: seconds after which one step of a method is abandoned (LibMTL's MGDA solver has
            no iteration cap); None: no limit.
        image_size: the ResNet-18's input size.
        population: models in the population methods.
        seed: seeds the templates and the batches.
        command: the command line, for the report.
    """

    models: tuple[str, ...] = ("lenet", "resnet18", "mlp")
    tasks: dict[str, tuple[int, ...]] = field(default_factory=lambda: {m: (2, 10, 40) for m in MODELS})
    batch_sizes: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: {name: spec.batch_sizes for name, spec in MODELS.items()}
    )
    methods: tuple[str, ...] = DEFAULT_METHODS
    peers: tuple[str, ...] = ("torchjd", "libmtl")
    repeats: int = 15
    min_rounds: int = 3
    steps: int = 3
    warmup: int = 3
    budget: float = 600.0
    threads: int = 1
    device: str = "cpu"
    memory: bool = True
    solver_tasks: tuple[int, ...] = (2, 10, 40)
    solver_gramians: int = 20
    step_timeout: float | None = 300.0
    image_size: int = 64
    population: int = 5
    seed: int = 0
    command: str = ""


@dataclass(frozen=True)
class SolverRow:
    """One solver at one K in the min-norm table (Gramian given)."""

    tasks: int
    solver: str
    times: list[float]
    excess: list[float]
    certified: list[float] | None = None
    note: str = ""


@dataclass
class SpeedReport:
    """Everything one run measured."""

    config: SpeedConfig
    environment: dict[str, Any]
    configs: list[ConfigResult]
    solvers: list[SolverRow]
    notes: list[str]
    targets: list[dict[str, str]] = field(default_factory=list)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available")
    return device


def _setup(config: SpeedConfig, spec: ModelSpec, tasks: int, batch: int, device: torch.device) -> Setup:
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


def _describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(error).__name__}: {first}"[:200]


def measure_config(
    config: SpeedConfig,
    spec: ModelSpec,
    tasks: int,
    batch: int,
    methods: Sequence[str],
    device: torch.device,
    log: Callable[[str], None] = lambda line: None,
) -> ConfigResult:
    """Measure every method of one configuration (agreement, warm-up, memory, interleaved timing)."""
    setup = _setup(config, spec, tasks, batch, device)
    names = list(dict.fromkeys([*REFERENCE_METHODS, *methods]))
    rows = {name: MethodResult(spec.name, tasks, batch, name, METHODS[name].peer) for name in names}
    steps: dict[str, Step] = {}
    for name in names:
        method = METHODS[name]
        reason = method.skip(setup)
        if reason:
            rows[name].status, rows[name].note = "skipped", reason
            continue
        try:
            steps[name] = method.build(setup)
        except Exception as error:  # a peer that cannot handle this model, out of memory, ...
            rows[name].status, rows[name].note = "failed", _describe_error(error)
    for name in names:
        method = METHODS[name]
        if method.reference is None or name not in steps:
            continue
        try:
            with _time_limit(config.step_timeout, f"{name} (agreement check)"):
                rows[name].agreement = agreement(setup, method)
        except Exception as error:
            rows[name].note = f"agreement check failed: {_describe_error(error)}"

    warm: dict[str, float] = {}
    for name in list(steps):
        try:
            for _ in range(max(1, config.warmup)):
                warm[name] = _timed(steps[name], device, config.step_timeout, name)
                if warm[name] > config.budget / 50:  # a slow step: one warm-up step is enough
                    break
        except StepTimeout as error:
            rows[name].status, rows[name].note = "timeout", str(error)
            del steps[name]
        except Exception as error:
            rows[name].status, rows[name].note = "failed", _describe_error(error)
            del steps[name]
    if "ew" not in steps:
        raise RuntimeError(f"EW failed on {spec.name} K={tasks} batch={batch}: {rows['ew'].note}")
    log("  warm-up (ms): " + ", ".join(f"{name} {1e3 * seconds:.1f}" for name, seconds in warm.items()))

    if config.memory:
        for name in list(steps):
            try:
                with _time_limit(config.step_timeout, name):
                    peak, resident, transient = _peak_memory(steps[name], device)
                rows[name].peak_bytes, rows[name].resident_bytes, rows[name].transient_bytes = (
                    peak,
                    resident,
                    transient,
                )
            except Exception as error:
                rows[name].note = (rows[name].note + "; " if rows[name].note else "") + (
                    f"memory not measured: {_describe_error(error)}"
                )
        ew_peak = rows["ew"].peak_bytes
        for row in rows.values():
            if row.peak_bytes is not None and ew_peak:
                row.memory_ratio = row.peak_bytes / ew_peak

    round_cost = sum(warm[name] for name in steps)
    per_round = config.steps if round_cost * config.steps * config.min_rounds <= config.budget else 1
    affordable = int(config.budget // max(round_cost * per_round, 1e-9))
    rounds = max(config.min_rounds, min(config.repeats, affordable))
    active = list(steps)
    for r in range(rounds):
        order = active[r % len(active) :] + active[: r % len(active)]
        if r % 2:
            order.reverse()
        for name in order:
            if name not in steps:
                continue
            try:
                samples = [_timed(steps[name], device, config.step_timeout, name) for _ in range(per_round)]
            except StepTimeout as error:
                rows[name].status, rows[name].note = "timeout", str(error)
                del steps[name]
                continue
            except Exception as error:
                rows[name].status, rows[name].note = "failed", _describe_error(error)
                del steps[name]
                continue
            rows[name].times.append(statistics.median(samples))
    ew_times = rows["ew"].times
    for row in rows.values():
        if len(row.times) == len(ew_times):
            row.ratios = [t / e for t, e in zip(row.times, ew_times)]
        elif row.times:  # dropped mid-way: ratios of the rounds it finished
            row.ratios = [t / e for t, e in zip(row.times, ew_times)]
    return ConfigResult(spec.name, tasks, batch, rounds, per_round, rows)


# --- the min-norm solver table -------------------------------------------------------------------


def real_gramians(tasks: int, count: int, seed: int = 0, batch: int = 64) -> tuple[list[np.ndarray], str]:
    """Gramians of real per-task gradients and where they come from.

    A LeNet with K heads on scikit-learn's 8×8 digits (upsampled to 28×28); task t is the digit shifted
    by t (mod 10): related, conflicting labelings of the same images. One Gramian per step of a short EW
    training run. Without scikit-learn, random images stand in (said in the returned source).
    """
    torch.manual_seed(seed)
    try:
        from sklearn.datasets import load_digits

        data = load_digits()
        images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
        images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
        digits = torch.tensor(data.target)
        source = "scikit-learn digits"
    except ImportError:
        generator = torch.Generator().manual_seed(seed)
        images = torch.rand(1797, 1, 28, 28, generator=generator)
        digits = torch.randint(0, 10, (1797,), generator=generator)
        source = "random images (scikit-learn not installed)"
    labels = torch.stack([(digits + t) % 10 for t in range(tasks)], dim=1)
    model = SenerLeNet(tasks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        index = torch.randint(0, len(images), (batch,), generator=generator)
        z = model.encoder(images[index])
        losses = cross_entropy_losses([head(z) for head in model.heads], labels[index])
        J = mtlopt.jacobian(losses, list(model.encoder.parameters()))
        out.append(mtlopt.gramian(J).double().numpy())
        optimizer.zero_grad()
        mtlopt.backward(losses, mtlopt.EW())
        optimizer.step()
    return out, source


def _time_once(fn: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    value = fn()
    return time.perf_counter() - began, value


def _objective(G: np.ndarray, weights: Any) -> float:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    w = w / w.sum()
    return float(w @ G @ w)


def solver_table(
    tasks: Sequence[int], count: int, peers: Sequence[str], repeat: int = 5, limit: float | None = 30.0
) -> tuple[list[SolverRow], str]:
    """Time and accuracy of the min-norm solvers, Gramian given (float64 for mtlopt; the peers get
    float32, the dtype their training step hands them)."""
    rows = []
    source = ""
    torchjd = "torchjd" in peers and import_peer("torchjd") is not None
    libmtl = "libmtl" in peers and import_peer("libmtl") is not None
    for K in tasks:
        gramians, source = real_gramians(K, count)
        results = [mtlopt.min_norm(G) for G in gramians]
        optimum = [r.objective for r in results]
        times: list[float] = []
        for G in gramians:
            for _ in range(repeat):
                times.append(_time_once(lambda G=G: mtlopt.min_norm(G))[0])
        rows.append(
            SolverRow(
                K,
                "mtlopt (default: closed form at K = 2, active set above)",
                times,
                [(r.objective - f) / f if f > 0 else 0.0 for r, f in zip(results, optimum)],
                [2 * max(r.gap, 0.0) / r.objective if r.objective > 0 else 0.0 for r in results],
            )
        )
        if torchjd:
            from torchjd.aggregation import MGDAWeighting

            weighting = MGDAWeighting()
            times, excess = [], []
            for G, f in zip(gramians, optimum):
                G32 = torch.from_numpy(G).float()
                for _ in range(repeat):
                    seconds, weights = _time_once(lambda G32=G32, weighting=weighting: weighting(G32))
                    times.append(seconds)
                excess.append((_objective(G, weights.numpy()) - f) / f if f > 0 else 0.0)
            rows.append(
                SolverRow(
                    K, "TorchJD MGDAWeighting (Frank–Wolfe, ε = 0.001, ≤ 100 iterations)", times, excess
                )
            )
        if libmtl:
            from LibMTL.weighting import MGDA as LibMTLMGDA

            times, excess, note = [], [], ""
            for G, f in zip(gramians, optimum):
                # LibMTL's solver takes the K×P gradients and forms G itself: hand it a K×K factor.
                values, vectors = np.linalg.eigh(G)
                factor = torch.from_numpy(vectors * np.sqrt(np.clip(values, 0.0, None))).float()
                try:
                    with _time_limit(limit, "LibMTL's min-norm solver"):
                        seconds, weights = _time_once(
                            lambda factor=factor: LibMTLMGDA._find_min_norm_element(None, factor)  # type: ignore[arg-type]
                        )
                except StepTimeout as error:
                    note = str(error)
                    continue
                times.append(seconds)
                excess.append((_objective(G, weights.numpy()) - f) / f if f > 0 else 0.0)
            rows.append(
                SolverRow(
                    K, "LibMTL MGDA._find_min_norm_element (projected gradient)", times, excess, note=note
                )
            )
    return rows, source


# --- the run -------------------------------------------------------------------------------------


def _environment(config: SpeedConfig, device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.date.today().isoformat(),
        "mtlopt": mtlopt.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "peers": {peer: peer_version(peer) for peer in config.peers},
    }


def run_speed(config: SpeedConfig, log: Callable[[str], None] = print) -> SpeedReport:
    """Measure every configuration of ``config`` and return the report (nothing is written)."""
    unknown = [m for m in config.models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; expected some of {', '.join(MODELS)}")
    bad = [m for m in config.methods if m not in METHODS or METHODS[m].peer is not None]
    if bad:
        ours = ", ".join(m for m in METHODS if METHODS[m].peer is None)
        raise ValueError(f"unknown method(s) {', '.join(bad)}; expected some of {ours}")
    bad_peers = [p for p in config.peers if p not in PEERS]
    if bad_peers:
        raise ValueError(f"unknown peer(s) {', '.join(bad_peers)}; expected some of {', '.join(PEERS)}")
    device = _resolve_device(config.device)
    torch.set_num_threads(config.threads)
    notes = []
    methods = list(config.methods)
    for peer in config.peers:
        if import_peer(peer) is None:
            notes.append(
                f"{PEERS[peer]} is not installed: its rows are skipped (install the peers with "
                "`bash scripts/install_peers.sh`)."
            )
            continue
        methods += [name for name, m in METHODS.items() if m.peer == peer]
    environment = _environment(config, device)
    results = []
    for model in config.models:
        spec = MODELS[model]
        for tasks in config.tasks[model]:
            for batch in config.batch_sizes[model]:
                log(f"[speed] {model}, K = {tasks}, batch {batch}")
                results.append(measure_config(config, spec, tasks, batch, methods, device, log))
                for row in results[-1].rows.values():
                    if row.ratio is not None:
                        log(f"  {row.method:<16} {row.ratio:6.2f}× EW")
    solvers: list[SolverRow] = []
    if config.solver_tasks:
        log("[speed] min-norm solvers")
        solvers, source = solver_table(
            config.solver_tasks,
            config.solver_gramians,
            [p for p in config.peers if import_peer(p)],
            limit=config.step_timeout,
        )
        environment["solver_gramians"] = source
    report = SpeedReport(config, environment, results, solvers, notes)
    report.targets = evaluate_targets(report)
    return report


# --- targets -------------------------------------------------------------------------------------

ANCHOR_SMALL = ("lenet", 2, 256)  # two-task LeNet, batch 256
ANCHOR_LARGE = ("lenet", 40, 64)  # 40-task small CNN, batch 64


def _find(report: SpeedReport, key: tuple[str, int, int]) -> ConfigResult | None:
    return next((c for c in report.configs if (c.model, c.tasks, c.batch) == key), None)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _shares(config: ConfigResult) -> tuple[float, float] | None:
    forward = config.rows["forward-only"].ratio
    if forward is None:
        return None
    return forward, max(1.0 - forward, 0.0)


def evaluate_targets(report: SpeedReport) -> list[dict[str, str]]:
    """The acceptance targets of the issue, each with the measured value and whether it is met."""
    targets: list[dict[str, str]] = []

    def add(target: str, anchor: str, value: float | None, limit: float, unit: str, why: str) -> None:
        if value is None:
            targets.append(
                {"target": target, "anchor": anchor, "measured": "not measured", "met": "—", "note": why}
            )
            return
        met = value <= limit
        shown = f"{value:.3g} {unit}".strip()
        targets.append(
            {
                "target": target,
                "anchor": anchor,
                "measured": shown,
                "met": "yes" if met else "**no**",
                "note": "" if met else why,
            }
        )

    forty = [row for row in report.solvers if row.tasks == 40 and row.solver.startswith("mtlopt")]
    if forty:
        row = forty[0]
        worst = max(max(row.excess), max(row.certified or [0.0]))
        median_ms = 1e3 * statistics.median(row.times)
        met = worst <= 1e-6 and median_ms <= 1.0
        targets.append(
            {
                "target": "min-norm solve at K = 40 (Gramian given): within 1e-6 of the optimum, ≤ 1 ms",
                "anchor": "official solver 0.3–1 s; TorchJD 6% and LibMTL 279% above the optimum",
                "measured": f"{median_ms:.3f} ms (median), certified excess ≤ {worst:.1e}",
                "met": "yes" if met else "**no**",
                "note": ""
                if met
                else "NumPy dispatch per active-set iteration (about 34 iterations at K = 40)",
            }
        )
    else:
        add("min-norm solve at K = 40", "", None, 0, "", "the solver table did not include K = 40")

    small, large = _find(report, ANCHOR_SMALL), _find(report, ANCHOR_LARGE)
    missing = "configuration not in this run (lenet K = {} batch {})"
    for config, limit, anchor, key in (
        (small, 1.03, "LibMTL MGDA-UB 1.0×", ANCHOR_SMALL),
        (large, 1.10, "LibMTL MGDA-UB 1.33×", ANCHOR_LARGE),
    ):
        value = config.rows["mgda-ub"].ratio if config and "mgda-ub" in config.rows else None
        why = (
            missing.format(key[1], key[2])
            if config is None
            else (
                "beyond EW's single backward pass: the hooks that collect each task's gradient "
                "w.r.t. Z, the K×K Gramian of those (K·B·D values) and the solve, one host "
                "synchronization; at this step size they are a few per cent"
            )
        )
        add(f"MGDA-UB step ≤ {limit:.2f}× EW at K = {key[1]}", anchor, value, limit, "× EW", why)

    value = small.rows["mgda"].ratio if small and "mgda" in small.rows else None
    why = missing.format(2, 256)
    if small is not None and (shares := _shares(small)):
        f, b = shares
        why = (
            f"exact MGDA needs one backward pass per task through the encoder; the forward is {f:.2f}× "
            f"and one backward {b:.2f}× an EW step (measured here), so two backward passes alone cost "
            f"{f + 2 * b:.2f}× EW"
        )
    add("exact MGDA step ≤ 1.3× EW at K = 2", "TorchJD/LibMTL 1.6–1.8×", value, 1.3, "× EW", why)

    if large is not None and "libmtl-mgda" in large.rows and large.rows["libmtl-mgda"].times:
        ratio = _median(large.pair_ratio("mgda", "libmtl-mgda"))
        ours_peak, their_peak = large.rows["mgda"].peak_bytes, large.rows["libmtl-mgda"].peak_bytes
        add(
            "exact MGDA step at K = 40 ≤ 0.75× LibMTL's time",
            "27–65× EW",
            ratio,
            0.75,
            "× LibMTL",
            "see the K = 40 rows",
        )
        if ours_peak is not None and their_peak is not None:
            add(
                "exact MGDA peak memory at K = 40 ≤ LibMTL's",
                "",
                ours_peak / their_peak,
                1.0,
                "× LibMTL",
                "the K×P Jacobian is held once by both; the rest is the retained graph",
            )
    else:
        add(
            "exact MGDA step at K = 40 ≤ 0.75× LibMTL's time",
            "27–65× EW",
            None,
            0.75,
            "",
            "LibMTL not measured at lenet K = 40 batch 64",
        )

    value = small.rows["mao"].ratio if small and "mao" in small.rows else None
    why = missing.format(2, 256)
    if small is not None and (shares := _shares(small)):
        f, b = shares
        why = (
            f"MAO needs each task's gradient of the shared parameters: K backward passes through the "
            f"encoder, {f + 2 * b:.2f}× EW for the passes alone at K = 2 (forward {f:.2f}×, backward {b:.2f}×)"
        )
    add("MAO step ≤ 1.3× EW at K = 2", "", value, 1.3, "× EW", why)

    value = small.rows["population"].ratio if small and "population" in small.rows else None
    why = missing.format(2, 256)
    if small is not None:
        vmapped = small.rows.get("population-vmap")
        why = (
            "5 models do 5× the arithmetic of one; on a CPU thread that work is serial, and vmap only "
            "batches the kernels"
            + (f" ({vmapped.ratio:.2f}× EW vmapped)" if vmapped is not None and vmapped.ratio else "")
            + "; the target needs an accelerator, where one batched kernel replaces five"
        )
    add("population of 5 LeNets ≤ 2.5× one LeNet step", "", value, 2.5, "× EW", why)
    return targets


# --- writing -------------------------------------------------------------------------------------


def _mb(value: int | None) -> str:
    return "" if value is None else f"{value / 2**20:.1f}"


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def _agreement_text(agreement: Agreement | None) -> str:
    if agreement is None:
        return ""
    text = f"vs {agreement.reference}: weights Δ {agreement.weight_diff:.1e}, update Δ {agreement.update_diff:.1e}"
    if agreement.objective_excess is not None:
        text += f", objective +{100 * agreement.objective_excess:.2g}%"
    return text


def markdown(report: SpeedReport) -> str:
    """The report as Markdown."""
    config, env = report.config, report.environment
    peers = ", ".join(f"{PEERS[p]} {v}" for p, v in env["peers"].items()) or "none"
    lines = [
        "# Speed: time per step and peak memory relative to EW",
        "",
        f"Generated by `{config.command or 'mtlopt speed'}` on {env['date']}: mtlopt {env['mtlopt']}, "
        f"torch {env['torch']}, numpy {env['numpy']}, Python {env['python']}, {env['cpu']}, "
        f"device {env['device']}, **{env['threads']} thread(s)**; peers: {peers}.",
        "",
        "How it is measured (details in `src/mtlopt/benchmarks/speed.py`): every method trains a copy of "
        "the same model (identical weights) on the same synthetic batch with Adam (lr 1e-3; MAO is its own "
        "Adam-like optimizer); a step is zero_grad + forward + the method's backward + the optimizer step. "
        f"After {config.warmup} warm-up steps, the methods of a configuration run in interleaved rounds "
        f"(up to {config.repeats}, at least {config.min_rounds}, fewer when a configuration would exceed "
        f"{config.budget:g} s), {config.steps} timed steps each per round (1 when slow); the ratio to EW "
        "is taken per round, and the table gives its median and interquartile range. `ew` is "
        "`mtlopt.backward` with EW, the reference of every ratio; `ew-plain` is the same step without "
        "mtlopt; `forward-only` is zero_grad + forward (the forward's share of a step). Peak memory: "
        + (
            "`torch.cuda.max_memory_allocated` over one step."
            if env["device"] != "cpu"
            else "the tensors held at the start of a step (parameters, optimizer state, buffers, batch; "
            "gradients cleared) plus the high-water mark of the tensor allocations minus frees during one "
            "step, recorded by the PyTorch profiler's CPU memory accounting."
        ),
        "",
    ]
    if report.targets:
        lines += [
            "## Targets",
            "",
            "| target | anchor | measured | met | why not |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {t['target']} | {t['anchor']} | {t['measured']} | {t['met']} | {t['note']} |"
            for t in report.targets
        ]
        lines.append("")
    if report.solvers:
        lines += [
            "## Min-norm solvers (Gramian given)",
            "",
            f"Gramians of real per-task gradients ({env.get('solver_gramians', '')}; LeNet encoder, "
            f"{config.solver_gramians} Gramians along a short training run per K). Excess: "
            "(f − f*)/f* with f* mtlopt's exact optimum; certified: mtlopt's bound 2·gap/f from the "
            "Frank–Wolfe duality gap, which holds whatever the reference.",
            "",
            "| K | solver | median (ms) | p90 (ms) | excess median / max | certified excess (max) | note |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in report.solvers:
            if row.times:
                p90 = float(np.percentile(row.times, 90))
                timing = f"{1e3 * statistics.median(row.times):.3f} | {1e3 * p90:.3f}"
                excess = f"{statistics.median(row.excess):.1e} / {max(row.excess):.1e}"
            else:
                timing, excess = "— | —", "—"
            certified = f"{max(row.certified):.1e}" if row.certified else ""
            lines.append(f"| {row.tasks} | {row.solver} | {timing} | {excess} | {certified} | {row.note} |")
        lines.append("")
    for model in dict.fromkeys(c.model for c in report.configs):
        spec = MODELS[model]
        lines += [
            f"## {model}",
            "",
            f"{spec.description}.",
            "",
            "| K | batch | method | step / EW (median) | IQR | step (ms) | peak memory / EW | peak (MiB) | agreement with mtlopt | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in report.configs:
            if c.model != model:
                continue
            for row in c.rows.values():
                iqr = row.ratio_iqr
                note = row.note if row.status == "ok" else f"{row.status}: {row.note}"
                lines.append(
                    f"| {c.tasks} | {c.batch} | {row.method} | {_fmt(row.ratio, '.2f', '×')} | "
                    f"{'' if iqr is None else f'{iqr[0]:.2f}–{iqr[1]:.2f}'} | {_fmt(row.step_ms, '.1f')} | "
                    f"{_fmt(row.memory_ratio, '.2f', '×')} | {_mb(row.peak_bytes)} | "
                    f"{_agreement_text(row.agreement)} | {note} |"
                )
        rounds = {(c.tasks, c.batch): (c.rounds, c.steps) for c in report.configs if c.model == model}
        lines += [
            "",
            "Rounds × timed steps per round: "
            + ", ".join(f"K = {k} batch {b}: {r} × {s}" for (k, b), (r, s) in rounds.items())
            + ".",
            "",
        ]
    lines += ["## Notes", ""]
    lines += [f"- {note}" for note in report.notes]
    lines += [
        "- Methods: " + "; ".join(f"`{m}`: {METHODS[m].description}" for m in METHODS) + ".",
        "- LibMTL 1.1.5 runs outside its trainer (which hard-codes `cuda:0`): its `HPS` architecture class "
        "combined with a weighting class, as the trainer does, with one shim: it zeroes the shared "
        "gradients between tasks with `zero_grad()`, which sets them to `None` since torch 2.0 and then "
        "breaks its `_reset_grad`, so the shim zeroes them in place. It is imported with a temporary "
        "stub of `torchvision` (removed right after the import).",
        "- LibMTL's MGDA with `rep_grad=True` keeps one representation per task and backpropagates each "
        "through the encoder (K encoder backward passes); mtlopt's MGDA-UB backpropagates the encoder once.",
        "- GradNorm differs between the libraries (LibMTL: softmax-parameterized weights stepped by the "
        "model's optimizer, gradient norms over every shared parameter; mtlopt: the paper's weights at the "
        "last shared layer): timed side by side, weights not compared. CAGrad is not in mtlopt (and "
        "LibMTL 1.1.5's CAGrad hard-codes three tasks), so it is not compared.",
        "- Ratios below the K backward passes of an exact method are impossible: where a target is not "
        "met the table says why, from the forward and backward shares measured in the same run.",
        "",
    ]
    return "\n".join(lines)


CSV_FIELDS = (
    "model",
    "tasks",
    "batch",
    "method",
    "peer",
    "status",
    "rounds",
    "steps_per_round",
    "step_ms_median",
    "ratio_median",
    "ratio_q1",
    "ratio_q3",
    "peak_bytes",
    "resident_bytes",
    "transient_bytes",
    "memory_ratio",
    "agreement_reference",
    "weight_diff",
    "update_rel_diff",
    "objective_excess",
    "note",
    "threads",
    "device",
    "torch",
)


def write_csv(report: SpeedReport, path: Path) -> None:
    env = report.environment
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for c in report.configs:
            for row in c.rows.values():
                iqr = row.ratio_iqr
                agreement = row.agreement
                writer.writerow(
                    {
                        "model": c.model,
                        "tasks": c.tasks,
                        "batch": c.batch,
                        "method": row.method,
                        "peer": row.peer or "",
                        "status": row.status,
                        "rounds": len(row.times),
                        "steps_per_round": c.steps,
                        "step_ms_median": _fmt(row.step_ms, ".4f"),
                        "ratio_median": _fmt(row.ratio, ".4f"),
                        "ratio_q1": "" if iqr is None else f"{iqr[0]:.4f}",
                        "ratio_q3": "" if iqr is None else f"{iqr[1]:.4f}",
                        "peak_bytes": "" if row.peak_bytes is None else row.peak_bytes,
                        "resident_bytes": "" if row.resident_bytes is None else row.resident_bytes,
                        "transient_bytes": "" if row.transient_bytes is None else row.transient_bytes,
                        "memory_ratio": _fmt(row.memory_ratio, ".4f"),
                        "agreement_reference": agreement.reference if agreement else "",
                        "weight_diff": f"{agreement.weight_diff:.3e}" if agreement else "",
                        "update_rel_diff": f"{agreement.update_diff:.3e}" if agreement else "",
                        "objective_excess": (
                            f"{agreement.objective_excess:.3e}"
                            if agreement and agreement.objective_excess is not None
                            else ""
                        ),
                        "note": row.note,
                        "threads": env["threads"],
                        "device": env["device"],
                        "torch": env["torch"],
                    }
                )


def plot_overhead(report: SpeedReport, path: Path) -> None:
    """Step time / EW against K, one panel per (model, batch), one line per method (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((c.model, c.batch) for c in report.configs))
    columns = min(3, max(1, len(panels)))
    rows = math.ceil(len(panels) / columns) if panels else 1
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.9 * rows), squeeze=False)
    methods = [m for m in METHODS if m != "forward-only"]
    cmap = plt.get_cmap("tab20")
    for index, (model, batch) in enumerate(panels):
        axis = axes[index // columns][index % columns]
        configs = sorted(
            (c for c in report.configs if (c.model, c.batch) == (model, batch)), key=lambda c: c.tasks
        )
        for i, method in enumerate(methods):
            points = [
                (c.tasks, c.rows[method].ratio) for c in configs if method in c.rows and c.rows[method].ratio
            ]
            if not points:
                continue
            style = "--" if METHODS[method].peer else "-"
            axis.plot(*zip(*points), style, marker="o", markersize=3, color=cmap(i % 20), label=method)
        axis.set_xscale("log")
        axis.set_yscale("log")
        ks = sorted({c.tasks for c in configs})
        axis.set_xticks(ks)
        axis.set_xticklabels([str(k) for k in ks])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no 3×10⁰ labels between
        axis.set_xlabel("number of tasks K")
        axis.set_ylabel("step time / EW")
        axis.set_title(f"{model}, batch {batch}")
        axis.grid(True, which="both", alpha=0.3)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    handles, labels = {}, {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
            labels[label] = label
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="center right", fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 0.84, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: SpeedReport, out: Path) -> list[Path]:
    """Write ``speed.md``, ``speed.csv`` and ``overhead.png`` under ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "speed.md", out / "speed.csv", out / "overhead.png"]
    paths[0].write_text(markdown(report))
    write_csv(report, paths[1])
    plot_overhead(report, paths[2])
    return paths
