"""The rows of the speed table: every method, its step builder, and the peers' counterparts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
        beside: a peer row's mtlopt counterpart when it has no agreement check (``reference``
            otherwise): a run adds a peer's rows for the mtlopt methods it measures.
        peer_class: a Gramian peer row's class in the peer library (TorchJD's aggregator, or its
            ``...Weighting`` applied to the representation's Gramian; LibMTL's weighting).
        agree: a Gramian peer row's agreement: the options of ``reference``'s runner under which
            mtlopt computes what the peer computes (the generic check of
            :func:`~mtlopt.benchmarks.speed.agreement`: weights and the shared update, one step from
            identical weights; random orders replayed from the runner's seed).
    """

    name: str
    description: str
    build: Callable[[Setup], Step]
    peer: str | None = None
    reference: str | None = None
    skip: Callable[[Setup], str | None] = field(default=lambda s: None)
    beside: str | None = None
    peer_class: str | None = None
    agree: dict[str, Any] | None = None
    per: tuple[int | None, str] | None = None  # a set method's models or rays per step (None: the
    # configuration's population), for the per-member cost beside the step's

    @property
    def counterpart(self) -> str | None:
        """The mtlopt row a peer row stands beside."""
        return self.reference or self.beside


def _only_two_tasks(s: Setup) -> str | None:
    if s.tasks != 2:
        return "two-task preference rays only (each of the 5 members takes K backward passes)"
    return None


def _no_batchnorm(s: Setup) -> str | None:
    if s.spec.has_batchnorm:
        return "vmap cannot update BatchNorm running statistics (the population loops)"
    return None


def torchjd_gramian(
    aggregator: str, reference: str, agree: dict[str, Any] | None = None, name: str | None = None
) -> Method:
    """A TorchJD aggregator's row beside the Gramian method ``reference``: ``mtl_backward`` +
    ``jac_to_grad(encoder, aggregator())`` timed, the agreement with ``reference``'s runner under
    ``agree`` on the shared parameters. An aggregator named ``...Weighting`` is TorchJD's weighting
    applied to the Gramian of the flattened representation gradients (an ``-UB`` method)."""
    on_features = aggregator.endswith("Weighting")
    what = f"{aggregator} on the representation's Gramian" if on_features else f"jac_to_grad({aggregator}())"
    return Method(
        name or f"torchjd-{aggregator.lower()}",
        f"TorchJD: {what}" if on_features else f"TorchJD: mtl_backward + {what}",
        (peers.torchjd_features_step if on_features else peers.torchjd_step)(aggregator),
        peer="torchjd",
        reference=reference,
        peer_class=aggregator,
        agree=agree or {},
    )


def libmtl_gramian(
    weighting: str, reference: str, agree: dict[str, Any] | None = None, kwargs: dict[str, Any] | None = None
) -> Method:
    """A LibMTL weighting's row (HPS, gradients of the shared parameters) beside ``reference``;
    ``kwargs``: what LibMTL's trainer passes to its ``backward`` (e.g. CAGrad's ``calpha``, ``rescale``),
    used by the timed step and the agreement alike."""
    if kwargs is not None:
        peers._LIBMTL_KWARGS.setdefault(weighting, kwargs)
    return Method(
        f"libmtl-{weighting.lower()}",
        f"LibMTL: HPS + {weighting} (gradients of the shared parameters)",
        peers.libmtl_step(weighting),
        peer="libmtl",
        reference=reference,
        peer_class=weighting,
        agree=agree or {},
    )


_SHARED = {"gradients": "shared"}


