"""Loss-level peer methods (issue 18): one model, one optimizer, a weighting of the losses alone.

DWA, RLW, GLS, SI, IMTL-L, FAMO and STCH. Their loop hooks go through the runner interface the
trainer already calls: ``on_epoch_start`` closes the previous epoch for DWA and STCH
(``new_epoch``), and FAMO's ``train_step`` recomputes the losses on the same batch after the
optimizer step (one extra forward pass without a graph) and calls ``famo.update``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import mtlopt
from mtlopt._options import choices
from mtlopt.weighting import stch

from ._base import Option, _non_negative, register
from .weightings import SingleModelRunner


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {value}")
    return value


class EpochRunner(SingleModelRunner):
    """A weighting with epoch boundaries (``new_epoch()`` and an ``epoch`` counter)."""

    def on_epoch_start(self, epoch: int) -> None:
        weighting: Any = self._weighting
        while weighting.epoch < epoch:  # idempotent: a resumed run's state already counts its epochs
            weighting.new_epoch()


@register
class DWARunner(EpochRunner):
    name = "dwa"
    description = "DWA (Liu et al. 2019): weights K*softmax(r/T) of the last two epochs' loss ratios"
    options = (Option("temperature", 2.0, "temperature T", parse=float),)

    def weighting(self) -> mtlopt.Method:
        return mtlopt.DWA(self.config["temperature"])


@register
class RLWRunner(SingleModelRunner):
    name = "rlw"
    description = "RLW (Lin et al. 2022): random weights softmax(N(0, I)) drawn every step"

    def weighting(self) -> mtlopt.Method:
        return mtlopt.RLW(seed=self.seed)


@register
class GLSRunner(SingleModelRunner):
    name = "gls"
    description = "GLS (Chennupati et al. 2019): the gradient of the geometric mean of the losses"

    def weighting(self) -> mtlopt.Method:
        return mtlopt.GLS()


@register
class SIRunner(SingleModelRunner):
    name = "si"
    description = "scale-invariant LS (Navon et al. 2022): the gradient of the sum of the log losses"
    options = (Option("eps", 0.0, "offset inside the logarithm", parse=_non_negative),)

    def weighting(self) -> mtlopt.Method:
        return mtlopt.SI(eps=self.config["eps"])


@register
class IMTLLRunner(SingleModelRunner):
    name = "imtl-l"
    description = "IMTL-L (Liu et al. 2021): learned loss scales, objective sum(exp(s) L - s)"

    def weighting(self) -> mtlopt.Method:
        return mtlopt.IMTLL(self.num_tasks).to(next(self.model.parameters()).device)


@register
class FAMORunner(SingleModelRunner):
    name = "famo"
    description = "FAMO (Liu et al. 2023): weights from logits trained on each step's loss decrease"
    options = (
        Option("weight-lr", 0.025, "Adam step size of the task logits", parse=float),
        Option("gamma", 1e-3, "Adam weight decay of the task logits", parse=_non_negative),
    )

    def weighting(self) -> mtlopt.Method:
        return mtlopt.FAMO(self.num_tasks, lr=self.config["weight-lr"], weight_decay=self.config["gamma"])

    def train_step(self, x: Tensor, targets: Tensor) -> dict[str, Tensor]:
        logged = super().train_step(x, targets)
        famo: Any = self._weighting
        with torch.no_grad():  # the losses after the step, on the same batch, in train mode (official)
            z = self.model.encoder(x)
            new_losses = self.tasks.losses([head(z) for head in self.model.heads], targets)
        famo.update(torch.stack([loss.float() for loss in new_losses]))
        return logged


@register
class STCHRunner(EpochRunner):
    name = "stch"
    description = "STCH (Lin et al. 2024): smooth Tchebycheff of the nadir-normalized log losses"
    options = (
        Option("mu", 1.0, "smoothing mu", parse=float),
        Option("warmup-epochs", 4, "epochs of sum(log L) before the nadir epoch", parse=_non_negative_int),
        Option("transform", "log-normalized", "official recipe or the raw losses", choices(stch.Transform)),
    )

    def weighting(self) -> mtlopt.Method:
        return mtlopt.STCH(
            self.config["mu"], self.config["warmup-epochs"], transform=self.config["transform"]
        )
