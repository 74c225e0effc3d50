"""Gradient-level peer methods: one model, one optimizer, weights from the Gramian of the task gradients.

IMTL-G and the IMTL hybrid (IMTL-L's learned scales, then IMTL-G). Both take their gradients where
``--on`` says: ``features`` (the shared representation, the paper's and LibMTL's published setting,
the default) or ``shared`` (the encoder's parameters).

ExcessMTL, MoCo and DB-MTL (direction methods: the K×P Jacobian itself, per-task per-parameter
state) take their gradients w.r.t. the encoder's parameters; GradDrop where its ``--level`` says
(the representation by default, the paper's).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

import mtlopt
from mtlopt._options import choices
from mtlopt.weighting import FeatureBatch, excess_mtl, graddrop, imtl_g, moco

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


class DirectionRunner(SingleModelRunner):
    """A direction method: the Jacobian w.r.t. the encoder's parameters."""

    def backward_kwargs(self, z: Tensor) -> dict[str, Any]:
        return {"shared_params": self.model.encoder}


@register
class ExcessMTLRunner(DirectionRunner):
    name = "excess-mtl"
    description = "ExcessMTL (He et al. 2024): weights raised by each task's excess-risk estimate"
    options = (
        Option("step-size", 1e-2, "step size of the exponentiated weight update", parse=float),
        Option(
            "weight-scale",
            "num-tasks",
            "weights sum to K (official) or 1 (TorchJD)",
            choices(excess_mtl.WeightScale),
        ),
        Option("warmup-steps", 1, "steps that only collect the baseline excess risk", parse=int),
    )

    def weighting(self) -> mtlopt.Method:
        return mtlopt.ExcessMTL(
            self.config["step-size"],
            weight_scale=self.config["weight-scale"],
            warmup_steps=self.config["warmup-steps"],
        )


@register
class MoCoRunner(DirectionRunner):
    name = "moco"
    description = "MoCo (Fernando et al. 2023): a projected min-norm step on tracked task gradients"
    options = (
        Option("beta", 0.99, "tracking step of Y", parse=float),
        Option("beta-decay", 0.0, "beta / (1 + k)^decay", parse=float),
        Option("gamma", 0.1, "step of lambda", parse=float),
        Option("gamma-decay", 0.0, "gamma / (1 + k)^decay", parse=float),
        Option("rho", 0.0, "l2 regularization of lambda's step", parse=float),
        Option(
            "normalize",
            "none",
            "task gradients as they are, unit, or unit times the loss",
            choices(moco.Normalize),
        ),
        Option(
            "lambda-map",
            "projection",
            "simplex projection (official) or softmax (LibMTL)",
            choices(moco.LambdaMap),
        ),
        Option("weight-scale", "one", "lambda sums to 1 or to K (official x K)", choices(moco.WeightScale)),
    )

    def weighting(self) -> mtlopt.Method:
        c = self.config
        return mtlopt.MoCo(
            c["beta"],
            c["gamma"],
            beta_decay=c["beta-decay"],
            gamma_decay=c["gamma-decay"],
            rho=c["rho"],
            normalize=c["normalize"],
            lambda_map=c["lambda-map"],
            weight_scale=c["weight-scale"],
        )


@register
class DBMTLRunner(DirectionRunner):
    name = "db-mtl"
    description = "DB-MTL (Lin et al. 2023): log losses, moving-average gradients scaled to the largest norm"
    options = (
        Option("beta", 0.9, "moving-average factor", parse=float),
        Option("beta-decay", 0.0, "beta / k^decay", parse=float),
    )

    def weighting(self) -> mtlopt.Method:
        return mtlopt.DBMTL(self.config["beta"], beta_decay=self.config["beta-decay"])


@register
class GradDropRunner(SingleModelRunner):
    name = "graddrop"
    description = "GradDrop (Chen et al. 2020): each task's gradient kept where its sign wins a random draw"
    options = (
        Option(
            "level",
            "features",
            "masks on the representation's gradients (paper) or on the Jacobian's coordinates",
            choices(graddrop.Level),
        ),
        Option("leak", 0.0, "share of each task's gradient always kept", parse=float),
        Option("purity-eps", 0.0, "added to the purity's denominator (LibMTL 1e-7)", parse=float),
    )

    def weighting(self) -> mtlopt.Method:
        c = self.config
        return mtlopt.GradDrop(c["level"], leak=c["leak"], purity_eps=c["purity-eps"], seed=self.seed)

    def backward_kwargs(self, z: Tensor) -> dict[str, Any]:
        if self.config["level"] == "features":
            return {"features": z}
        return {"shared_params": self.model.encoder}
