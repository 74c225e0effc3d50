"""Gradient-level peer methods: one model, one optimizer, the update from ``mtlopt.backward`` with a
Gramian weighting (CAGrad, UPGrad, DualProj, Nash-MTL, FairGrad, IMTL-G, IMTL, Aligned-MTL(-UB), ConFIG,
GradVac).

``--gradients`` says where the per-task gradients are taken: ``shared`` (the encoder's parameters, the
exact setting) or ``features`` (the representation, one backward pass through the encoder). The
default is the published setting: ``shared``, except IMTL-G and IMTL (``features``, as the IMTL paper
and LibMTL's runs). Aligned-MTL-UB is Aligned-MTL on the representation.

ExcessMTL, MoCo and DB-MTL (direction methods: the K×P Jacobian itself, per-task per-parameter
state) take their gradients w.r.t. the encoder's parameters; GradDrop where its ``--level`` says
(the representation by default, the paper's). MoDo and SDMGrad read two or three independent batches
per step (their ``batches_per_step``; the trainer draws the extra ones) and their cross-Gramian w.r.t.
the encoder's parameters.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

import mtlopt
from mtlopt._options import choices
from mtlopt.weighting import (
    FeatureBatch,
    Groups,
    HeadWeighting,
    aligned_mtl,
    cagrad,
    config,
    excess_mtl,
    fairgrad,
    graddrop,
    gradvac,
    imtl_g,
    moco,
    modo,
    sdmgrad,
)

from ._base import Option, _positive_int, register
from .weightings import FEATURE_BATCH_OPTION, SingleModelRunner


def _gradients(default: str) -> Option:
    return Option(
        "gradients",
        default,
        "Gramian of the gradients w.r.t. the encoder's parameters (shared) or the representation (features)",
        ("shared", "features") if default == "shared" else ("features", "shared"),
    )


_IMTL_OPTIONS = (
    _gradients("features"),
    Option(
        "feature-batch",
        "flatten",
        "representation Gramian: flatten or sum over the batch (LibMTL rep_grad)",
        choices(FeatureBatch),
    ),
    Option("solve", "cosine", "pseudo-inverse of the cosine matrix or TorchJD's of G", choices(imtl_g.Solve)),
)


_HEADS = Option(
    "head-weighting", "unweighted", "heads get grad L_t or w_t grad L_t", choices(HeadWeighting)[::-1]
)


class GradientRunner(SingleModelRunner):
    """A Gramian weighting on the encoder's parameters, or on the representation with gradients=features."""

    def backward_kwargs(self, z: Tensor) -> dict[str, Any]:
        if self.config["gradients"] == "features":
            return {"features": z}
        return {"shared_params": self.model.encoder}


@register
class CAGradRunner(GradientRunner):
    name = "cagrad"
    description = (
        "CAGrad (Liu et al. 2021): the best worst-task improvement in a ball around the mean gradient"
    )
    options = (
        Option("c", 0.4, "radius of the ball, relative to the mean gradient's norm", parse=float),
        Option("rescale", "none", "divide the update by 1, 1+c^2 (official) or 1+c", choices(cagrad.Rescale)),
        Option(
            "weight-scale",
            "one",
            "built on the mean gradient, or x K (official)",
            choices(cagrad.WeightScale),
        ),
        Option("solver", "exact", "exact solver or the official scipy SLSQP", choices(cagrad.Solver)),
        _HEADS,
        _gradients("shared"),
    )

    def weighting(self) -> mtlopt.Method:
        return mtlopt.CAGrad(
            self.config["c"],
            rescale=self.config["rescale"],
            weight_scale=self.config["weight-scale"],
            solver=self.config["solver"],
            head_weighting=self.config["head-weighting"],
        )


_DUAL_CONE_OPTIONS = (
    Option("reg-eps", 0.0, "ridge on the trace-normalized Gramian (TorchJD: 1e-4)", parse=float),
    Option(
        "norm-eps", 0.0, "trace below which TorchJD's normalized Gramian is 0 (TorchJD: 1e-4)", parse=float
    ),
    _HEADS,
    _gradients("shared"),
)


