"""Vision benchmarks: CelebA and NYUv2/Cityscapes loaders on fixture trees, metrics, models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import mtlopt
from mtlopt.benchmarks.data.celeba import CelebA
from mtlopt.benchmarks.data.dense import DENSE_METRICS, Cityscapes, NYUv2
from mtlopt.benchmarks.data.sources import DataUnavailable
from mtlopt.benchmarks.metrics import (
    BinaryAttributeMetrics,
    ConfusionMatrix,
    DepthErrors,
    NormalErrors,
    delta_m,
    delta_p,
)
from mtlopt.benchmarks.models.vision import (
    ResNet18MultiTask,
    SegNetFeatures,
    SegNetMTAN,
    SegNetSplit,
    VGGMultiTask,
    depth_loss,
    normal_loss,
    segmentation_loss,
)

# --- CelebA ------------------------------------------------------------------------------------------

CELEBA_PARTITION = [0, 0, 0, 1, 2, 2]  # 3 train, 1 val, 2 test
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (128, 128, 128)]


def write_celeba(root, original_release=False, seed=0):
    """Six solid-colour 24×20 JPEGs and the two text files, in CelebA's exact format."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = [f"{i:06d}.jpg" for i in range(1, 7)]
    values = rng.choice([-1, 1], size=(6, 40))
    image_dir = root / ("Img/img_align_celeba" if original_release else "img_align_celeba")
    anno = root / "Anno" if original_release else root
    evals = root / "Eval" if original_release else root
    for folder in (image_dir, anno, evals):
        folder.mkdir(parents=True, exist_ok=True)
    for name, colour in zip(names, COLOURS):
        Image.new("RGB", (24, 20), colour).save(image_dir / name, quality=95)
    lines = ["6", " ".join(f"Attribute_{k}" for k in range(40)) + " "]
    lines += [name + " " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, values)]
    (anno / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    partition = "".join(f"{name} {p}\n" for name, p in zip(names, CELEBA_PARTITION))
    (evals / "list_eval_partition.txt").write_text(partition)
    return names, values


@pytest.mark.parametrize("original_release", [False, True])
def test_celeba_reads_the_standard_files(tmp_path, original_release):
    names, values = write_celeba(tmp_path, original_release)
    sizes = {"train": 3, "val": 1, "test": 2}
    first = {"train": 0, "val": 3, "test": 4}
    for split, size in sizes.items():
        data = CelebA(tmp_path, split)
        assert len(data) == size and data.files == names[first[split] : first[split] + size]
        assert data.attribute_names == [f"Attribute_{k}" for k in range(40)]
        images = data.images(range(size))
        assert images.shape == (size, 3, 64, 64) and images.dtype == torch.float32
        assert 0 <= images.min() and images.max() <= 1
        attributes = data.attributes(list(range(size)))
        assert attributes.shape == (size, 40) and attributes.dtype == torch.int64
        expected = values[first[split] : first[split] + size] > 0
        np.testing.assert_array_equal(attributes.numpy(), expected.astype(np.int64))
    train = CelebA(tmp_path, "train", image_size=16)
    image, attributes = train[0]
    assert image.shape == (3, 16, 16) and attributes.shape == (40,)
    np.testing.assert_allclose(image.mean(dim=(1, 2)).numpy(), [1, 0, 0], atol=0.03)  # the red image
    np.testing.assert_allclose(
        train.images(torch.tensor([2]))[0].mean(dim=(1, 2)).numpy(), [0, 0, 1], atol=0.03
    )
    with pytest.raises(IndexError):
        train.images([3])


def _drop_partition(root):
    (root / "list_eval_partition.txt").unlink()


def _short_attribute_line(root):
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0]  # 39 values on line 5
    path.write_text("\n".join(lines) + "\n")


def _bad_attribute_value(root):
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[3] = lines[3][:-2] + " 0"
    path.write_text("\n".join(lines) + "\n")


def _wrong_name_count(root):
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:39])
    path.write_text("\n".join(lines) + "\n")


