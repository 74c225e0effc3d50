"""Gradient-level peer methods: one multi-task model and one optimizer, the update from
``mtlopt.backward`` with a Gramian weighting of the gradients w.r.t. the shared parameters."""

from __future__ import annotations

from typing import Any

import mtlopt
from mtlopt._options import choices
from mtlopt.weighting import HeadWeighting, fairgrad

from ._base import Option, register
from .weightings import SingleModelRunner


def _max_norm(text: str) -> float | None:
    """``none`` (no clip) or a number."""
    return None if text.strip().lower() == "none" else float(text)


@register
class NashMTLRunner(SingleModelRunner):
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
    )

    def weighting(self) -> mtlopt.NashMTL:
        return mtlopt.NashMTL(
            max_norm=self.config["max-norm"],
            update_weights_every=self.config["update-weights-every"],
            head_weighting=self.config["head-weighting"],
        )

    def backward_kwargs(self, z: Any) -> dict[str, Any]:
        return {"shared_params": self.model.encoder}


@register
class FairGradRunner(SingleModelRunner):
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
    )

    def weighting(self) -> mtlopt.FairGrad:
        return mtlopt.FairGrad(
            self.config["alpha"],
            weight_scale=self.config["weight-scale"],
            max_norm=self.config["max-norm"],
            head_weighting=self.config["head-weighting"],
        )

    def backward_kwargs(self, z: Any) -> dict[str, Any]:
        return {"shared_params": self.model.encoder}
