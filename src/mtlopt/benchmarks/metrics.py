"""Evaluation metrics of the vision benchmarks, and the Δm / Δp summaries against a baseline.

Accumulators (``update`` per batch, read at the end; all counts are kept in float64 / int64 on the CPU):

- :class:`ConfusionMatrix`: segmentation mIoU and pixel accuracy from one confusion matrix accumulated
  over all pixels of all images (MTAN's formula since Nov 2020, also Nash-MTL's and LibMTL's); mIoU
  averages the IoU of the classes whose union is non-empty (MTAN averages all classes, which gives NaN
  when a class appears in neither prediction nor ground truth).
- :class:`DepthErrors`: absolute and relative error over the pixels whose ground truth is non-zero
  (MTAN's ``depth_error``), summed over all valid pixels of all batches. MTAN and Nash-MTL average the
  per-batch means instead, which weighs batches equally; the two agree when every batch has as many
  valid pixels.
- :class:`NormalErrors`: angle (degrees) between the normalized prediction and the ground truth over
  the pixels whose ground-truth normal is non-zero; mean, median and the fractions strictly below
  11.25°, 22.5° and 30° (MTAN's ``normal_error``, which tests validity with ``sum(n) != 0`` and takes the
  median per batch). The mean and the fractions are exact; the median comes from a histogram of
  ``bin_width`` degrees (see :meth:`NormalErrors.median`), or is exact with ``keep_angles``.
- :class:`BinaryAttributeMetrics`: CelebA's per-attribute error rate, precision, recall and F-score
  (Pascal et al. 2021 report their means; Sener & Koltun report the mean error).

Ratios (mIoU, accuracies, fractions within a threshold) are fractions in [0, 1], as the reference code
returns them; the published tables print them ×100.

Summaries: :func:`delta_m` (Nash-MTL / FAMO: mean over all metrics of the relative change, signed so that
lower is better) and :func:`delta_p` (LibMTL: mean over tasks of each task's mean relative improvement,
positive when better).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)


class ConfusionMatrix:
    """Confusion matrix over all pixels seen, rows = ground truth, columns = prediction.

    ``update(prediction, target)``: ``prediction`` is either scores (B, C, H, W) (logits or
    probabilities; the class is the argmax over dim 1) or labels of ``target``'s shape (integer dtype);
    ``target`` holds labels in [0, C) or ``ignore_index``, whose pixels are skipped.
    """

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a class index (0..{num_classes - 1})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor) -> None:
        n = self.num_classes
        if prediction.dim() == target.dim() + 1:
            if prediction.shape[1] != n or prediction.shape[:1] + prediction.shape[2:] != target.shape:
                raise ValueError(
                    f"scores of shape {tuple(prediction.shape)} do not match {n} classes and target {tuple(target.shape)}"
                )
            prediction = prediction.argmax(dim=1)
        elif prediction.shape != target.shape or prediction.is_floating_point():
            raise ValueError(
                f"prediction must be scores (B, C, ...) or integer labels of the target's shape, got "
                f"{tuple(prediction.shape)} {prediction.dtype} for target {tuple(target.shape)}"
            )
        target = target.long()
        keep = target != self.ignore_index
        target, prediction = target[keep], prediction[keep].long()
        if target.numel() and (target.min() < 0 or target.max() >= n):
            raise ValueError(f"target labels must be in 0..{n - 1} or {self.ignore_index}")
        if prediction.numel() and (prediction.min() < 0 or prediction.max() >= n):
            raise ValueError(f"predicted labels must be in 0..{n - 1}")
        counts = torch.bincount(target * n + prediction, minlength=n * n)
        self.matrix += counts.reshape(n, n).cpu()

    def iou(self) -> Tensor:
        """IoU per class (float64, NaN where the class is in neither prediction nor ground truth)."""
        h = self.matrix.double()
        intersection = h.diag()
        union = h.sum(0) + h.sum(1) - intersection
        return torch.where(union > 0, intersection / union.clamp_min(1), torch.full_like(union, math.nan))

    def miou(self) -> float:
        """Mean IoU over the classes whose union is non-empty (NaN before any pixel)."""
        iou = self.iou()
        present = ~iou.isnan()
        return iou[present].mean().item() if present.any() else math.nan

    def pixel_accuracy(self) -> float:
        """Fraction of the non-ignored pixels whose predicted class is right."""
        total = self.matrix.sum().item()
        return self.matrix.diag().sum().item() / total if total else math.nan

    def compute(self) -> dict[str, float]:
        return {"miou": self.miou(), "pixel_accuracy": self.pixel_accuracy()}


class DepthErrors:
    """Absolute and relative depth error over the pixels whose ground truth is non-zero.

    ``update(prediction, target)`` with tensors of one shape, (B, 1, H, W) or (B, H, W).
    abs = Σ|p − t| / n and rel = Σ|p − t| / |t| / n over the n valid pixels of all batches.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.abs_sum = 0.0
        self.rel_sum = 0.0
        self.count = 0

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
            )
        valid = target != 0
        t = target[valid].double()
        error = (prediction[valid].double() - t).abs()
        self.abs_sum += error.sum().item()
        self.rel_sum += (error / t.abs()).sum().item()
        self.count += int(valid.sum().item())

    def abs_error(self) -> float:
        return self.abs_sum / self.count if self.count else math.nan

    def rel_error(self) -> float:
        return self.rel_sum / self.count if self.count else math.nan

    def compute(self) -> dict[str, float]:
        return {"abs_error": self.abs_error(), "rel_error": self.rel_error()}