def _bad_partition(root):
    path = root / "list_eval_partition.txt"
    path.write_text(path.read_text().replace("000002.jpg 0", "000002.jpg 3"))


def _missing_image(root):
    (root / "img_align_celeba" / "000002.jpg").unlink()


def _missing_images_folder(root):
    for path in (root / "img_align_celeba").iterdir():
        path.unlink()
    (root / "img_align_celeba").rmdir()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_drop_partition, r"list_eval_partition\.txt not found"),
        (_short_attribute_line, r"line 5 of .*list_attr_celeba\.txt has 40 columns, expected 41"),
        (_bad_attribute_value, r"line 4 of .*list_attr_celeba\.txt has value '0'"),
        (_wrong_name_count, r"line 2 of .*list_attr_celeba\.txt has 39 attribute names"),
        (_bad_partition, r"line 2 of .*list_eval_partition\.txt is '000002\.jpg 3'"),
        (_missing_image, r"image .*img_align_celeba/000002\.jpg is missing"),
        (_missing_images_folder, r"folder .*img_align_celeba not found"),
    ],
)
def test_celeba_broken_trees_name_the_file(tmp_path, breakage, message):
    write_celeba(tmp_path)
    breakage(tmp_path)
    with pytest.raises(DataUnavailable, match=message):
        CelebA(tmp_path, "train")


def test_celeba_missing_root_and_unreadable_image(tmp_path):
    with pytest.raises(DataUnavailable, match="is not a directory"):
        CelebA(tmp_path / "absent")
    write_celeba(tmp_path)
    (tmp_path / "img_align_celeba" / "000001.jpg").write_bytes(b"not a jpeg")
    data = CelebA(tmp_path, "train")  # existence is checked up front, contents on reading
    with pytest.raises(DataUnavailable, match=r"cannot read image .*000001\.jpg"):
        data.images([0])


# --- NYUv2 and Cityscapes --------------------------------------------------------------------------------


def write_dense(root, split, count, size, label_folder="label", classes=13, normals=True, seed=0):
    """``count`` samples in MTAN's .npy layout: HWC float images, HW labels with -1, HW1 depth, HW3 normals."""
    rng = np.random.default_rng(seed)
    h, w = size
    samples = []
    for n in range(count):
        sample = {
            "image": rng.random((h, w, 3)),  # float64, as MTAN's files
            "label": rng.integers(-1, classes, (h, w)).astype(np.float32),
            "depth": (rng.random((h, w, 1)) * (rng.random((h, w, 1)) > 0.2)).astype(np.float32),
        }
        if normals:
            normal = rng.normal(size=(h, w, 3)).astype(np.float32)
            sample["normal"] = normal / np.linalg.norm(normal, axis=-1, keepdims=True)
        for folder, array in sample.items():
            directory = root / split / (label_folder if folder == "label" else folder)
            directory.mkdir(parents=True, exist_ok=True)
            np.save(directory / f"{n}.npy", array)
        samples.append(sample)
    return samples


def test_nyuv2_reads_mtan_layout(tmp_path):
    samples = write_dense(tmp_path, "train", 3, (32, 64))
    data = NYUv2(tmp_path, "train", size=None)
    assert len(data) == 3 and data.tasks == ("segmentation", "depth", "normal")
    for n, sample in enumerate(samples):
        item = data[n]
        assert set(item) == {"image", "segmentation", "depth", "normal"}
        assert item["image"].shape == (3, 32, 64) and item["image"].dtype == torch.float32
        assert item["segmentation"].shape == (32, 64) and item["segmentation"].dtype == torch.int64
        assert item["depth"].shape == (1, 32, 64) and item["normal"].shape == (3, 32, 64)
        np.testing.assert_allclose(item["image"].numpy(), np.moveaxis(sample["image"], -1, 0), rtol=1e-6)
        np.testing.assert_array_equal(item["segmentation"].numpy(), sample["label"].astype(np.int64))
        np.testing.assert_array_equal(item["depth"].numpy()[0], sample["depth"][..., 0])
        np.testing.assert_array_equal(item["normal"].numpy(), np.moveaxis(sample["normal"], -1, 0))
    assert item["segmentation"].min() == -1
    batch = torch.utils.data.default_collate([data[0], data[1]])
    assert batch["image"].shape == (2, 3, 32, 64)
    with pytest.raises(DataUnavailable, match=r"image/0\.npy has size 32×64, expected 288×384 \(size=None"):
        NYUv2(tmp_path, "train")


