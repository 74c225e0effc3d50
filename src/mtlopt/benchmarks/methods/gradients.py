"""Gradient-level peer methods: one model, one optimizer, the update from ``mtlopt.backward`` with a
Gramian weighting.

IMTL-G and the IMTL hybrid (IMTL-L's learned scales, then IMTL-G) take their gradients where ``--on``
says: ``features`` (the shared representation, the paper's and LibMTL's published setting, the default)
or ``shared`` (the encoder's parameters). Aligned-MTL, ConFIG and GradVac take them w.r.t. the encoder's
parameters, Aligned-MTL-UB w.r.t. the representation.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

import mtlopt
from mtlopt._options import choices
from mtlopt.weighting import FeatureBatch, HeadWeighting, aligned_mtl, config, gradvac, imtl_g

from ._base import Option, register
from .weightings import SingleModelRunner

On = Literal["features", "shared"]

_GRADIENT_OPTIONS = (
    Option(
        "on",
        "features",
        "task gradients w.r.t. the representation (paper) or the shared parameters",
        choices(On),
    ),
    Option(
        "feature-batch",
        "flatten",
        "representation Gramian: flatten or sum over the batch (LibMTL rep_grad)",
        choices(FeatureBatch),
    ),
    Option("solve", "cosine", "pseudo-inverse of the cosine matrix or TorchJD's of G", choices(imtl_g.Solve)),
)


class GramianRunner(SingleModelRunner):
    """A Gramian weighting whose gradients are taken where ``--on`` says."""

    def backward_kwargs(self, z: Tensor) -> dict[str, Any]:
        if self.config["on"] == "features":
            return {"features": z}
        return {"shared_params": self.model.encoder}


@register
class IMTLGRunner(GramianRunner):
    name = "imtl-g"
    description = (
        "IMTL-G (Liu et al. 2021): weights summing to 1 with equal projections on the unit gradients"
    )
    options = _GRADIENT_OPTIONS

    def weighting(self) -> mtlopt.Method:
        return mtlopt.IMTLG(feature_batch=self.config["feature-batch"], solve=self.config["solve"])


@register
class IMTLRunner(GramianRunner):
    name = "imtl"
    description = "IMTL (Liu et al. 2021): learned loss scales exp(s) L - s, then IMTL-G on their gradients"
    options = _GRADIENT_OPTIONS

    def weighting(self) -> mtlopt.Method:
        imtl = mtlopt.IMTL(
            self.num_tasks, feature_batch=self.config["feature-batch"], solve=self.config["solve"]
        )
        return imtl.to(next(self.model.parameters()).device)


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