class NormalErrors:
    """Angular error of surface normals, in degrees, over pixels whose ground truth is non-zero.

    ``update(prediction, target)`` with (B, 3, H, W) tensors; both are normalized to unit length first
    (a zero prediction counts as 90°). A pixel is valid when any component of its ground truth is
    non-zero.

    Args:
        bin_width: histogram bin (degrees) for the median (see :meth:`median`).
        keep_angles: also keep every angle (float32) so that :meth:`median` is exact (``np.median``);
            costs 4 bytes per valid pixel.
        thresholds: the angles below which the fractions are counted (strictly below, as MTAN).
    """

    def __init__(
        self,
        bin_width: float = 0.01,
        keep_angles: bool = False,
        thresholds: Sequence[float] = NORMAL_THRESHOLDS,
    ) -> None:
        if not 0 < bin_width <= 180:
            raise ValueError(f"bin_width must be in (0, 180], got {bin_width}")
        self.bin_width = float(bin_width)
        self.bins = math.ceil(180.0 / self.bin_width)
        self.keep_angles = keep_angles
        self.thresholds = tuple(float(t) for t in thresholds)
        self.reset()

    def reset(self) -> None:
        self.histogram = torch.zeros(self.bins, dtype=torch.int64)
        self.below = dict.fromkeys(self.thresholds, 0)
        self.angle_sum = 0.0
        self.count = 0
        self._angles: list[Tensor] = []

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.shape != target.shape or prediction.dim() < 2 or prediction.shape[1] != 3:
            raise ValueError(
                f"expected two (B, 3, ...) tensors, got {tuple(prediction.shape)} and {tuple(target.shape)}"
            )
        valid = (target != 0).any(dim=1)
        cosine = (F.normalize(prediction.double(), dim=1) * F.normalize(target.double(), dim=1)).sum(dim=1)
        angles = torch.rad2deg(torch.acos(cosine[valid].clamp(-1.0, 1.0))).cpu()
        self.count += angles.numel()
        self.angle_sum += angles.sum().item()
        for t in self.thresholds:
            self.below[t] += int((angles < t).sum().item())
        index = (angles / self.bin_width).floor().long().clamp(0, self.bins - 1)
        self.histogram += torch.bincount(index, minlength=self.bins)
        if self.keep_angles:
            self._angles.append(angles.float())

    def mean(self) -> float:
        return self.angle_sum / self.count if self.count else math.nan

    def median(self) -> float:
        """The median angle.

        With ``keep_angles``: ``np.median`` of all angles. Otherwise the angle of rank n/2 interpolated
        linearly inside its histogram bin: within ``bin_width`` of the lower of the two middle angles
        (the median itself for an odd count), so it differs from ``np.median`` by more only when the two
        middle angles are far apart, which needs very few pixels.
        """
        if not self.count:
            return math.nan
        if self.keep_angles:
            return float(np.median(torch.cat(self._angles).numpy()))
        cumulative = self.histogram.cumsum(0)
        middle = self.count / 2
        k = int(torch.nonzero(cumulative >= middle)[0].item())
        before = cumulative[k - 1].item() if k > 0 else 0
        inside = self.histogram[k].item()
        return (k + (middle - before) / inside) * self.bin_width

    def within(self, threshold: float) -> float:
        """Fraction of valid pixels whose angle is strictly below ``threshold`` (one of ``thresholds``)."""
        if threshold not in self.below:
            raise KeyError(f"{threshold}° is not among the counted thresholds {self.thresholds}")
        return self.below[threshold] / self.count if self.count else math.nan

    def compute(self) -> dict[str, float]:
        result = {"mean_angle": self.mean(), "median_angle": self.median()}
        for t in self.thresholds:
            result[f"within_{t:g}"] = self.within(t)
        return result