def test_dense_published_sizes(tmp_path):
    write_dense(tmp_path / "nyu", "val", 1, (288, 384))
    item = NYUv2(tmp_path / "nyu", "val")[0]
    assert item["image"].shape == (3, 288, 384) and item["normal"].shape == (3, 288, 384)
    write_dense(tmp_path / "city", "train", 1, (128, 256), label_folder="label_7", classes=7, normals=False)
    item = Cityscapes(tmp_path / "city", "train")[0]
    assert set(item) == {"image", "segmentation", "depth"}
    assert item["image"].shape == (3, 128, 256) and item["segmentation"].shape == (128, 256)
    assert item["depth"].shape == (1, 128, 256)


def test_cityscapes_label_folders(tmp_path):
    write_dense(tmp_path / "a", "val", 2, (8, 16), label_folder="label_19", classes=19, normals=False)
    data = Cityscapes(tmp_path / "a", "val", classes=19, size=None)
    assert data.folders["segmentation"] == "label_19" and int(data[1]["segmentation"].max()) <= 18
    with pytest.raises(DataUnavailable, match=r"folder .*val/label_7 not found"):
        Cityscapes(tmp_path / "a", "val", size=None)
    write_dense(tmp_path / "b", "val", 2, (8, 16), label_folder="label", classes=7, normals=False)
    assert Cityscapes(tmp_path / "b", "val", size=None).folders["segmentation"] == "label"  # LibMTL's copy
    with pytest.raises(ValueError, match="classes"):
        Cityscapes(tmp_path / "b", "val", classes=13)


def _save(path, array):
    np.save(path, array)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: __import__("shutil").rmtree(r / "train"), r"folder .*/train not found"),
        (lambda r: __import__("shutil").rmtree(r / "train" / "normal"), r"folder .*train/normal not found"),
        (
            lambda r: (r / "train" / "depth" / "1.npy").unlink(),
            r"depth/1\.npy is missing \(image/1\.npy exists\)",
        ),
        (
            lambda r: _save(r / "train/depth/2.npy", np.ones((8, 16), np.float32)),
            r"depth/2\.npy has shape \(8, 16\)",
        ),
        (
            lambda r: _save(r / "train/image/0.npy", np.ones((8, 16, 3), np.uint8)),
            r"image/0\.npy has dtype uint8",
        ),
        (
            lambda r: _save(r / "train/label/1.npy", np.ones((8, 8), np.float32)),
            r"label/1\.npy is 8×8 but image/1\.npy is 8×16",
        ),
        (
            lambda r: (r / "train/normal/0.npy").write_bytes(b"junk"),
            r"normal/0\.npy is not a readable \.npy file",
        ),
        (
            lambda r: [p.unlink() for p in (r / "train" / "image").iterdir()],
            r"no <N>\.npy files in .*train/image",
        ),
    ],
)
def test_dense_broken_trees_name_the_file(tmp_path, breakage, message):
    write_dense(tmp_path, "train", 3, (8, 16))
    breakage(tmp_path)
    with pytest.raises(DataUnavailable, match=message):
        NYUv2(tmp_path, "train", size=None)


def test_dense_label_values_checked_on_load(tmp_path):
    with pytest.raises(DataUnavailable, match="is not a directory"):
        NYUv2(tmp_path / "absent")
    write_dense(tmp_path, "train", 2, (8, 16))
    np.save(tmp_path / "train/label/1.npy", np.full((8, 16), 13, np.int64))
    data = NYUv2(tmp_path, "train", size=None)
    data[0]
    with pytest.raises(
        DataUnavailable, match=r"label/1\.npy has label values 13\.\.13, expected whole numbers in -1\.\.12"
    ):
        data[1]
    np.save(tmp_path / "train/label/1.npy", np.full((8, 16), 2.5, np.float32))
    with pytest.raises(DataUnavailable, match=r"label/1\.npy"):
        data[1]


