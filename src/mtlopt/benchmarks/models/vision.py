"""Vision benchmark models: CelebA classifiers and SegNet for dense prediction (NYUv2, Cityscapes).

Every model is a :class:`~mtlopt.benchmarks.models.MultiTaskModel`: ``encoder`` holds every shared
parameter, ``heads[t]`` the parameters of task t alone, and ``forward(x)`` returns
``[head(encoder(x)) for head in heads]``.

- :class:`ResNet18MultiTask`: the CelebA model of Sener & Koltun (NeurIPS 2018; official code
  ``multi_task/models/multi_faces_resnet.py``): a CIFAR-style ResNet-18 (3×3 stem, stride 1, no max-pool,
  BasicBlocks [2, 2, 2, 2]), average-pooled over 4×4 windows and flattened: a 2048-d feature for 64×64
  input; one Linear(2048→2) head per attribute (cross-entropy).
- :class:`VGGMultiTask`: the CelebA CNN of Pascal et al. (arXiv:2109.11678; code ``lucaspascal/AITSO_MTL``,
  ``celeba/models/cnn.py``): conv64–pool–conv128×2–pool–conv256×2–pool–conv512×2–global average pool,
  FC512–FC512, each conv and FC followed by BatchNorm and ReLU; one Linear(512→1) head per attribute
  (logits for binary cross-entropy).
- :class:`SegNetSplit`: the "split" multi-task SegNet of MTAN (Liu, Johns & Davison, CVPR 2019; code
  ``lorenmt/mtan``, ``im2im_pred/model_segnet_split.py``), also used by CAGrad, Nash-MTL and FAMO: a
  shared VGG-16-style encoder-decoder (max-pool with indices, max-unpool) and one prediction layer per
  task (conv3×3 then conv1×1).
- :class:`SegNetMTAN`: MTAN (``im2im_pred/model_segnet_mtan.py``): the same shared SegNet plus, for each
  task, soft-attention masks at every encoder and decoder block.

:func:`segmentation_loss`, :func:`depth_loss` and :func:`normal_loss` (cross-entropy ignoring label -1, L1 depth
and 1 − cosine normal losses over the pixels with non-zero ground truth, as MTAN's ``model_fit``) give
the per-task losses.

Differences from the reference code, on purpose: segmentation heads return logits (the reference returns
``log_softmax`` for ``nll_loss``; use :func:`segmentation_loss`, the same loss); the normal head divides
by ``max(‖v‖, 1e-12)`` instead of ``‖v‖``; the learnable ``logsigma`` of the reference models
(uncertainty weighting) is not part of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..interfaces import MultiTaskModel

DENSE_TASKS = ("segmentation", "depth", "normal")
SEGNET_CHANNELS = (64, 128, 256, 512, 512)


# --- CelebA ------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convolutions with BatchNorm, identity or 1×1-conv shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for small images: 3×3 stem at stride 1, no max-pool; ``avg_pool2d(4)`` and flatten.

    Output: 512 × (S/32)² features for S×S input (2048 for 64×64).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers: list[nn.Module] = []
        in_channels = 64
        for channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(
                nn.Sequential(BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels))
            )
            in_channels = channels
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.stem(x))
        return torch.flatten(F.avg_pool2d(out, 4), 1)


class ResNet18MultiTask(MultiTaskModel):
    """Sener & Koltun's CelebA model: CIFAR-style ResNet-18 encoder, one Linear(2048→``num_classes``) per task.

    Input: (B, 3, 64, 64). Output: ``num_tasks`` tensors of logits (B, ``num_classes``).
    """

    feature_dim = 2048

    def __init__(self, num_tasks: int = 40, num_classes: int = 2) -> None:
        super().__init__()
        self.encoder = CifarResNet18()
        self.heads = nn.ModuleList(nn.Linear(self.feature_dim, num_classes) for _ in range(num_tasks))


def _conv_bn_relu(in_channels: int, out_channels: int, track_running_stats: bool) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
        nn.ReLU(),
    ]


class VGGMultiTask(MultiTaskModel):
    """Pascal et al.'s CelebA CNN: a VGG-like encoder to a 512-d feature, one Linear(512→1) head per task.

    Input: (B, 3, 64, 64) (any size ≥ 8: the global average pool makes the feature size-independent).
    Output: ``num_tasks`` tensors of logits (B, 1), for a binary cross-entropy per task (the CelebA adapter's ``task_loss``).

    ``track_running_stats=False`` reproduces the authors' BatchNorm, which uses batch statistics in
    evaluation too; the default keeps running statistics, as ordinary BatchNorm.
    """

    feature_dim = 512

    def __init__(self, num_tasks: int = 40, track_running_stats: bool = True) -> None:
        super().__init__()
        t = track_running_stats
        self.encoder = nn.Sequential(
            *_conv_bn_relu(3, 64, t), nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128, t), *_conv_bn_relu(128, 128, t), nn.MaxPool2d(2),
            *_conv_bn_relu(128, 256, t), *_conv_bn_relu(256, 256, t), nn.MaxPool2d(2),
            *_conv_bn_relu(256, 512, t), *_conv_bn_relu(512, 512, t),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(512, 512), nn.BatchNorm1d(512, track_running_stats=t), nn.ReLU(),
            nn.Linear(512, 512), nn.BatchNorm1d(512, track_running_stats=t), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleList(nn.Linear(512, 1) for _ in range(num_tasks))


# --- SegNet ------------------------------------------------------------------------------------------


def _segnet_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()
    )


def _init_segnet(module: nn.Module) -> None:
    # The reference initialization: Xavier-normal weights, zero biases, BatchNorm at identity.
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SegNetFeatures(NamedTuple):
    """The backbone's feature maps, five per field, in the order they are computed.

    ``encoder_first[j]``: output of the first convolution of encoder block j (full resolution / 2^j);
    ``encoder_last[j]``: output of encoder block j, before its max-pool;
    ``upsampled[j]``: the max-unpooled input of decoder step j (deepest first);
    ``decoder_last[j]``: output of decoder step j (the last one is the 64-channel, full-resolution map).
    """

    encoder_first: tuple[Tensor, ...]
    encoder_last: tuple[Tensor, ...]
    upsampled: tuple[Tensor, ...]
    decoder_last: tuple[Tensor, ...]


class SegNetBackbone(nn.Module):
    """The shared SegNet encoder-decoder of MTAN (VGG-16 layout: 2, 2, 3, 3, 3 convolutions per block).

    Encoder block j: conv(c_{j-1}→c_j) then 1 (j ≤ 1) or 2 (j ≥ 2) conv(c_j→c_j), then a 2×2 max-pool
    that keeps its indices; the decoder mirrors it with max-unpool. Every conv is 3×3 + BatchNorm + ReLU.
    Input height and width must be multiples of 32. ``forward`` returns the final (B, 64, H, W) map;
    :meth:`features` returns every intermediate map (for MTAN).
    """

    def __init__(self, channels: Sequence[int] = SEGNET_CHANNELS) -> None:
        super().__init__()
        c = list(channels)
        if len(c) != 5:
            raise ValueError(f"SegNet needs 5 channel counts, got {c}")
        self.channels = tuple(c)
        self.encoder_first = nn.ModuleList(_segnet_conv(3 if j == 0 else c[j - 1], c[j]) for j in range(5))
        self.encoder_rest = nn.ModuleList(
            nn.Sequential(*(_segnet_conv(c[j], c[j]) for _ in range(1 if j <= 1 else 2))) for j in range(5)
        )
        # Decoder module j undoes encoder block j (applied deepest first).
        self.decoder_first = nn.ModuleList(_segnet_conv(c[j], c[max(j - 1, 0)]) for j in range(5))
        self.decoder_rest = nn.ModuleList(
            nn.Sequential(
                *(_segnet_conv(c[max(j - 1, 0)], c[max(j - 1, 0)]) for _ in range(1 if j <= 1 else 2))
            )
            for j in range(5)
        )
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, stride=2)

    def features(self, x: Tensor) -> SegNetFeatures:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(
                f"SegNet input height and width must be multiples of 32, got {tuple(x.shape[-2:])}"
            )
        enc_first, enc_last, indices = [], [], []
        out = x
        for j in range(5):
            enc_first.append(self.encoder_first[j](out))
            enc_last.append(self.encoder_rest[j](enc_first[-1]))
            out, index = self.pool(enc_last[-1])
            indices.append(index)
        upsampled, dec_last = [], []
        for step in range(5):
            j = 4 - step
            upsampled.append(self.unpool(out, indices[j]))
            out = self.decoder_rest[j](self.decoder_first[j](upsampled[-1]))
            dec_last.append(out)
        return SegNetFeatures(tuple(enc_first), tuple(enc_last), tuple(upsampled), tuple(dec_last))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).decoder_last[-1]


class DensePrediction(nn.Module):
    """A task's prediction layer: conv3×3(c→c), conv1×1(c→out); unit-length vectors when ``normalize``."""

    def __init__(self, in_channels: int, out_channels: int, normalize: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.Conv2d(in_channels, out_channels, 1)
        )
        self.normalize = normalize

    def forward(self, z: Tensor) -> Tensor:
        out = self.conv(z)
        return F.normalize(out, dim=1) if self.normalize else out


def _task_outputs(tasks: Sequence[str], classes: int) -> list[tuple[int, bool]]:
    if not tasks or len(set(tasks)) != len(tasks) or any(t not in DENSE_TASKS for t in tasks):
        raise ValueError(f"tasks must be distinct names from {DENSE_TASKS}, got {tuple(tasks)}")
    if classes < 2:
        raise ValueError(f"classes must be at least 2, got {classes}")
    sizes = {"segmentation": (classes, False), "depth": (1, False), "normal": (3, True)}
    return [sizes[t] for t in tasks]


class SegNetSplit(MultiTaskModel):
    """SegNet "split" (MTAN's multi-task baseline): shared encoder-decoder, one prediction layer per task.

    ``encoder(x)`` is one representation tensor (B, 64, H, W), so MGDA-UB applies. Outputs, in the order
    of ``tasks``: segmentation logits (B, ``classes``, H, W), depth (B, 1, H, W), unit normals
    (B, 3, H, W). NYUv2: the default (288×384 input); Cityscapes: ``tasks=("segmentation", "depth")``,
    ``classes=7`` (128×256 input).
    """

    def __init__(self, tasks: Sequence[str] = DENSE_TASKS, classes: int = 13) -> None:
        super().__init__()
        outputs = _task_outputs(tasks, classes)
        self.tasks = tuple(tasks)
        self.classes = classes
        self.encoder = SegNetBackbone()
        width = SEGNET_CHANNELS[0]
        self.heads = nn.ModuleList(DensePrediction(width, n, normalize) for n, normalize in outputs)
        _init_segnet(self)


def _attention(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    # An attention mask: conv1×1–BN–ReLU–conv1×1–BN–sigmoid.
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, 1), nn.BatchNorm2d(mid_channels), nn.ReLU(),
        nn.Conv2d(mid_channels, out_channels, 1), nn.BatchNorm2d(out_channels), nn.Sigmoid(),
    )  # fmt: skip