class BinaryAttributeMetrics:
    """Per-attribute confusion counts of binary predictions (CelebA's 40 attributes).

    ``update(scores, targets)``: ``targets`` (B, K) in {0, 1}; ``scores`` either (B, K) logits
    (positive when > 0) or probabilities with ``probabilities=True`` (positive when > 0.5), or (B, K, 2)
    two-class scores (positive when class 1 scores higher); or a list of K per-task outputs of shape
    (B,), (B, 1) or (B, 2), as the models return them.

    Precision TP/(TP+FP) is 0 for an attribute never predicted positive, recall TP/(TP+FN) is 0 for one
    never positive, and the F-score 2PR/(P+R) is 0 when P + R = 0 (the authors' code of Pascal et al.
    divides by the count + 1e-7, which gives the same zeros).
    """

    def __init__(self, num_attributes: int = 40) -> None:
        self.num_attributes = num_attributes
        self.reset()

    def reset(self) -> None:
        k = self.num_attributes
        self.true_positive = torch.zeros(k, dtype=torch.int64)
        self.false_positive = torch.zeros(k, dtype=torch.int64)
        self.false_negative = torch.zeros(k, dtype=torch.int64)
        self.true_negative = torch.zeros(k, dtype=torch.int64)

    @torch.no_grad()
    def update(self, scores: Tensor | Sequence[Tensor], targets: Tensor, probabilities: bool = False) -> None:
        if not isinstance(scores, Tensor):
            outputs = [s if s.dim() > 1 else s.unsqueeze(1) for s in scores]
            two_class = all(s.shape[-1] == 2 for s in outputs)
            scores = torch.stack(outputs, dim=1) if two_class else torch.cat(outputs, dim=1)
        if scores.dim() == 3 and scores.shape[-1] == 2:
            predicted = scores[..., 1] > scores[..., 0]
        elif scores.dim() == 2:
            predicted = scores > (0.5 if probabilities else 0.0)
        else:
            raise ValueError(f"scores must be (B, K) or (B, K, 2), got {tuple(scores.shape)}")
        if predicted.shape != targets.shape or predicted.shape[1] != self.num_attributes:
            raise ValueError(
                f"predictions {tuple(predicted.shape)} and targets {tuple(targets.shape)} must both be "
                f"(B, {self.num_attributes})"
            )
        if not ((targets == 0) | (targets == 1)).all():
            raise ValueError("targets must be 0 or 1")
        positive = targets.bool()
        self.true_positive += (predicted & positive).sum(0).cpu()
        self.false_positive += (predicted & ~positive).sum(0).cpu()
        self.false_negative += (~predicted & positive).sum(0).cpu()
        self.true_negative += (~predicted & ~positive).sum(0).cpu()

    def _total(self) -> Tensor:
        return (self.true_positive + self.false_positive + self.false_negative + self.true_negative).double()

    def error_rate(self) -> Tensor:
        """Per attribute: the fraction of wrong predictions (float64, (K,))."""
        return (self.false_positive + self.false_negative).double() / self._total()

    def accuracy(self) -> Tensor:
        return (self.true_positive + self.true_negative).double() / self._total()

    def precision(self) -> Tensor:
        return _ratio(self.true_positive, self.true_positive + self.false_positive)

    def recall(self) -> Tensor:
        return _ratio(self.true_positive, self.true_positive + self.false_negative)

    def f_score(self) -> Tensor:
        p, r = self.precision(), self.recall()
        return _ratio(2 * p * r, p + r)

    def compute(self) -> dict[str, float]:
        """Means over the attributes."""
        return {
            "error": self.error_rate().mean().item(),
            "accuracy": self.accuracy().mean().item(),
            "precision": self.precision().mean().item(),
            "recall": self.recall().mean().item(),
            "f_score": self.f_score().mean().item(),
        }


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    n, d = numerator.double(), denominator.double()
    return torch.where(d > 0, n / d.clamp_min(1e-300), torch.zeros_like(d))