# --- metrics -------------------------------------------------------------------------------------------


def test_confusion_matrix_by_hand():
    target = torch.tensor([[[0, 0, 1], [-1, 2, 1]]])
    predicted = torch.tensor([[[0, 1, 1], [2, 0, 1]]])  # the ignored pixel is predicted as class 2
    matrix = ConfusionMatrix(4)  # class 3 is in neither prediction nor ground truth
    matrix.update(predicted, target)
    # valid (truth, prediction) pairs: (0,0) (0,1) (1,1) (2,0) (1,1)
    iou = matrix.iou()
    np.testing.assert_allclose(iou[:3].numpy(), [1 / 3, 2 / 3, 0.0])
    assert math.isnan(iou[3].item())
    assert matrix.miou() == pytest.approx(1 / 3)
    assert matrix.pixel_accuracy() == pytest.approx(3 / 5)
    # Scores (argmax over dim 1), accumulated over two batches, give the same matrix.
    from_scores = ConfusionMatrix(4)
    logits = F.one_hot(predicted, 4).permute(0, 3, 1, 2).float()
    from_scores.update(logits[..., :2], target[..., :2])
    from_scores.update(logits[..., 2:], target[..., 2:])
    assert torch.equal(from_scores.matrix, matrix.matrix)
    assert from_scores.compute() == pytest.approx({"miou": 1 / 3, "pixel_accuracy": 0.6})
    with pytest.raises(ValueError, match="target labels"):
        matrix.update(torch.tensor([0]), torch.tensor([4]))


def test_depth_errors_skip_zero_ground_truth_and_weigh_pixels():
    errors = DepthErrors()
    errors.update(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), torch.tensor([[[[2.0, 0.0], [1.0, 4.0]]]]))
    assert errors.abs_error() == pytest.approx(3 / 3)  # |1-2| + |3-1| + |4-4| over 3 valid pixels
    assert errors.rel_error() == pytest.approx((1 / 2 + 2 / 1 + 0) / 3)
    errors.update(torch.tensor([[[[5.0]]]]), torch.tensor([[[[4.0]]]]))  # one more valid pixel
    assert errors.compute() == pytest.approx({"abs_error": 4 / 4, "rel_error": (2.5 + 0.25) / 4})