@register
class UPGradRunner(GradientRunner):
    name = "upgrad"
    description = "UPGrad (Quinton & Rey 2024): each task's gradient projected onto the dual cone, summed"
    options = _DUAL_CONE_OPTIONS

    def weighting(self) -> mtlopt.Method:
        return mtlopt.UPGrad(
            reg_eps=self.config["reg-eps"],
            norm_eps=self.config["norm-eps"],
            head_weighting=self.config["head-weighting"],
        )


@register
class DualProjRunner(GradientRunner):
    name = "dualproj"
    description = "DualProj (TorchJD): the mean gradient projected onto the dual cone of the task gradients"
    options = _DUAL_CONE_OPTIONS

    def weighting(self) -> mtlopt.Method:
        return mtlopt.DualProj(
            reg_eps=self.config["reg-eps"],
            norm_eps=self.config["norm-eps"],
            head_weighting=self.config["head-weighting"],
        )


@register
class IMTLGRunner(GradientRunner):
    name = "imtl-g"
    description = (
        "IMTL-G (Liu et al. 2021): weights summing to 1 with equal projections on the unit gradients"
    )
    options = _IMTL_OPTIONS

    def weighting(self) -> mtlopt.Method:
        return mtlopt.IMTLG(feature_batch=self.config["feature-batch"], solve=self.config["solve"])


@register
class IMTLRunner(GradientRunner):
    name = "imtl"
    description = "IMTL (Liu et al. 2021): learned loss scales exp(s) L - s, then IMTL-G on their gradients"
    options = _IMTL_OPTIONS

    def weighting(self) -> mtlopt.Method:
        imtl = mtlopt.IMTL(
            self.num_tasks, feature_batch=self.config["feature-batch"], solve=self.config["solve"]
        )
        return imtl.to(next(self.model.parameters()).device)


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
class AlignedMTLRunner(GradientRunner):
    name = "aligned-mtl"
    description = (
        "Aligned-MTL (Senushkin et al. 2023): gradients aligned to an orthogonal equal-norm basis (eigh of G)"
    )
    options = (*_ALIGNED_OPTIONS, _gradients("shared"))

    def weighting(self):
        return _aligned(self.config)


@register
class AlignedMTLUBRunner(SingleModelRunner):
    name = "aligned-mtl-ub"
    description = "Aligned-MTL-UB (Senushkin et al. 2023): the alignment on the representation's Gramian"
    options = (
        *_ALIGNED_OPTIONS,
        FEATURE_BATCH_OPTION,
    )

    def weighting(self):
        return _aligned(self.config, feature_batch=self.config["feature-batch"])

    def backward_kwargs(self, z):
        return {"features": z}


@register
class ConFIGRunner(GradientRunner):
    name = "config"
    description = "ConFIG (Liu et al. 2025): the direction with equal cosines to every task gradient"
    options = (
        Option("length", "projection", "length of the update", choices(config.Length)),
        _HEADS,
        _gradients("shared"),
    )

    def weighting(self):
        return mtlopt.ConFIG(length=self.config["length"], head_weighting=self.config["head-weighting"])


@register
class GradVacRunner(GradientRunner):
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
        Option(
            "groups",
            "whole-model",
            "targets and weights for the whole encoder, per layer or per tensor (LibMTL group types 0/1/2; "
            "with --gradients shared)",
            choices(Groups),
        ),
        _HEADS,
        _gradients("shared"),
    )

    def weighting(self):
        return mtlopt.GradVac(
            beta=self.config["beta"],
            seed=self.seed,
            target_update=self.config["target-update"],
            groups=self.config["groups"],
            head_weighting=self.config["head-weighting"],
        )


def _max_norm(text: str) -> float | None:
    """``none`` (no clip) or a number."""
    return None if text.strip().lower() == "none" else float(text)


@register
class NashMTLRunner(GradientRunner):
    name = "nash-mtl"
    description = (
        "Nash-MTL (Navon et al. 2022): Nash bargaining weights G a = 1/a, update clipped to max-norm"
    )
    options = (
        Option("max-norm", 1.0, "clip the shared update to this norm (0: no clip)", parse=float),
        Option("update-weights-every", 1, "solve every n steps, reuse the weights in between", parse=int),
        Option(
            "head-weighting",
            "weighted",
            "heads get a_t grad L_t (official) or grad L_t (TorchJD)",
            choices(HeadWeighting),
        ),
        _gradients("shared"),
    )

    def weighting(self) -> mtlopt.NashMTL:
        return mtlopt.NashMTL(
            max_norm=self.config["max-norm"],
            update_weights_every=self.config["update-weights-every"],
            head_weighting=self.config["head-weighting"],
        )


