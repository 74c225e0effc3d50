"""The rows of the speed table: every method, its step builder, and the peers' counterparts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import peers, steps
from .setups import Setup, Step


@dataclass(frozen=True)
class Method:
    """A row of the table.

    Attributes:
        name: the name on the command line and in the files.
        description: one line for the report.
        build: makes the method's :class:`Step` for a configuration.
        peer: the peer library it comes from (None: mtlopt).
        reference: the mtlopt method implementing the same algorithm (for the agreement check).
        skip: returns why the method is skipped for a configuration, or None.
    """

    name: str
    description: str
    build: Callable[[Setup], Step]
    peer: str | None = None
    reference: str | None = None
    skip: Callable[[Setup], str | None] = field(default=lambda s: None)


def _only_two_tasks(s: Setup) -> str | None:
    if s.tasks != 2:
        return "two-task preference rays only (each of the 5 members takes K backward passes)"
    return None


def _no_batchnorm(s: Setup) -> str | None:
    if s.spec.has_batchnorm:
        return "vmap cannot update BatchNorm running statistics (the population loops)"
    return None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "forward-only",
            "zero_grad and the forward pass, no backward (reference)",
            steps.forward_only,
        ),
        Method(
            "ew",
            "equal weighting through mtlopt.backward (the reference)",
            steps.runner_step("ew"),
        ),
        Method(
            "ew-plain",
            "equal weighting as torch.stack(losses).mean().backward(), no mtlopt",
            steps.ew_plain,
        ),
        Method(
            "mgda",
            "exact MGDA: per-task gradients of the shared parameters",
            steps.runner_step("mgda"),
        ),
        Method(
            "mgda-ub",
            "MGDA-UB: per-task gradients of the representation",
            steps.runner_step("mgda-ub"),
        ),
        Method("pcgrad", "PCGrad on the shared parameters", steps.runner_step("pcgrad")),
        Method(
            "uw",
            "uncertainty weighting (learned log-variances)",
            steps.runner_step("uw"),
        ),
        Method(
            "gradnorm",
            "GradNorm at the last shared layer",
            steps.runner_step("gradnorm"),
        ),
        Method(
            "mao",
            "MAO: per-task Adam moments of the shared parameters",
            steps.runner_step("mao", {"balance": "off"}),
        ),
        Method(
            "alternating",
            "alternating steps, one group per task, per-group Adam",
            steps.runner_step("alternating"),
        ),
        Method(
            "population",
            "5 models with transfer, in a loop (vectorize='never': what 'auto' does on the CPU)",
            steps.population("never"),
        ),
        Method(
            "population-vmap",
            "5 models with transfer, vmapped (vectorize='always')",
            steps.population("always"),
            skip=_no_batchnorm,
        ),
        Method(
            "pmtl",
            "Pareto MTL, 5 models (one per ray)",
            steps.pareto_population("pmtl"),
            skip=_only_two_tasks,
        ),
        Method(
            "epo",
            "EPO, 5 models (one per ray)",
            steps.pareto_population("epo"),
            skip=_only_two_tasks,
        ),
        Method(
            "torchjd-mgda",
            "TorchJD: mtl_backward + jac_to_grad(MGDA())",
            peers.torchjd_step("MGDA"),
            peer="torchjd",
            reference="mgda",
        ),
        Method(
            "torchjd-pcgrad",
            "TorchJD: mtl_backward + jac_to_grad(PCGrad())",
            peers.torchjd_step("PCGrad"),
            peer="torchjd",
            reference="pcgrad",
        ),
        Method(
            "libmtl-mgda",
            "LibMTL: HPS + MGDA (gradients of the shared parameters)",
            peers.libmtl_step("MGDA"),
            peer="libmtl",
            reference="mgda",
        ),
        Method(
            "libmtl-mgda-ub",
            "LibMTL: HPS + MGDA with rep_grad=True (gradients of the representation)",
            peers.libmtl_step("MGDA", rep_grad=True),
            peer="libmtl",
            reference="mgda-ub",
        ),
        Method(
            "libmtl-pcgrad",
            "LibMTL: HPS + PCGrad",
            peers.libmtl_step("PCGrad"),
            peer="libmtl",
            reference="pcgrad",
        ),
        Method(
            "libmtl-uw",
            "LibMTL: HPS + UW",
            peers.libmtl_step("UW"),
            peer="libmtl",
            reference="uw",
        ),
        Method(
            "libmtl-gradnorm",
            "LibMTL: HPS + GradNorm (all shared parameters, softmax weights)",
            peers.libmtl_step("GradNorm"),
            peer="libmtl",
        ),
    )
}
REFERENCE_METHODS = ("forward-only", "ew")
DEFAULT_METHODS = tuple(m for m in METHODS if METHODS[m].peer is None)
