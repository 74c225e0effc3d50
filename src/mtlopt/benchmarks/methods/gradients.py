"""Gradient-level peer methods: one model, one optimizer, weights from the Gramian of the task gradients.

IMTL-G and the IMTL hybrid (IMTL-L's learned scales, then IMTL-G). Both take their gradients where
``--on`` says: ``features`` (the shared representation, the paper's and LibMTL's published setting,
the default) or ``shared`` (the encoder's parameters).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

import mtlopt
from mtlopt._options import choices
from mtlopt.weighting import FeatureBatch, imtl_g

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
