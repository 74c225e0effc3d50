"""Benchmark data for CelebA (40 attributes) and NYUv2 / Cityscapes (dense prediction).

The files are the user's (``--data-root``); :mod:`mtlopt.benchmarks.data.celeba` and
:mod:`mtlopt.benchmarks.data.dense` read and validate them.

Splits: CelebA has official train / validation / test partitions. NYUv2 and Cityscapes are released as
train and val only, and the published works report on val: here val is the test split, and a seeded 10%
of the training samples is held out for validation (epoch selection), so that no test sample selects
the epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from .metrics import BinaryAttributeMetrics, ConfusionMatrix, DepthErrors, NormalErrors
from .suite import BenchmarkData, Metric
from .vision_models import depth_loss, normal_loss, segmentation_loss

CELEBA_METRICS = (Metric("error", False), Metric("f_score", True))
DENSE_METRICS = {
    "segmentation": (Metric("miou", True), Metric("pixel_accuracy", True)),
    "depth": (Metric("abs_error", False), Metric("rel_error", False)),
    "normal": (
        Metric("mean_angle", False),
        Metric("median_angle", False),
        Metric("within_11.25", True),
        Metric("within_22.5", True),
        Metric("within_30", True),
    ),
}


def _limit(indices: np.ndarray, count: int | None) -> np.ndarray:
    return indices if count is None else indices[:count]


class CelebAData(BenchmarkData):
    """CelebA's 40 binary attributes; ``loss="ce"`` for two-logit heads (Sener & Koltun), ``"bce"`` for
    one-logit heads (Pascal et al.). Metrics per attribute: error (%) and F-score."""

    metrics = CELEBA_METRICS

    def __init__(
        self, root: str, loss: str, image_size: int = 64, sizes: tuple[int, int, int] | None = None
    ) -> None:
        from .data.celeba import CelebA

        self.sets = {split: CelebA(root, split, image_size=image_size) for split in ("train", "val", "test")}
        self.task_names = tuple(self.sets["train"].attribute_names)
        self.loss = loss
        self.index = {
            split: _limit(np.arange(len(dataset)), None if sizes is None else sizes[k])
            for k, (split, dataset) in enumerate(self.sets.items())
        }
        self.meta = {
            "benchmark": "celeba",
            "sources": {"images": {"name": "celeba", "origin": str(root)}},
            "sizes": {split: len(index) for split, index in self.index.items()},
            "construction": f"official partitions, images resized to {image_size}x{image_size}, values in [0, 1]",
        }

    def size(self, split: str) -> int:
        return len(self.index[split])

    def batch(self, split, index, device):
        rows = self.index[split][index.numpy()]
        dataset = self.sets[split]
        return dataset.images(rows).to(device), dataset.attributes(rows).to(device)

    def task_loss(self, task, output, targets):
        if self.loss == "ce":
            return F.cross_entropy(output, targets[:, task])
        return F.binary_cross_entropy_with_logits(output.reshape(-1), targets[:, task].float())

    def evaluator(self) -> Any:
        return _CelebAEvaluator(self.task_names)


class _CelebAEvaluator:
    def __init__(self, names: Sequence[str]) -> None:
        self.names = names
        self.metrics = BinaryAttributeMetrics(len(names))

    def update(self, outputs, targets) -> None:
        self.metrics.update(list(outputs), targets)

    def compute(self) -> dict[str, dict[str, float]]:
        error, f_score = (100.0 * self.metrics.error_rate()).tolist(), self.metrics.f_score().tolist()
        return {name: {"error": error[k], "f_score": f_score[k]} for k, name in enumerate(self.names)}


class DenseData(BenchmarkData):
    """NYUv2 (segmentation, depth, normals) or Cityscapes (segmentation, depth) in MTAN's layout."""

    def __init__(
        self, dataset: str, root: str, seed: int, sizes: tuple[int, int, int] | None = None, size=None
    ) -> None:
        from .data.dense import Cityscapes, NYUv2

        reader = (
            (lambda split: NYUv2(root, split, size=size))
            if dataset == "nyuv2"
            else (lambda split: Cityscapes(root, split, size=size))
        )
        train, official_val = reader("train"), reader("val")
        self.task_names = tuple(train.tasks)
        order = np.random.default_rng([seed, 17]).permutation(len(train))
        held_out = max(1, round(0.1 * len(train))) if len(train) > 1 else 0
        self.sets = {"train": train, "val": train, "test": official_val}
        self.index = {
            "train": np.sort(order[held_out:]),
            "val": np.sort(order[:held_out]) if held_out else np.arange(len(train)),
            "test": np.arange(len(official_val)),
        }
        if sizes is not None:
            self.index = {
                split: _limit(index, sizes[k]) for k, (split, index) in enumerate(self.index.items())
            }
        self.classes = train.classes
        self.meta = {
            "benchmark": dataset,
            "sources": {"samples": {"name": dataset, "origin": str(root)}},
            "sizes": {split: len(index) for split, index in self.index.items()},
            "seed": seed,
            "construction": "MTAN's .npy files; test = the official val split; val = a seeded 10% of train",
        }

    @property
    def task_metrics(self) -> dict[str, tuple[Metric, ...]]:
        return {task: DENSE_METRICS[task] for task in self.task_names}

    @property
    def metrics(self) -> tuple[Metric, ...]:  # type: ignore[override]
        return tuple(m for task in self.task_names for m in DENSE_METRICS[task])

    def size(self, split: str) -> int:
        return len(self.index[split])

    def batch(self, split, index, device):
        samples = [self.sets[split][int(i)] for i in self.index[split][index.numpy()]]
        images = torch.stack([s["image"] for s in samples]).to(device)
        targets = {task: torch.stack([s[task] for s in samples]).to(device) for task in self.task_names}
        return images, targets

    def task_loss(self, task, output, targets):
        name = self.task_names[task]
        loss = {"segmentation": segmentation_loss, "depth": depth_loss, "normal": normal_loss}[name]
        return loss(output, targets[name])

    def evaluator(self) -> Any:
        return _DenseEvaluator(self.task_names, self.classes)


class _DenseEvaluator:
    def __init__(self, tasks: Sequence[str], classes: int) -> None:
        makers = {
            "segmentation": lambda: ConfusionMatrix(classes),
            "depth": DepthErrors,
            "normal": NormalErrors,
        }
        self.tasks = tasks
        self.accumulators = {task: makers[task]() for task in tasks}

    def update(self, outputs: Sequence[Tensor], targets: dict[str, Tensor]) -> None:
        for task, output in zip(self.tasks, outputs):
            self.accumulators[task].update(output, targets[task])

    def compute(self) -> dict[str, dict[str, float]]:
        return {task: accumulator.compute() for task, accumulator in self.accumulators.items()}