def test_normal_errors_by_hand():
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    truth = torch.tensor([[0, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.float32)
    prediction = torch.tensor([[0, 0, 2], [1, 0, 1], [0, 1, 0], [1, 0, 0], [0, c, s]], dtype=torch.float32)
    as_image = lambda v: v.T.reshape(1, 3, 1, 5)  # noqa: E731
    exact = NormalErrors(keep_angles=True)
    exact.update(as_image(prediction), as_image(truth))  # angles 0, 45, 90, (invalid), 20
    assert exact.count == 4
    result = exact.compute()
    assert result["mean_angle"] == pytest.approx((0 + 45 + 90 + 20) / 4)
    assert result["median_angle"] == pytest.approx(32.5)  # np.median: mean of 20 and 45
    assert (result["within_11.25"], result["within_22.5"], result["within_30"]) == (0.25, 0.5, 0.5)
    binned = NormalErrors(bin_width=0.01)
    binned.update(as_image(prediction), as_image(truth))
    assert abs(binned.median() - 20) <= 0.01 + 1e-9  # the lower middle angle, to within one bin
    with pytest.raises(KeyError):
        binned.within(15)


def test_normal_error_histogram_median_matches_exact_median():
    torch.manual_seed(0)
    truth = F.normalize(torch.randn(2, 3, 30, 33), dim=1)
    prediction = truth + 0.4 * torch.randn(2, 3, 30, 33)
    truth[0, :, :5] = 0  # invalid pixels
    exact, binned = NormalErrors(keep_angles=True), NormalErrors(bin_width=0.05)
    for metrics in (exact, binned):
        metrics.update(prediction[:1], truth[:1])
        metrics.update(prediction[1:], truth[1:])
    assert exact.count == 2 * 30 * 33 - 5 * 33 and exact.count % 2 == 1
    assert abs(binned.median() - exact.median()) <= 0.05
    assert binned.mean() == pytest.approx(exact.mean())


def test_binary_attribute_metrics_by_hand():
    logits = torch.tensor([[2.0, -1.0, -1.0], [-3.0, 0.5, -2.0], [1.0, -2.0, -0.5], [-1.0, -1.0, -3.0]])
    targets = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 0, 0], [0, 0, 0]])
    metrics = BinaryAttributeMetrics(3)
    metrics.update(logits, targets)
    np.testing.assert_allclose(metrics.error_rate().numpy(), [0.5, 0.0, 0.25])
    np.testing.assert_allclose(metrics.precision().numpy(), [0.5, 1.0, 0.0])  # attribute 2: never predicted
    np.testing.assert_allclose(metrics.recall().numpy(), [0.5, 1.0, 0.0])
    np.testing.assert_allclose(metrics.f_score().numpy(), [0.5, 1.0, 0.0])
    assert metrics.compute()["error"] == pytest.approx(0.75 / 3)
    probabilities = BinaryAttributeMetrics(3)
    probabilities.update(torch.sigmoid(logits), targets, probabilities=True)
    two_class = BinaryAttributeMetrics(3)  # per-task (B, 2) outputs, as ResNet18MultiTask gives
    two_class.update([torch.stack([torch.zeros(4), logits[:, t]], dim=1) for t in range(3)], targets)
    per_task = BinaryAttributeMetrics(3)  # per-task (B, 1) logits, as VGGMultiTask gives
    per_task.update([logits[:, t : t + 1] for t in range(3)], targets)
    for other in (probabilities, two_class, per_task):
        assert torch.equal(other.true_positive, metrics.true_positive)
        assert torch.equal(other.false_negative, metrics.false_negative)


NYU_STL = [38.30, 63.76, 0.6754, 0.2780, 25.01, 19.21, 30.14, 57.20, 69.15]
NYU_METRICS = ["miou", "pixel_accuracy", "abs_error", "rel_error", "mean_angle", "median_angle"]
NYU_METRICS += ["within_11.25", "within_22.5", "within_30"]


@pytest.mark.parametrize(
    ("values", "published"),
    [
        ([30.47, 59.90, 0.6070, 0.2555, 24.88, 19.45, 29.18, 56.88, 69.36], 1.38),  # MGDA
        ([39.29, 65.33, 0.5493, 0.2263, 28.15, 23.96, 22.09, 47.50, 61.08], 5.59),  # LS
    ],
)
def test_delta_m_reproduces_published_nyuv2_values(values, published):
    # The directions are the benchmark's Metric flags.
    higher = {m.name: m.higher_is_better for ms in DENSE_METRICS.values() for m in ms}
    method, baseline = dict(zip(NYU_METRICS, values)), dict(zip(NYU_METRICS, NYU_STL))
    assert delta_m(method, baseline, higher) == pytest.approx(published, abs=0.006)


def test_delta_conventions_on_a_tiny_table():
    higher = {"miou": True, "pixel_accuracy": True, "abs_error": False}
    baseline = {"seg": {"miou": 0.4, "pixel_accuracy": 0.8}, "depth": {"abs_error": 0.5}}
    method = {"seg": {"miou": 0.44, "pixel_accuracy": 0.72}, "depth": {"abs_error": 0.45}}
    # Relative improvements: miou +10 %, pixel accuracy -10 %, depth error +10 % (it went down).
    flat = lambda table: {k: v for metrics in table.values() for k, v in metrics.items()}  # noqa: E731
    assert delta_m(flat(method), flat(baseline), higher) == pytest.approx(-10 / 3)  # negative: better
    # Δp averages each task first (seg: 0, depth: +10); positive: better.
    assert delta_p(method, baseline, higher) == pytest.approx((0 + 10) / 2)
    assert delta_m(flat(baseline), flat(baseline), higher) == 0.0
    # LibMTL's docstring example of count_improvement (0.7396, a fraction there).
    lib = delta_p(
        {"A": {"a1": 93, "a2": 99}, "B": {"b": 0.5}},
        {"A": {"a1": 96, "a2": 98}, "B": {"b": 0.2}},
        {"a1": True, "a2": False, "b": True},
    )
    assert lib == pytest.approx(100 * ((-3 / 96 - 1 / 98) / 2 + 1.5) / 2)