@register
class FairGradRunner(GradientRunner):
    name = "fairgrad"
    description = "FairGrad (Ban & Ji 2024): alpha-fair weights G w = w^(-1/alpha)"
    options = (
        Option("alpha", 2.0, "fairness exponent alpha > 0 (1: Nash-MTL's system)", parse=float),
        Option("weight-scale", "one", "w as solved or times K (official)", choices(fairgrad.WeightScale)),
        Option("max-norm", None, "clip the shared update to this norm (none: no clip)", parse=_max_norm),
        Option(
            "head-weighting",
            "unweighted",
            "heads get grad L_t (official) or w_t grad L_t (LibMTL)",
            choices(HeadWeighting)[::-1],
        ),
        _gradients("shared"),
    )

    def weighting(self) -> mtlopt.FairGrad:
        return mtlopt.FairGrad(
            self.config["alpha"],
            weight_scale=self.config["weight-scale"],
            max_norm=self.config["max-norm"],
            head_weighting=self.config["head-weighting"],
        )


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


def _batches(text: str) -> int:
    value = int(text)
    if value not in (2, 3):
        raise ValueError(f"expected 2 or 3 batches per step, got {value}")
    return value


def _objectives(text: str) -> int | str:
    return "all" if text == "all" else _positive_int(text)


_MULTI_BATCH_OPTIONS = (
    Option("reduction", "mean", "mean or sum of the update batches' gradients", choices(modo.BatchReduction)),
    Option(
        "head-batches",
        "update",
        "heads get the update batches' gradients or every batch's (official, LibMTL)",
        choices(modo.HeadBatches),
    ),
    _HEADS,
)


@register
class MoDoRunner(DirectionRunner):
    name = "modo"
    description = "MoDo (Chen et al. 2023): stochastic MGDA, lambda stepped on a cross-Gramian of two batches"
    options = (
        Option("gamma", 0.1, "step size of lambda", parse=float),
        Option("rho", 0.1, "l2 regularization of lambda's step", parse=float),
        Option(
            "batches", 2, "batches per step: 2 (update on both) or 3 (update on the third)", parse=_batches
        ),
        *_MULTI_BATCH_OPTIONS,
    )

    def weighting(self) -> mtlopt.Method:
        c = self.config
        return mtlopt.MoDo(
            c["gamma"],
            c["rho"],
            batches=c["batches"],
            reduction=c["reduction"],
            head_batches=c["head-batches"],
            head_weighting=c["head-weighting"],
        )


@register
class SDMGradRunner(DirectionRunner):
    name = "sdmgrad"
    description = (
        "SDMGrad (Xiao et al. 2023): MGDA pulled towards the mean gradient, weights from two more batches"
    )
    options = (
        Option("lambda", 0.3, "pull towards the mean gradient (0: MGDA, large: EW)", parse=float),
        Option("n-iter", 20, "inner projected-SGD iterations on the weights", parse=_positive_int),
        Option("inner-lr", 10.0, "step size of the inner SGD (LibMTL: 5)", parse=float),
        Option("inner-momentum", 0.5, "momentum of the inner SGD", parse=float),
        Option("scale", "clamp", "normalization of the cross-Gramian", choices(sdmgrad.Scale)),
        Option(
            "weight-scale", "one", "weights sum to 1 or to K (official x K)", choices(sdmgrad.WeightScale)
        ),
        Option(
            "objectives",
            "all",
            "SDMGrad-OS: expected number of tasks sampled per step (all: every task)",
            parse=_objectives,
        ),
        *_MULTI_BATCH_OPTIONS,
    )

    def weighting(self) -> mtlopt.Method:
        c = self.config
        return mtlopt.SDMGrad(
            c["lambda"],
            c["n-iter"],
            c["inner-lr"],
            c["inner-momentum"],
            scale=c["scale"],
            weight_scale=c["weight-scale"],
            reduction=c["reduction"],
            head_batches=c["head-batches"],
            head_weighting=c["head-weighting"],
            objectives=None if c["objectives"] == "all" else c["objectives"],
            seed=self.seed,
        )