class MTANShared(nn.Module):
    """MTAN's shared part: the SegNet backbone and the shared convolutions of the attention path.

    ``forward(x)`` returns the backbone's :class:`SegNetFeatures` (a tuple of tensors, not one
    representation). ``attention_encoder[j]`` (c_j→c_{j+1}, the last c_4→c_4) and ``attention_decoder[j]``
    (c_j→c_{j-1}, the first c_0→c_0, the last c_4→c_4) are applied by every task's branch to its own
    attended features; they are shared parameters, so they live here.
    """

    def __init__(self) -> None:
        super().__init__()
        c = SEGNET_CHANNELS
        self.backbone = SegNetBackbone(c)
        self.attention_encoder = nn.ModuleList(_segnet_conv(c[j], c[min(j + 1, 4)]) for j in range(5))
        self.attention_decoder = nn.ModuleList(
            _segnet_conv(c[j], c[4] if j == 4 else c[max(j - 1, 0)]) for j in range(5)
        )

    def forward(self, x: Tensor) -> SegNetFeatures:
        return self.backbone.features(x)


class MTANBranch(nn.Module):
    """One task's MTAN branch: attention masks at the 5 encoder and 5 decoder blocks, then its prediction.

    Encoder block j: mask = att_j(first-conv output of block j, concatenated with the previous attended
    features when j > 0); attended = mask ⊙ block output; then the shared ``attention_encoder[j]`` and a
    2×2 max-pool. Decoder step j (deepest first): bilinear ×2 upsampling, the shared ``attention_decoder``
    conv, a mask from [unpooled backbone map, those features], attended = mask ⊙ decoder output.
    """

    def __init__(self, shared: MTANShared, out_channels: int, normalize: bool) -> None:
        super().__init__()
        c = SEGNET_CHANNELS
        self.encoder_masks = nn.ModuleList(
            _attention(c[j] if j == 0 else 2 * c[j], c[j], c[j]) for j in range(5)
        )
        # Decoder mask j acts on the output of decoder module j (which has c[j-1] channels, c[0] for j=0).
        self.decoder_masks = nn.ModuleList(
            _attention(c[j] + c[max(j - 1, 0)], c[max(j - 1, 0)], c[max(j - 1, 0)]) for j in range(5)
        )
        self.prediction = DensePrediction(c[0], out_channels, normalize)
        self._shared = (shared,)  # a plain tuple: not registered here, its parameters belong to the encoder

    def forward(self, features: SegNetFeatures) -> Tensor:
        shared = self._shared[0]
        out: Tensor | None = None
        for j in range(5):
            first = features.encoder_first[j]
            mask = self.encoder_masks[j](first if out is None else torch.cat((first, out), dim=1))
            out = F.max_pool2d(shared.attention_encoder[j](mask * features.encoder_last[j]), 2, stride=2)
        assert out is not None
        for step in range(5):
            j = 4 - step
            unpooled = features.upsampled[step]
            out = F.interpolate(out, size=unpooled.shape[-2:], mode="bilinear", align_corners=True)
            out = shared.attention_decoder[j](out)
            mask = self.decoder_masks[j](torch.cat((unpooled, out), dim=1))
            out = mask * features.decoder_last[step]
        return self.prediction(out)