def test_delta_errors():
    higher = {"a": True, "b": False}
    with pytest.raises(ValueError, match="baseline value of 'b' is 0"):
        delta_m({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 0.0}, higher)
    with pytest.raises(ValueError, match=r"missing from method \['b'\]"):
        delta_m({"a": 1.0}, {"a": 1.0, "b": 2.0}, higher)
    with pytest.raises(ValueError, match=r"higher_is_better has no entry for \['c'\]"):
        delta_m({"c": 1.0}, {"c": 2.0}, higher)
    with pytest.raises(ValueError, match=r"same tasks: missing from method \['t2'\]"):
        delta_p({"t1": {"a": 1.0}}, {"t1": {"a": 1.0}, "t2": {"b": 1.0}}, higher)
    with pytest.raises(ValueError, match="baseline value of 'a' of task 't1' is 0"):
        delta_p({"t1": {"a": 1.0}}, {"t1": {"a": 0.0}}, higher)


# --- models --------------------------------------------------------------------------------------------


def _assert_every_parameter_has_a_finite_gradient(model):
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
    assert not missing, missing


def test_resnet18_celeba():
    torch.manual_seed(0)
    model = ResNet18MultiTask()
    assert sum(p.numel() for p in model.encoder.parameters()) == 11_168_832  # CIFAR ResNet-18 without its FC
    x, targets = torch.rand(2, 3, 64, 64), torch.randint(0, 2, (2, 40))
    assert model.encoder(x).shape == (2, 2048)
    outputs = model(x)
    assert len(outputs) == 40 and all(o.shape == (2, 2) and o.isfinite().all() for o in outputs)
    sum(F.cross_entropy(o, targets[:, t]) for t, o in enumerate(outputs)).backward()
    _assert_every_parameter_has_a_finite_gradient(model)


def test_vgg_celeba():
    torch.manual_seed(0)
    model = VGGMultiTask()
    x, targets = torch.rand(2, 3, 64, 64), torch.randint(0, 2, (2, 40))
    assert model.encoder(x).shape == (2, 512)
    outputs = model(x)
    assert len(outputs) == 40 and all(o.shape == (2, 1) and o.isfinite().all() for o in outputs)
    losses = [
        F.binary_cross_entropy_with_logits(o.reshape(-1), targets[:, t].float())
        for t, o in enumerate(outputs)
    ]
    assert losses[3].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(outputs[3][:, 0], targets[:, 3].float()).item()
    )
    sum(losses).backward()
    _assert_every_parameter_has_a_finite_gradient(model)


def dense_losses(outputs, targets, tasks):
    """The shipped per-task losses of the dense benchmarks (as the data adapter's task_loss uses them)."""
    loss = {"segmentation": segmentation_loss, "depth": depth_loss, "normal": normal_loss}
    return [loss[task](output, targets[task]) for task, output in zip(tasks, outputs, strict=True)]


def _dense_targets(size, classes, tasks, batch=1):
    b, (h, w) = batch, size
    depth = torch.rand(b, 1, h, w) * (torch.rand(b, 1, h, w) > 0.2)
    targets = {"segmentation": torch.randint(-1, classes, (b, h, w)), "depth": depth}
    targets["normal"] = F.normalize(torch.randn(b, 3, h, w), dim=1)
    return {t: targets[t] for t in tasks}