def _lean_shared(runner: Any, z: Any) -> dict[str, Any]:
    return {"shared_params": runner.model.encoder, "method": "lean"}


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
            "mgda-lean",
            "exact MGDA with method='lean': the Gramian layer by layer, without the K×P Jacobian",
            steps.runner_step("mgda", backward_kwargs=_lean_shared),
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
            per=(None, "member"),
        ),
        Method(
            "population-vmap",
            "5 models with transfer, vmapped (vectorize='always')",
            steps.population("always"),
            skip=_no_batchnorm,
            per=(None, "member"),
        ),
        Method(
            "pmtl",
            "Pareto MTL, 5 models (one per ray)",
            steps.pareto_population("pmtl"),
            skip=_only_two_tasks,
            per=(None, "member"),
        ),
        Method(
            "epo",
            "EPO, 5 models (one per ray)",
            steps.pareto_population("epo"),
            skip=_only_two_tasks,
            per=(None, "member"),
        ),
        Method(
            "phn-ls",
            "PHN-LS: one Dirichlet ray per step, the hypernetwork's forward and the generated target's "
            "forward and backward",
            steps.runner_step("phn-ls"),
            per=(1, "ray"),
        ),
        Method(
            "phn-epo",
            "PHN-EPO: as PHN-LS, with the EPO weights of the ray (K target-gradient passes)",
            steps.runner_step("phn-epo"),
            per=(1, "ray"),
        ),
        Method(
            "cosmos",
            "COSMOS: one Dirichlet ray per step, appended to the input of one network",
            steps.runner_step("cosmos"),
            per=(1, "ray"),
        ),
        Method(
            "pamal",
            "PaMaL: a window of 3 Dirichlet rays per step, each a forward of the K members' convex "
            "combination, one backward through all",
            steps.runner_step("pamal"),
            per=(3, "ray"),
        ),
        Method(
            "dwa",
            "DWA, every step a one-step epoch (its on_epoch_start hook each step)",
            steps.epoch_step("dwa", pre_steps=2),
        ),
        Method("rlw", "RLW: softmax of normal draws every step", steps.runner_step("rlw")),
        Method("gls", "GLS: the gradient of the geometric mean of the losses", steps.runner_step("gls")),
        Method(
            "si", "scale-invariant LS: the gradient of the sum of the log losses", steps.runner_step("si")
        ),
        Method(
            "imtl-l", "IMTL-L: learned loss scales (trained by the same Adam)", steps.runner_step("imtl-l")
        ),
        Method(
            "famo",
            "FAMO with its loop hook: the losses recomputed on the batch after the step (a second forward "
            "pass, no graph) and the logit update",
            steps.runner_step("famo"),
        ),
        Method(
            "famo-no-update",
            "FAMO's backward and optimizer step alone: no recomputation, no logit update",
            steps.famo_without_update,
        ),
        Method(
            "stch",
            "STCH (official log-normalized recipe, past its warm-up and nadir epochs), every step a one-step "
            "epoch",
            steps.epoch_step("stch", pre_steps=6),
        ),
        Method("imtl-g", "IMTL-G on the representation's gradients", steps.runner_step("imtl-g")),
        Method("imtl", "IMTL: learned loss scales, then IMTL-G (representation)", steps.runner_step("imtl")),
        Method("aligned-mtl", "Aligned-MTL on the shared parameters", steps.runner_step("aligned-mtl")),
        Method("aligned-mtl-ub", "Aligned-MTL-UB on the representation", steps.runner_step("aligned-mtl-ub")),
        Method("config", "ConFIG on the shared parameters", steps.runner_step("config")),
        Method("gradvac", "GradVac on the shared parameters", steps.runner_step("gradvac")),
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
            beside="gradnorm",
        ),
        Method(
            "torchjd-dwa",
            "TorchJD: scalarization.DWA, step() after every step",
            peers.torchjd_scalarizer_step("DWA"),
            peer="torchjd",
            reference="dwa",
        ),
        Method(
            "torchjd-random",
            "TorchJD: scalarization.Random (RLW)",
            peers.torchjd_scalarizer_step("Random"),
            peer="torchjd",
            reference="rlw",
        ),
        Method(
            "torchjd-geometricmean",
            "TorchJD: scalarization.GeometricMean (GLS)",
            peers.torchjd_scalarizer_step("GeometricMean"),
            peer="torchjd",
            reference="gls",
        ),
        Method(
            "torchjd-imtll",
            "TorchJD: scalarization.IMTLL (scales trained by the same Adam)",
            peers.torchjd_scalarizer_step("IMTLL"),
            peer="torchjd",
            reference="imtl-l",
        ),
        Method(
            "torchjd-famo",
            "TorchJD: scalarization.FAMO, update() with the losses recomputed after the step",
            peers.torchjd_scalarizer_step("FAMO"),
            peer="torchjd",
            reference="famo",
        ),
        Method(
            "torchjd-stch",
            "TorchJD: scalarization.STCH(mu=1) on the raw losses (no warm-up, no nadir)",
            peers.torchjd_scalarizer_step("STCH"),
            peer="torchjd",
            reference="stch",
        ),
        Method(
            "libmtl-dwa",
            "LibMTL: HPS + DWA at epoch 2 (its trainer's epoch means outside the step)",
            peers.libmtl_loss_step("DWA"),
            peer="libmtl",
            reference="dwa",
        ),
        Method(
            "libmtl-rlw",
            "LibMTL: HPS + RLW (normal)",
            peers.libmtl_loss_step("RLW"),
            peer="libmtl",
            reference="rlw",
        ),
        Method(
            "libmtl-gls", "LibMTL: HPS + GLS", peers.libmtl_loss_step("GLS"), peer="libmtl", reference="gls"
        ),
        # The Gramian methods' peers: one line each (the agreement is the generic one).
        torchjd_gramian("IMTLG", "imtl-g", {**_SHARED, "solve": "gramian"}),
        torchjd_gramian("AlignedMTL", "aligned-mtl", {"pref": "mean"}),
        torchjd_gramian("AlignedMTLWeighting", "aligned-mtl-ub", {"pref": "mean"}, "torchjd-alignedmtl-ub"),
        torchjd_gramian("ConFIG", "config"),
        torchjd_gramian("GradVac", "gradvac"),
        libmtl_gramian("IMTL", "imtl", _SHARED),
        libmtl_gramian("GradVac", "gradvac", {"target-update": "on-correction"}),
    )
}
NOT_TIMED = {
    "grid": "a sweep of fixed weightings, each an EW step",
    "ls-sweep": "a sweep of fixed weightings, each an EW step",
    "stl": "K single-task models",
    "mtgd": "the population and population-vmap rows",
}
"""Registered benchmark methods without a row of their own, and why."""

for _name, _runner in steps.registered_methods().items():  # a newly registered method: its runner's row
    if _name not in METHODS and _name not in NOT_TIMED:
        METHODS[_name] = Method(_name, _runner.description, steps.runner_step(_name))
REFERENCE_METHODS = ("forward-only", "ew")
DEFAULT_METHODS = tuple(m for m in METHODS if METHODS[m].peer is None)