class SegNetMTAN(MultiTaskModel):
    """MTAN (Liu, Johns & Davison, CVPR 2019) on SegNet: shared backbone, per-task attention branches.

    ``encoder`` (:class:`MTANShared`) holds every shared parameter; ``heads[t]`` (:class:`MTANBranch`)
    task t's attention masks and prediction layer. ``encoder(x)`` returns the tuple of backbone feature
    maps that every branch consumes: there is no single shared representation, so MGDA-UB (which takes
    gradients with respect to one representation tensor) does not apply; use gradients with respect to
    the shared parameters (``shared_params=model.encoder``). Outputs as :class:`SegNetSplit`.
    """

    def __init__(self, tasks: Sequence[str] = DENSE_TASKS, classes: int = 13) -> None:
        super().__init__()
        outputs = _task_outputs(tasks, classes)
        self.tasks = tuple(tasks)
        self.classes = classes
        self.encoder = MTANShared()
        self.heads = nn.ModuleList(MTANBranch(self.encoder, n, normalize) for n, normalize in outputs)
        _init_segnet(self)


# --- dense losses (as in the MTAN code) ----------------------------------------------------------------


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over the pixels whose label is not -1."""
    return F.cross_entropy(logits, target, ignore_index=-1)


def depth_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over the pixels whose ground truth is non-zero; (B, 1, H, W) each."""
    valid = (target != 0).any(dim=1, keepdim=True)
    return (prediction - target).abs().mul(valid).sum() / valid.sum().clamp_min(1)


def normal_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """1 − mean cosine similarity over the pixels whose ground-truth normal is non-zero; (B, 3, H, W) each."""
    valid = (target != 0).any(dim=1)
    return 1 - (prediction * target).sum(dim=1).mul(valid).sum() / valid.sum().clamp_min(1)