# --- summaries against a baseline ----------------------------------------------------------------------


def delta_m(
    method: Mapping[str, float], baseline: Mapping[str, float], higher_is_better: Mapping[str, bool]
) -> float:
    """Δm% (Nash-MTL / FAMO convention), lower is better.

    Δm = 100 · mean_j (−1)^{h_j} (M_j − B_j) / B_j over all metrics j, with h_j = 1 when higher is
    better. ``method`` and ``baseline`` must have the same metrics; ``higher_is_better`` must cover them
    (it may hold more; the benchmarks' directions are their :class:`~.suite.Metric` flags).

    Raises:
        ValueError: different metric sets, a metric without a direction, a zero or non-finite baseline.
    """
    terms = _relative_changes(dict(method), dict(baseline), higher_is_better, where="")
    return -100.0 * sum(terms) / len(terms) + 0.0  # + 0.0: no negative zero


def delta_p(
    method: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool],
) -> float:
    """Δp% (LibMTL convention), positive when better.

    Δp = 100 · mean_t mean_{m ∈ t} (−1)^{1−h_m} (M_{t,m} − B_{t,m}) / B_{t,m}: each task's metrics are
    averaged first, then the tasks. ``method`` and ``baseline`` map task → metric → value, with the same
    tasks and metrics; ``higher_is_better`` maps metric names to directions.

    Raises:
        ValueError: different task or metric sets, a metric without a direction, a zero or non-finite
            baseline.
    """
    _same_keys(method, baseline, "tasks", where="")
    if not baseline:
        raise ValueError("no tasks to compare")
    per_task = []
    for task in baseline:
        terms = _relative_changes(
            dict(method[task]), dict(baseline[task]), higher_is_better, where=f" of task {task!r}"
        )
        per_task.append(sum(terms) / len(terms))
    return 100.0 * sum(per_task) / len(per_task)


def _same_keys(method: Mapping, baseline: Mapping, what: str, where: str) -> None:
    missing, extra = set(baseline) - set(method), set(method) - set(baseline)
    if missing or extra:
        raise ValueError(
            f"method and baseline must have the same {what}{where}: missing from method "
            f"{sorted(missing)}, not in baseline {sorted(extra)}"
        )


def _relative_changes(
    method: dict[str, float], baseline: dict[str, float], higher_is_better: Mapping[str, bool], where: str
) -> list[float]:
    """(M − B) / B per metric, signed so that positive is better."""
    _same_keys(method, baseline, "metrics", where)
    if not baseline:
        raise ValueError(f"no metrics to compare{where}")
    undirected = sorted(set(baseline) - set(higher_is_better))
    if undirected:
        raise ValueError(f"higher_is_better has no entry for {undirected}{where}")
    terms = []
    for name, base in baseline.items():
        value = method[name]
        if not math.isfinite(base) or base == 0:
            raise ValueError(
                f"baseline value of {name!r}{where} is {base}: relative changes need a finite non-zero baseline"
            )
        if not math.isfinite(value):
            raise ValueError(f"method value of {name!r}{where} is {value}")
        change = (value - base) / base
        terms.append(change if higher_is_better[name] else -change)
    return terms
