"""Gradient-level peer methods: one model, the update from ``mtlopt.backward`` with a Gramian weighting
(Aligned-MTL, Aligned-MTL-UB, ConFIG, GradVac)."""

from __future__ import annotations

from typing import Any

import mtlopt
from mtlopt._options import choices
from mtlopt.weighting import FeatureBatch, HeadWeighting, aligned_mtl, config, gradvac

from ._base import Option, register
from .weightings import SingleModelRunner

_HEADS = Option(
    "head-weighting",
    "unweighted",
    "heads get grad L_t (official) or w_t grad L_t",
    choices(HeadWeighting)[::-1],
)

_ALIGNED_OPTIONS = (
    Option(
        "scale-mode", "min", "eigenvalue the aligned gradients are scaled to", choices(aligned_mtl.ScaleMode)
    ),
    Option(
        "pref", "ones", "preference: ones (official, sum) or mean (TorchJD, 1/K)", choices(aligned_mtl.Pref)
    ),
    _HEADS,
)


def _aligned(config: dict[str, Any], **extra: Any) -> mtlopt.AlignedMTL:
    return mtlopt.AlignedMTL(
        pref=config["pref"],
        scale_mode=config["scale-mode"],
        head_weighting=config["head-weighting"],
        **extra,
    )


@register
class AlignedMTLRunner(SingleModelRunner):
    name = "aligned-mtl"
    description = (
        "Aligned-MTL (Senushkin et al. 2023): gradients aligned to an orthogonal equal-norm basis (eigh of G)"
    )
    options = _ALIGNED_OPTIONS

    def weighting(self):
        return _aligned(self.config)

    def backward_kwargs(self, z):
        return {"shared_params": self.model.encoder}


@register
class AlignedMTLUBRunner(SingleModelRunner):
    name = "aligned-mtl-ub"
    description = "Aligned-MTL-UB (Senushkin et al. 2023): the alignment on the representation's Gramian"
    options = (
        *_ALIGNED_OPTIONS,
        Option(
            "feature-batch",
            "flatten",
            "representation Gramian: flatten (official) or sum (LibMTL)",
            choices(FeatureBatch),
        ),
    )

    def weighting(self):
        return _aligned(self.config, feature_batch=self.config["feature-batch"])

    def backward_kwargs(self, z):
        return {"features": z}


@register
class ConFIGRunner(SingleModelRunner):
    name = "config"
    description = "ConFIG (Liu et al. 2025): the direction with equal cosines to every task gradient"
    options = (Option("length", "projection", "length of the update", choices(config.Length)), _HEADS)

    def weighting(self):
        return mtlopt.ConFIG(length=self.config["length"], head_weighting=self.config["head-weighting"])

    def backward_kwargs(self, z):
        return {"shared_params": self.model.encoder}


@register
class GradVacRunner(SingleModelRunner):
    name = "gradvac"
    description = "GradVac (Wang et al. 2021): gradients corrected towards EMA targets of their cosines"
    options = (
        Option("beta", 0.5, "EMA rate of the cosine targets", parse=float),
        Option(
            "target-update",
            "always",
            "update the targets always (paper) or on correction (LibMTL 1.1.5)",
            choices(gradvac.TargetUpdate),
        ),
        _HEADS,
    )

    def weighting(self):
        return mtlopt.GradVac(
            beta=self.config["beta"],
            seed=self.seed,
            target_update=self.config["target-update"],
            head_weighting=self.config["head-weighting"],
        )

    def backward_kwargs(self, z):
        return {"shared_params": self.model.encoder}
