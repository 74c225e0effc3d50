"""Single-model methods that weigh per-task gradients from their Gramian, beyond MGDA and PCGrad:
CAGrad, UPGrad, DualProj. Each takes the gradients w.r.t. the encoder's parameters by default
(``gradients=shared``, the papers' setting) or w.r.t. the representation (``gradients=features``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

import mtlopt
from mtlopt._options import choices
from mtlopt.weighting import HeadWeighting, cagrad

from ._base import Option, register
from .weightings import SingleModelRunner

_GRADIENTS = Option(
    "gradients",
    "shared",
    "Gramian of the gradients w.r.t. the encoder's parameters (shared) or the representation (features)",
    ("shared", "features"),
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
        _GRADIENTS,
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
    _GRADIENTS,
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
