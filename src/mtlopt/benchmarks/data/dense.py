"""NYUv2 and Cityscapes for dense prediction, in the preprocessed ``.npy`` layout of MTAN.

MTAN (Liu, Johns & Davison, CVPR 2019; code ``lorenmt/mtan``, ``im2im_pred/create_dataset.py``) released
both datasets preprocessed, one ``.npy`` file per sample and per modality; CAGrad, Nash-MTL, FAMO and
LibMTL read the same files. Layout (``<split>`` is ``train`` or ``val``; N = 0, 1, ...)::

    <root>/<split>/image/<N>.npy    (H, W, 3) float, RGB in [0, 1]
    <root>/<split>/label/<N>.npy    (H, W) class index as float or int, -1 where unlabelled
    <root>/<split>/depth/<N>.npy    (H, W, 1) float, 0 where unknown
    <root>/<split>/normal/<N>.npy   (H, W, 3) float, unit normals, 0 where unknown (NYUv2 only)

NYUv2: 795 train / 654 val samples of 288×384, 13 classes (labels -1..12), depth in metres, normals
from Eigen & Fergus. Cityscapes: 2,975 train / 500 val samples of 128×256 (a 256×512 version also
exists), inverse depth; the label folder is ``label_7/`` (7 classes), ``label_19/`` (19 classes) or
``label_2/`` (2 classes) in MTAN's release; LibMTL's copy names the 7-class folder ``label/``, which is
read when ``label_7/`` is absent.

Verified against the readers of ``lorenmt/mtan`` (``create_dataset.py``: the arrays' last axis is moved
first for image, depth and normal; labels are read as they are), ``median-research-group/LibMTL``
(``examples/{nyu,cityscapes}/create_dataset.py``) and the ``label_7`` readers of the Cityscapes
experiments built on MTAN; the image files hold float RGB in [0, 1] (MTAN issue #50) and the NYUv2
labels range over -1..12 (MTAN issue #11). Files are indexed by the numbers found in ``image/``, so a
sample missing from another folder is an error.

At construction every file's ``.npy`` header is checked (shape, dtype, the same H×W across modalities,
and the published size unless ``size=None``); label values are checked when a sample is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..interfaces import BenchmarkData, Metric
from ..metrics import ConfusionMatrix, DepthErrors, NormalErrors
from ..models.vision import depth_loss, normal_loss, segmentation_loss
from .sources import DataUnavailable

NYUV2_SIZE = (288, 384)
NYUV2_CLASSES = 13
CITYSCAPES_SIZE = (128, 256)
CITYSCAPES_CLASSES = (2, 7, 19)
SPLITS = ("train", "val")
_NPY_NAME = re.compile(r"^(\d+)\.npy$")
# Size of the stored array's last axis per task; None: the array is (H, W).
_CHANNELS = {"image": 3, "segmentation": None, "depth": 1, "normal": 3}


class DenseNpyDataset:
    """One split of a dataset in MTAN's ``.npy`` layout (use :class:`NYUv2` or :class:`Cityscapes`).

    ``dataset[i]`` is a dict: ``image`` (3, H, W) float32, ``segmentation`` (H, W) int64 with -1 for
    unlabelled pixels, ``depth`` (1, H, W) float32, and ``normal`` (3, H, W) float32 when the dataset
    has normals.
    """

    name = "dense"

    def __init__(
        self,
        root: str | Path,
        split: str,
        folders: dict[str, str],
        classes: int,
        size: tuple[int, int] | None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.classes = classes
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.folders = dict(folders)
        self.tasks = tuple(task for task in folders if task != "image")
        self.layout = self._layout()
        if not self.root.is_dir():
            raise DataUnavailable(f"{self.name}: root {self.root} is not a directory; {self.layout}")
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            raise DataUnavailable(f"{self.name}: folder {self.split_dir} not found; {self.layout}")
        for folder in self.folders.values():
            if not (self.split_dir / folder).is_dir():
                raise DataUnavailable(
                    f"{self.name}: folder {self.split_dir / folder} not found; {self.layout}"
                )

        self.indices = sorted(self._numbers(self.folders["image"]))
        if not self.indices:
            raise DataUnavailable(
                f"{self.name}: no <N>.npy files in {self.split_dir / self.folders['image']}; {self.layout}"
            )
        for folder in self.folders.values():
            present = self._numbers(folder)
            for n in self.indices:
                if n not in present:
                    raise DataUnavailable(
                        f"{self.name}: {self.split_dir / folder / f'{n}.npy'} is missing (image/{n}.npy "
                        f"exists); {self.layout}"
                    )
        for n in self.indices:
            self._check_headers(n)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        n = self.indices[i]
        sample: dict[str, Tensor] = {}
        for task, folder in self.folders.items():
            path = self._path(folder, n)
            array = _load(self.name, path)
            if task == "segmentation":
                valid = np.isfinite(array) & (array == np.round(array)) if array.dtype.kind == "f" else True
                if array.size and (not np.all(valid) or array.min() < -1 or array.max() >= self.classes):
                    raise DataUnavailable(
                        f"{self.name}: {path} has label values {array.min()}..{array.max()}, expected whole "
                        f"numbers in -1..{self.classes - 1} (-1: unlabelled)"
                    )
                sample[task] = torch.from_numpy(array.astype(np.int64))
            else:
                sample[task] = torch.from_numpy(
                    np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32)
                )
        return sample

    def _layout(self) -> str:
        h, w = self.size if self.size is not None else ("H", "W")
        shapes = {"image": f"float ({h}, {w}, 3)", "segmentation": f"({h}, {w}) in -1..{self.classes - 1}"}
        shapes |= {"depth": f"float ({h}, {w}, 1)", "normal": f"float ({h}, {w}, 3)"}
        parts = [f"{folder}/<N>.npy {shapes[task]}" for task, folder in self.folders.items()]
        return f"expected {self.root}/{self.split}/ with " + ", ".join(parts)

    def _path(self, folder: str, n: int) -> Path:
        return self.split_dir / folder / f"{n}.npy"

    def _numbers(self, folder: str) -> set[int]:
        return {int(m[1]) for p in (self.split_dir / folder).iterdir() if (m := _NPY_NAME.match(p.name))}

    def _check_headers(self, n: int) -> None:
        image_size = None  # the first folder is image/: the other modalities must match its H×W
        for task, folder in self.folders.items():
            path = self._path(folder, n)
            shape, dtype = _header(self.name, path)
            channels = _CHANNELS[task]
            problem = None
            if len(shape) != (2 if channels is None else 3) or (
                channels is not None and shape[2] != channels
            ):
                problem = f"shape {shape}"
            elif dtype.kind not in ("fiu" if task == "segmentation" else "f"):
                problem = f"dtype {dtype}, expected {'a number type' if task == 'segmentation' else 'float'}"
            elif self.size is not None and tuple(shape[:2]) != self.size:
                h, w = self.size
                problem = f"size {shape[0]}×{shape[1]}, expected {h}×{w} (size=None skips this check)"
            if problem is not None:
                raise DataUnavailable(f"{self.name}: {path} has {problem}; {self.layout}")
            if image_size is None:
                image_size = tuple(shape[:2])
            elif tuple(shape[:2]) != image_size:
                raise DataUnavailable(
                    f"{self.name}: {path} is {shape[0]}×{shape[1]} but image/{n}.npy is "
                    f"{image_size[0]}×{image_size[1]}; {self.layout}"
                )


class NYUv2(DenseNpyDataset):
    """NYUv2 in MTAN's layout: segmentation (13 classes), depth and surface normals, 288×384.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"``.
        size: the expected (H, W); ``None`` accepts any size (consistent within a sample).
    """

    name = "NYUv2"

    def __init__(
        self, root: str | Path, split: str = "train", size: tuple[int, int] | None = NYUV2_SIZE
    ) -> None:
        folders = {"image": "image", "segmentation": "label", "depth": "depth", "normal": "normal"}
        super().__init__(root, split, folders, NYUV2_CLASSES, size)


class Cityscapes(DenseNpyDataset):
    """Cityscapes in MTAN's layout: segmentation (7 classes by default) and inverse depth, 128×256.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"``.
        classes: 7 (``label_7/``, or LibMTL's ``label/``), 19 (``label_19/``) or 2 (``label_2/``).
        size: the expected (H, W); ``None`` accepts any size (e.g. the 256×512 release).
    """

    name = "Cityscapes"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        classes: int = 7,
        size: tuple[int, int] | None = CITYSCAPES_SIZE,
    ) -> None:
        if classes not in CITYSCAPES_CLASSES:
            raise ValueError(f"classes must be one of {CITYSCAPES_CLASSES}, got {classes}")
        label = f"label_{classes}"
        if (
            classes == 7
            and not (Path(root) / split / label).is_dir()
            and (Path(root) / split / "label").is_dir()
        ):
            label = "label"  # LibMTL's copy
        folders = {"image": "image", "segmentation": label, "depth": "depth"}
        super().__init__(root, split, folders, classes, size)


def _header(name: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(file)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(file)
    except (OSError, ValueError) as error:
        raise DataUnavailable(f"{name}: {path} is not a readable .npy file: {error}") from error
    return tuple(shape), dtype


def _load(name: str, path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataUnavailable(f"{name}: cannot read {path}: {error}") from error


# --- the benchmark data (mtlopt.benchmarks.interfaces.BenchmarkData) ------------------------------------
#
# NYUv2 and Cityscapes are released as train and val only, and the published works report on val: here
# val is the test split, and a seeded 10% of the training samples is held out for validation (epoch
# selection), so that no test sample selects the epoch.

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


class DenseData(BenchmarkData):
    """NYUv2 (segmentation, depth, normals) or Cityscapes (segmentation, depth) in MTAN's layout."""

    def __init__(
        self, dataset: str, root: str, seed: int, sizes: tuple[int, int, int] | None = None, size=None
    ) -> None:
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
        makers: dict[str, Callable[[], ConfusionMatrix | DepthErrors | NormalErrors]] = {
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