def _check_segnet(model, size, classes, tasks):
    torch.manual_seed(0)
    x = torch.rand(1, 3, *size)
    outputs = model(x)
    channels = {"segmentation": classes, "depth": 1, "normal": 3}
    assert [tuple(o.shape) for o in outputs] == [(1, channels[t], *size) for t in tasks]
    assert all(o.isfinite().all() for o in outputs)
    if "normal" in tasks:
        norms = outputs[tasks.index("normal")].norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
    sum(dense_losses(outputs, _dense_targets(size, classes, tasks), tasks)).backward()
    _assert_every_parameter_has_a_finite_gradient(model)


CITYSCAPES = ((128, 256), 7, ("segmentation", "depth"))
NYU = ((288, 384), 13, ("segmentation", "depth", "normal"))


def test_segnet_split_cityscapes():
    size, classes, tasks = CITYSCAPES
    model = SegNetSplit(tasks, classes)
    assert model.encoder(torch.rand(1, 3, 32, 64)).shape == (1, 64, 32, 64)  # one representation tensor
    _check_segnet(model, size, classes, tasks)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 100, 256))


def test_segnet_split_nyuv2():
    size, classes, tasks = NYU
    model = SegNetSplit()
    # Parameter count of the reference SegNet split (lorenmt/mtan, Nash-MTL), whose weights load into ours.
    assert sum(p.numel() for p in model.parameters()) == 25_055_185
    _check_segnet(model, size, classes, tasks)


def test_segnet_mtan_cityscapes():
    size, classes, tasks = CITYSCAPES
    model = SegNetMTAN(tasks, classes)
    features = model.encoder(torch.rand(1, 3, 32, 64))
    assert isinstance(features, SegNetFeatures) and len(features.decoder_last) == 5
    shared = {id(p) for p in model.encoder.parameters()}
    assert not shared & {id(p) for p in model.heads.parameters()}
    assert {id(p) for p in model.encoder.attention_encoder.parameters()} <= shared
    assert not any(name.startswith("heads.") and "attention_" in name for name in model.state_dict())
    twin = copy.deepcopy(model)
    assert twin.heads[0]._shared[0] is twin.encoder  # a copy's branches use the copy's shared convolutions
    _check_segnet(model, size, classes, tasks)


@pytest.mark.slow
def test_segnet_mtan_nyuv2():  # about 25 s on one thread
    size, classes, tasks = NYU
    model = SegNetMTAN()
    assert sum(p.numel() for p in model.parameters()) == 44_229_073  # as the reference MTAN
    _check_segnet(model, size, classes, tasks)


@pytest.mark.parametrize("architecture", [SegNetSplit, SegNetMTAN])
def test_segnet_models_with_mgda(architecture):
    # Split: MGDA-UB on the one representation tensor; MTAN: MGDA on the shared parameters.
    torch.manual_seed(0)
    tasks = ("segmentation", "depth")
    model = architecture(tasks, 7)
    x, targets = torch.rand(2, 3, 32, 64), _dense_targets((32, 64), 7, tasks, batch=2)
    if architecture is SegNetSplit:
        z = model.encoder(x)
        losses = dense_losses([head(z) for head in model.heads], targets, tasks)
        result = mtlopt.backward(dict(zip(tasks, losses)), mtlopt.MGDA(), features=z)
    else:
        losses = dense_losses(model(x), targets, tasks)
        result = mtlopt.backward(dict(zip(tasks, losses)), mtlopt.MGDA(), shared_params=model.encoder)
    assert result.weights.sum().item() == pytest.approx(1.0)
    _assert_every_parameter_has_a_finite_gradient(model)


def test_dense_losses_by_hand():
    prediction = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    truth = torch.tensor([[[[2.0, 0.0], [1.0, 4.0]]]])
    assert depth_loss(prediction, truth).item() == pytest.approx(1.0)
    normals = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    predicted = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    assert normal_loss(predicted, normals).item() == pytest.approx(1 - (1 + 0) / 2)
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])  # (1, 2 classes, 1, 2)
    labels = torch.tensor([[[0, -1]]])
    assert segmentation_loss(logits, labels).item() == pytest.approx(
        -F.log_softmax(logits[0, :, 0, 0], 0)[0].item()
    )
