"""CelebA (Liu, Luo, Wang & Tang, ICCV 2015): 202,599 aligned face images with 40 binary attributes.

Read from the standard files under a user-supplied root (the data cannot be downloaded here):

- ``img_align_celeba/<name>.jpg``: the aligned and cropped images (178×218 JPEGs);
- ``list_attr_celeba.txt``: line 1 the number of images, line 2 the 40 attribute names, then one line
  per image ``<name> v1 ... v40`` with values -1 or 1, separated by one or more spaces;
- ``list_eval_partition.txt``: one line per image ``<name> p`` with p = 0 (train), 1 (val), 2 (test):
  162,770 / 19,867 / 19,962 images.

The original release's folders are accepted too: ``Img/img_align_celeba/``, ``Anno/list_attr_celeba.txt``,
``Eval/list_eval_partition.txt``.

Images are resized to S×S (default 64×64, as Sener & Koltun, NeurIPS 2018, and Pascal et al. 2021)
with Pillow's bilinear filter (which smooths when shrinking), ignoring the aspect ratio as those works
do, and returned as float32 in [0, 1] without normalization. Attributes are returned as 0/1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..interfaces import BenchmarkData, Metric
from ..metrics import BinaryAttributeMetrics
from .sources import DataUnavailable

SPLITS = {"train": 0, "val": 1, "test": 2}
NUM_ATTRIBUTES = 40
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
LAYOUT = (
    "expected <root>/img_align_celeba/<name>.jpg, <root>/list_attr_celeba.txt (count, 40 names, "
    "then '<name> v1 ... v40' with values -1/1) and <root>/list_eval_partition.txt ('<name> 0|1|2')"
)


class CelebA:
    """One split of CelebA; see the module docstring for the files it reads.

    Args:
        root: the folder holding the files.
        split: ``"train"``, ``"val"`` or ``"test"`` (partition 0, 1, 2).
        image_size: side S of the square images returned by :meth:`images`.

    Attributes:
        attribute_names: the 40 names, in file order.
        files: the image file names of this split, in partition-file order.
        image_dir: the folder of the JPEGs.

    Raises:
        DataUnavailable: a file or folder is missing or malformed, or an image of the split is missing;
            the message names the file.
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 64) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        if not self.root.is_dir():
            raise DataUnavailable(f"CelebA: root {self.root} is not a directory; {LAYOUT}")
        attribute_file = _find(self.root, (ATTRIBUTE_FILE, f"Anno/{ATTRIBUTE_FILE}"), is_dir=False)
        partition_file = _find(self.root, (PARTITION_FILE, f"Eval/{PARTITION_FILE}"), is_dir=False)
        self.image_dir = _find(self.root, (IMAGE_DIR, f"Img/{IMAGE_DIR}"), is_dir=True)

        names, self.attribute_names, values = _read_attributes(attribute_file)
        partition = _read_partition(partition_file)
        row = {name: i for i, name in enumerate(names)}
        self.files = [name for name, p in partition if p == SPLITS[split]]
        missing = [name for name in self.files if name not in row]
        if missing:
            raise DataUnavailable(
                f"CelebA: {partition_file} lists {missing[0]} (and {len(missing) - 1} more), which "
                f"{attribute_file} does not have; {LAYOUT}"
            )
        self._values = values[[row[name] for name in self.files]] if self.files else values[:0]
        present = {entry.name for entry in os.scandir(self.image_dir)}
        absent = [name for name in self.files if name not in present]
        if absent:
            raise DataUnavailable(
                f"CelebA: image {self.image_dir / absent[0]} is missing ({len(absent)} of the "
                f"{len(self.files)} {split} images listed in {partition_file} are); {LAYOUT}"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Image (3, S, S) float32 in [0, 1] and attributes (40,) int64 in {0, 1}."""
        return self.images([index])[0], self.attributes([index])[0]

    def images(self, indices: Sequence[int] | Tensor | np.ndarray) -> Tensor:
        """Images ``indices`` of this split: float32 (B, 3, S, S) in [0, 1]."""
        from PIL import Image, UnidentifiedImageError

        size = self.image_size
        positions = _positions(indices, len(self))
        batch = np.empty((len(positions), size, size, 3), dtype=np.uint8)
        for k, i in enumerate(positions):
            path = self.image_dir / self.files[i]
            try:
                with Image.open(path) as image:
                    batch[k] = np.asarray(
                        image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                    )
            except (OSError, UnidentifiedImageError) as error:
                raise DataUnavailable(f"CelebA: cannot read image {path}: {error}") from error
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().float().div_(255.0)

    def attributes(self, indices: Sequence[int] | Tensor | np.ndarray) -> Tensor:
        """Attributes of images ``indices``: int64 (B, 40), 1 where the file says 1, else 0."""
        rows = _positions(indices, len(self))
        return torch.from_numpy((self._values[rows] > 0).astype(np.int64).reshape(len(rows), NUM_ATTRIBUTES))


def _positions(indices: Sequence[int] | Tensor | np.ndarray, length: int) -> list[int]:
    positions = [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
    for i in positions:
        if not -length <= i < length:
            raise IndexError(f"index {i} out of range for a split of {length} images")
    return [i % length for i in positions]


def _find(root: Path, candidates: tuple[str, ...], is_dir: bool) -> Path:
    for name in candidates:
        path = root / name
        if path.is_dir() if is_dir else path.is_file():
            return path
    kind = "folder" if is_dir else "file"
    raise DataUnavailable(f"CelebA: {kind} {root / candidates[0]} not found; {LAYOUT}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataUnavailable(f"CelebA: cannot read {path}: {error}") from error


def _read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Names of the images, the 40 attribute names, and the values (N, 40) int8 in {-1, 1}."""
    parts = _read_text(path).split("\n", 2)
    if len(parts) < 2 or not parts[0].strip().isdigit():
        raise DataUnavailable(
            f"CelebA: {path} must start with the number of images, then the 40 names; {LAYOUT}"
        )
    attribute_names = parts[1].split()
    if len(attribute_names) != NUM_ATTRIBUTES:
        raise DataUnavailable(
            f"CelebA: line 2 of {path} has {len(attribute_names)} attribute names, expected {NUM_ATTRIBUTES}"
        )
    body = parts[2] if len(parts) > 2 else ""
    width = NUM_ATTRIBUTES + 1
    # Fast path: one split of the whole body; any inconsistency is located line by line.
    tokens = body.split()
    rows = sum(1 for line in body.splitlines() if line.strip())
    if len(tokens) != rows * width:
        _raise_column_error(path, body)
    table = np.array(tokens, dtype=object).reshape(rows, width)
    values = table[:, 1:]
    positive, negative = values == "1", values == "-1"
    if not (positive | negative).all():
        _raise_column_error(path, body)
        r, c = np.argwhere(~(positive | negative))[0]
        line = 3 + [k for k, text in enumerate(body.splitlines()) if text.strip()][r]
        raise DataUnavailable(
            f"CelebA: line {line} of {path} has value {values[r, c]!r} for {attribute_names[c]}, expected -1 or 1"
        )
    if int(parts[0]) != rows:
        raise DataUnavailable(f"CelebA: {path} announces {int(parts[0])} images on line 1 but lists {rows}")
    names = table[:, 0].tolist()
    if len(set(names)) != len(names):
        raise DataUnavailable(f"CelebA: {path} lists some images more than once")
    return names, attribute_names, np.where(positive, 1, -1).astype(np.int8)


def _raise_column_error(path: Path, body: str) -> None:
    """Raise for the first line of ``body`` (the lines after the header) without 41 columns, if any."""
    for number, line in enumerate(body.splitlines(), start=3):
        columns = len(line.split())
        if columns not in (0, NUM_ATTRIBUTES + 1):
            raise DataUnavailable(
                f"CelebA: line {number} of {path} has {columns} columns, expected {NUM_ATTRIBUTES + 1} "
                f"('<name> v1 ... v40')"
            )


def _read_partition(path: Path) -> list[tuple[str, int]]:
    partition = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataUnavailable(
                f"CelebA: line {number} of {path} is {line.strip()!r}, expected '<name> 0|1|2'"
            )
        partition.append((parts[0], int(parts[1])))
    return partition


# --- the benchmark data (mtlopt.benchmarks.interfaces.BenchmarkData) ------------------------------------

CELEBA_METRICS = (Metric("error", False), Metric("f_score", True))


def _limit(indices: np.ndarray, count: int | None) -> np.ndarray:
    return indices if count is None else indices[:count]


class CelebAData(BenchmarkData):
    """CelebA's 40 binary attributes; ``loss="ce"`` for two-logit heads (Sener & Koltun), ``"bce"`` for
    one-logit heads (Pascal et al.). Metrics per attribute: error (%) and F-score."""

    metrics = CELEBA_METRICS

    def __init__(
        self, root: str, loss: str, image_size: int = 64, sizes: tuple[int, int, int] | None = None
    ) -> None:
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
