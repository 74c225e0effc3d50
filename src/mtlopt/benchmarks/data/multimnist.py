"""The MultiMNIST family: two items on one canvas; task 1 classifies the top-left item, task 2 the other.

Benchmarks: ``multimnist`` (two MNIST digits), ``multifashion`` (two Fashion-MNIST items) and
``multifashion+mnist`` (an MNIST digit top-left, a Fashion-MNIST item bottom-right).

Protocols (``benchmarks.md`` §1):

``sener`` (Sener & Koltun 2018; official ``multi_mnist_loader.py``)
    36×36 canvas, item A at [0:28, 0:28], item B at [6:34, 6:34], pixelwise max, resized to 28×28 by
    nearest neighbour; one composite per source image of A with a uniformly drawn partner (a different
    image when both items come from the same family). Inputs normalized with the official constants
    (x/255 − 0.1307) / 0.3081.
``pmtl`` (Pareto MTL 2019 and the set-learning papers after it)
    36×36 canvas kept; A's corner at (0, 0) and B's at (8, 8), each moved by a uniform integer in
    [−4, 4] per axis, the part outside the canvas cut off; pixelwise max; inputs x/255, no
    normalization. 108,000 train + 12,000 validation composites (the published 120,000 training
    composites, of which the published works held out 10%) and 20,000 test composites, each pairing two
    uniformly drawn source images. The public pickles' seed and merge rule are undocumented; these
    choices are recorded in the result files.

Validation: the published works split 10% of the training *composites*, which puts the same source
images in training and validation. Here the training source images are split first (``val_fraction``
of them, drawn with the seed), and each split's composites use only its own source images.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..interfaces import CLASSIFICATION_METRICS, BenchmarkData, DataOptions
from .sources import ImageSet, default_cache_dir, load_fashion_mnist, load_mnist

BENCHMARKS = {
    "multimnist": ("mnist", "mnist"),
    "multifashion": ("fashion", "fashion"),
    "multifashion+mnist": ("mnist", "fashion"),
}
PROTOCOLS = ("sener", "pmtl")
SPLITS = ("train", "val", "test")
NORMALIZATION = {"sener": (0.1307, 0.3081), "pmtl": (0.0, 1.0)}
PMTL_SIZES = {"train": 108_000, "val": 12_000, "test": 20_000}
_FORMAT_VERSION = 3  # bump when the construction changes, so that stale caches are not reused


@dataclass(frozen=True)
class CompositeConfig:
    """What determines a composite dataset (everything that goes into its cache key).

    Attributes:
        benchmark: ``"multimnist"``, ``"multifashion"`` or ``"multifashion+mnist"``.
        protocol: ``"sener"`` or ``"pmtl"``.
        seed: drives the source split, the pairing and the jitter.
        val_fraction: share of the training source images held out for validation.
        sizes: composites per split for ``pmtl`` (default 108k / 12k / 20k); ignored by ``sener``.
        max_sources: keep at most this many source images per split (small runs, tests).
    """

    benchmark: str
    protocol: str = "sener"
    seed: int = 0
    val_fraction: float = 0.1
    sizes: dict[str, int] = field(default_factory=lambda: dict(PMTL_SIZES))
    max_sources: int | None = None

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {self.benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; expected one of {', '.join(PROTOCOLS)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if set(self.sizes) != set(SPLITS) or any(v < 1 for v in self.sizes.values()):
            raise ValueError(f"sizes must give a positive count for each of {SPLITS}, got {self.sizes}")
        if self.max_sources is not None and self.max_sources < 2:
            raise ValueError(f"max_sources must be at least 2, got {self.max_sources}")


@dataclass
class CompositeSplit:
    """One split: composites, labels (N, 2), the source items (N, 2) and their positions (N, 4).

    ``sources[n, k]`` indexes the original ``source_split`` array ("train" or "test") of item k's family;
    ``positions[n]`` holds the (row, column) of the top-left corner of items A and B on the 36×36 canvas.
    """

    images: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    positions: np.ndarray
    source_split: str


@dataclass
class CompositeDataset:
    config: CompositeConfig
    splits: dict[str, CompositeSplit]
    meta: dict[str, object]

    @property
    def normalization(self) -> tuple[float, float]:
        return NORMALIZATION[self.config.protocol]


def load_composites(
    config: CompositeConfig,
    *,
    data_root: str | Path | None = None,
    mnist_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = True,
) -> CompositeDataset:
    """Build (or read from the cache) the composite dataset described by ``config``."""
    families = _load_families(config.benchmark, data_root, mnist_root, cache_dir, download)
    key = _cache_key(config, families)
    cache = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "composites"
    path = cache / f"{config.benchmark}-{config.protocol}-{key[:16]}.npz"
    if path.is_file():
        try:
            return _read_cache(path, config)
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # unreadable (e.g. an interrupted write elsewhere): rebuild
    dataset = build_composites(config, families)
    cache.mkdir(parents=True, exist_ok=True)
    _write_cache(path, dataset)
    return dataset


def build_composites(config: CompositeConfig, families: dict[str, ImageSet]) -> CompositeDataset:
    """Build the composites from loaded source images (no cache)."""
    family_a, family_b = (families[name] for name in BENCHMARKS[config.benchmark])
    same_family = family_a is family_b
    pools_a = _source_pools(family_a, config, stream=0)
    pools_b = pools_a if same_family else _source_pools(family_b, config, stream=1)
    splits = {}
    for split_index, split in enumerate(SPLITS):
        rng = np.random.default_rng([config.seed, split_index, PROTOCOLS.index(config.protocol), 7])
        source_split = "test" if split == "test" else "train"
        images_a = family_a.test_images if split == "test" else family_a.train_images
        images_b = family_b.test_images if split == "test" else family_b.train_images
        labels_a = family_a.test_labels if split == "test" else family_a.train_labels
        labels_b = family_b.test_labels if split == "test" else family_b.train_labels
        pool_a, pool_b = pools_a[split], pools_b[split]
        if config.protocol == "sener":
            index_a = pool_a
            index_b = _partners(pool_a, pool_b, same_family, rng)
            composites = _sener_composites(images_a[index_a], images_b[index_b])
            positions = np.tile(np.array([0, 0, 6, 6]), (len(index_a), 1))
        else:
            count = config.sizes[split]
            index_a = pool_a[rng.integers(0, len(pool_a), count)]
            index_b = pool_b[rng.integers(0, len(pool_b), count)]
            positions = np.array([0, 0, 8, 8]) + rng.integers(-4, 5, size=(count, 4))
            composites = _pmtl_composites(images_a[index_a], images_b[index_b], positions)
        splits[split] = CompositeSplit(
            images=composites,
            labels=np.stack([labels_a[index_a], labels_b[index_b]], axis=1).astype(np.int64),
            sources=np.stack([index_a, index_b], axis=1).astype(np.int64),
            positions=positions.astype(np.int64),
            source_split=source_split,
        )
    meta = {
        "benchmark": config.benchmark,
        "protocol": config.protocol,
        "construction": _describe_protocol(config.protocol),
        "seed": config.seed,
        "val_fraction": config.val_fraction,
        "max_sources": config.max_sources,
        "sizes": {split: len(s.labels) for split, s in splits.items()},
        "source_pools": {split: len(pools_a[split]) for split in SPLITS},
        "normalization": {
            "mean": NORMALIZATION[config.protocol][0],
            "std": NORMALIZATION[config.protocol][1],
        },
        "sources": {"item_a": family_a.describe(), "item_b": family_b.describe()},
    }
    return CompositeDataset(config, splits, meta)


def _load_families(benchmark, data_root, mnist_root, cache_dir, download) -> dict[str, ImageSet]:
    needed = set(BENCHMARKS[benchmark])
    families: dict[str, ImageSet] = {}
    if "fashion" in needed:
        families["fashion"] = load_fashion_mnist(data_root, cache_dir, download)
    if "mnist" in needed:
        families["mnist"] = load_mnist(mnist_root)
    return families


def _source_pools(family: ImageSet, config: CompositeConfig, stream: int) -> dict[str, np.ndarray]:
    """Disjoint source-image indices for train/val (from the train array) and test (test array)."""
    rng = np.random.default_rng([config.seed, stream, 11])
    order = rng.permutation(len(family.train_labels))
    n_val = max(1, round(config.val_fraction * len(order)))
    pools = {
        "val": np.sort(order[:n_val]),
        "train": np.sort(order[n_val:]),
        "test": np.arange(len(family.test_labels)),
    }
    if config.max_sources is not None:  # a random subset (the arrays can be ordered by class)
        subset = np.random.default_rng([config.seed, stream, 13])
        pools = {
            split: np.sort(subset.permutation(pool)[: config.max_sources]) for split, pool in pools.items()
        }
    return pools


def _partners(
    pool_a: np.ndarray, pool_b: np.ndarray, same_family: bool, rng: np.random.Generator
) -> np.ndarray:
    """One uniformly drawn partner per item of ``pool_a`` (never itself when the pools are the same)."""
    if not same_family:
        return pool_b[rng.integers(0, len(pool_b), len(pool_a))]
    # Draw among the other n - 1 positions: shift draws at or past one's own position by one.
    n = len(pool_a)
    if n < 2:
        return pool_a.copy()
    draws = rng.integers(0, n - 1, n)
    draws += draws >= np.arange(n)
    return pool_a[draws]


_SENER_RESIZE = np.floor((np.arange(28) + 0.5) * 36 / 28).astype(np.int64)  # nearest, as PIL


def _sener_composites(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    canvas = np.zeros((len(a), 36, 36), dtype=np.uint8)
    canvas[:, 0:28, 0:28] = a
    canvas[:, 6:34, 6:34] = np.maximum(canvas[:, 6:34, 6:34], b)
    return np.ascontiguousarray(canvas[:, _SENER_RESIZE][:, :, _SENER_RESIZE])


def _pmtl_composites(a: np.ndarray, b: np.ndarray, positions: np.ndarray) -> np.ndarray:
    canvas = np.zeros((len(a), 36, 36), dtype=np.uint8)
    for items, corners in ((a, positions[:, :2]), (b, positions[:, 2:])):
        for row, col in np.unique(corners, axis=0):
            which = np.flatnonzero((corners[:, 0] == row) & (corners[:, 1] == col))
            r0, r1 = max(row, 0), min(row + 28, 36)
            c0, c1 = max(col, 0), min(col + 28, 36)
            patch = items[which][:, r0 - row : r1 - row, c0 - col : c1 - col]
            canvas[which, r0:r1, c0:c1] = np.maximum(canvas[which, r0:r1, c0:c1], patch)
    return canvas


def _describe_protocol(protocol: str) -> str:
    if protocol == "sener":
        return (
            "36x36 canvas, item A at [0:28,0:28], item B at [6:34,6:34], pixelwise max, nearest resize to "
            "28x28; one composite per source image of A with a uniform partner; (x/255-0.1307)/0.3081"
        )
    return (
        "36x36 canvas, A corner (0,0) and B corner (8,8) each moved by U{-4..4} per axis and cropped to the "
        "canvas, pixelwise max, x/255; pairs drawn uniformly"
    )


def _cache_key(config: CompositeConfig, families: dict[str, ImageSet]) -> str:
    payload = {
        "config": asdict(config),
        "sources": {name: family.sha256 for name, family in sorted(families.items())},
        "version": _FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _write_cache(path: Path, dataset: CompositeDataset) -> None:
    arrays = {}
    for split, data in dataset.splits.items():
        arrays[f"{split}_images"] = data.images
        arrays[f"{split}_labels"] = data.labels
        arrays[f"{split}_sources"] = data.sources
        arrays[f"{split}_positions"] = data.positions
    arrays["meta"] = np.array(json.dumps(dataset.meta))
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds like allow_pickle
    os.replace(partial, path)


def _read_cache(path: Path, config: CompositeConfig) -> CompositeDataset:
    with np.load(path) as archive:
        splits = {
            split: CompositeSplit(
                images=archive[f"{split}_images"],
                labels=archive[f"{split}_labels"],
                sources=archive[f"{split}_sources"],
                positions=archive[f"{split}_positions"],
                source_split="test" if split == "test" else "train",
            )
            for split in SPLITS
        }
        meta = json.loads(str(archive["meta"]))
    meta["cache"] = str(path)
    return CompositeDataset(config, splits, meta)


# --- the benchmark data (mtlopt.benchmarks.interfaces.BenchmarkData) ------------------------------------


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


def benchmark_data(name: str, protocol: str, options: DataOptions) -> ImageClassificationData:
    """The composites of ``name`` in ``protocol`` as benchmark data (tasks ``left`` and ``right``)."""
    config = CompositeConfig(
        benchmark=name,
        protocol=protocol,
        seed=options.data_seed,
        # sener makes one composite per source image: --sizes subsets them below (same cached build)
        sizes=dict(zip(SPLITS, options.sizes)) if options.sizes and protocol == "pmtl" else dict(PMTL_SIZES),
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
    meta = dict(dataset.meta)
    if protocol == "sener" and options.sizes:  # at most that many composites per split, a seeded subset
        for k, split in enumerate(SPLITS):
            count = len(labels[split])
            if options.sizes[k] < count:
                drawn = np.random.default_rng([options.data_seed, k, 19]).permutation(count)
                keep = torch.from_numpy(np.sort(drawn[: options.sizes[k]]))
                images[split], labels[split] = images[split][keep], labels[split][keep]
        meta["sizes"] = {split: len(labels[split]) for split in SPLITS}
        meta["subset"] = f"--sizes {','.join(map(str, options.sizes))}: a seeded random subset of each split"
    return ImageClassificationData(images, labels, mean, std, ("left", "right"), meta)
