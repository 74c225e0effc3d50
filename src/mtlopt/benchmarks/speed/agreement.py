"""Agreement with the peers: a peer's step and mtlopt's step of the same algorithm, from identical
weights on the identical batch (task weights, update of the shared parameters, MGDA's objective)."""

from __future__ import annotations

import copy
import random
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

import mtlopt

from ..interfaces import MultiTaskModel
from ..methods import OptimizerSettings, get_method
from . import peers
from .catalog import Method
from .setups import RunnerData, Setup


@dataclass(frozen=True)
class Agreement:
    """How a peer's step compares with mtlopt's on identical parameters and batch.

    Attributes:
        reference: the mtlopt method compared with.
        weight_diff: largest absolute difference of the task weights.
        update_diff: ‖d_peer − d_mtlopt‖ / ‖d_mtlopt‖ over the compared parameters.
        objective_excess: MGDA: :math:`(w^\\top G w - f^*) / f^*` of the peer's weights, with f* the
            optimum (mtlopt's exact solution, certified by its duality gap); None otherwise.
        note: what was compared.
    """

    reference: str
    weight_diff: float
    update_diff: float
    objective_excess: float | None
    note: str


def _flat_grads(params: Sequence[Tensor]) -> Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double().cpu() for p in params]
    )


def _relative(a: Tensor, b: Tensor) -> float:
    scale = float(b.norm())
    return float((a - b).norm()) / scale if scale > 0 else float((a - b).norm())


def _excess(G: Tensor, weights: Tensor, optimum: float) -> float:
    w = weights.double().cpu()
    w = w / w.sum()
    value = float(w @ G @ w)
    return (value - optimum) / optimum if optimum > 0 else value


def agreement(s: Setup, method: Method) -> Agreement:
    """Run ``method`` (a peer) and its mtlopt reference once from identical weights; compare."""
    name = method.name
    base = s.model()
    if method.agree is not None:
        return _gramian_agreement(s, base, method)
    if name in ("torchjd-mgda", "torchjd-pcgrad"):
        return _torchjd_agreement(s, base, "MGDA" if name.endswith("mgda") else "PCGrad")
    if name == "libmtl-mgda":
        return _libmtl_mgda_agreement(s, base, rep_grad=False)
    if name == "libmtl-mgda-ub":
        return _libmtl_mgda_agreement(s, base, rep_grad=True)
    if name == "libmtl-pcgrad":
        return _libmtl_pcgrad_agreement(s, base)
    if name == "libmtl-uw":
        return _libmtl_uw_agreement(s, base)
    if name in LOSS_PEERS:
        return _loss_agreement(s, base, name)
    raise ValueError(f"no agreement check for {name}")


def _ours(s: Setup, base: MultiTaskModel, name: str, **options: Any) -> tuple[Any, MultiTaskModel]:
    """mtlopt's backward of the registered method ``name`` (a single-model runner) from ``base``'s
    weights, without the optimizer step: the result and the model holding the gradients."""
    runner: Any = get_method(name)(options, s.tasks, seed=s.seed)
    runner.build(lambda: copy.deepcopy(base), OptimizerSettings("adam", lr=s.lr), None, RunnerData(s))
    z, losses = s.forward(runner.model)
    return mtlopt.backward(losses, runner._weighting, **runner.backward_kwargs(z)), runner.model


def _ours_mgda(s: Setup, base: MultiTaskModel, **options: Any) -> tuple[mtlopt.BackwardResult, Tensor]:
    name = "mgda-ub" if options.pop("features", False) else "mgda"
    result, model = _ours(s, base, name, **options)
    return result, _flat_grads(list(model.encoder.parameters()))


def _ours_pcgrad(s: Setup, base: MultiTaskModel, orders: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """mtlopt's PCGrad weights for given task orders, its Gramian and its shared update."""
    model = copy.deepcopy(base)
    _, losses = s.forward(model)
    J = mtlopt.jacobian(losses, list(model.encoder.parameters()), retain_graph=False)
    G = mtlopt.gramian(J).double().cpu()
    weights = mtlopt.PCGrad().coefficients(G, orders).sum(dim=0)
    return weights, G, (weights.to(J.dtype) @ J).double().cpu()


def _torchjd_agreement(s: Setup, base: MultiTaskModel, aggregator_name: str) -> Agreement:
    peers.import_peer("torchjd")
    from torchjd import aggregation
    from torchjd.autojac import jac_to_grad, mtl_backward

    K = s.tasks
    state = torch.random.get_rng_state()
    permutations = [torch.randperm(K).tolist() for _ in range(K)]  # TorchJD's PCGrad draws these
    torch.random.set_rng_state(state)
    peer = copy.deepcopy(base)
    z, losses = s.forward(peer)
    mtl_backward(losses, features=z)
    weights = jac_to_grad(peer.encoder.parameters(), getattr(aggregation, aggregator_name)())
    update = _flat_grads(list(peer.encoder.parameters()))
    if aggregator_name == "MGDA":
        ours, ours_update = _ours_mgda(s, base)
        assert ours.gramian is not None
        return Agreement(
            "mgda",
            float((weights.double().cpu() - ours.weights).abs().max()),
            _relative(update, ours_update),
            _excess(ours.gramian, weights, ours.diagnostics["min_norm"]),
            "TorchJD's Frank–Wolfe (ε = 0.001, at most 100 iterations) vs the exact optimum",
        )
    orders = [[j for j in perm if j != i] for i, perm in enumerate(permutations)]
    ours_weights, _, ours_update = _ours_pcgrad(s, base, orders)
    return Agreement(
        "pcgrad",
        float((weights.double().cpu() - ours_weights).abs().max()),
        _relative(update, ours_update),
        None,
        "TorchJD's random orders replayed",
    )


def _libmtl_mgda_agreement(s: Setup, base: MultiTaskModel, rep_grad: bool) -> Agreement:
    model = peers.libmtl_model(s, "MGDA", rep_grad, copy.deepcopy(base))
    weights = torch.as_tensor(np.asarray(model.backward(peers.libmtl_losses(s, model), mgda_gn="none")))
    update = _flat_grads(list(model.encoder.parameters()))
    clip = (0.001, 0.999) if s.tasks == 2 else (0.0, 1.0)  # LibMTL's two-task rule: the official clip
    if rep_grad:
        ours, ours_update = _ours_mgda(s, base, features=True, **{"feature-batch": "sum", "clip": clip})
        note = "MGDA-UB with per-sample gradients summed over the batch (feature_batch='sum')"
    else:
        ours, ours_update = _ours_mgda(s, base, clip=clip)
        note = "LibMTL's projected-gradient solver (no iteration cap) vs the exact optimum"
    assert ours.gramian is not None
    return Agreement(
        "mgda-ub" if rep_grad else "mgda",
        float((weights.double() - ours.weights).abs().max()),
        _relative(update, ours_update),
        _excess(ours.gramian, weights, ours.diagnostics["min_norm"]),
        note,
    )


def _libmtl_pcgrad_agreement(s: Setup, base: MultiTaskModel) -> Agreement:
    K = s.tasks
    state = random.getstate()
    orders = []
    for _ in range(K):  # LibMTL's PCGrad draws these with random.shuffle, task i included
        order = list(range(K))
        random.shuffle(order)
        orders.append(order)
    random.setstate(state)
    model = peers.libmtl_model(s, "PCGrad", False, copy.deepcopy(base))
    weights = torch.as_tensor(np.asarray(model.backward(peers.libmtl_losses(s, model)), dtype=np.float64))
    update = _flat_grads(list(model.encoder.parameters()))
    ours_weights, _, ours_update = _ours_pcgrad(s, base, orders)
    return Agreement(
        "pcgrad",
        float((weights - ours_weights).abs().max()),
        _relative(update, ours_update),
        None,
        "LibMTL's random orders replayed (include_self=True)",
    )


def _libmtl_uw_agreement(s: Setup, base: MultiTaskModel) -> Agreement:
    model = peers.libmtl_model(s, "UW", False, copy.deepcopy(base))
    weights = torch.as_tensor(np.asarray(model.backward(peers.libmtl_losses(s, model)), dtype=np.float64))
    update = _flat_grads([*model.encoder.parameters(), *model.decoders.parameters()])
    result, ours_model = _ours(s, base, "uw", convention="libmtl")
    ours_update = _flat_grads([*ours_model.encoder.parameters(), *ours_model.heads.parameters()])
    return Agreement(
        "uw",
        float((weights - result.weights).abs().max()),
        _relative(update, ours_update),
        None,
        "UncertaintyWeighting(convention='libmtl'); update of every model parameter",
    )


# peer row -> (the mtlopt row compared with, the peer's class)
LOSS_PEERS: dict[str, tuple[str, str]] = {
    "torchjd-dwa": ("dwa", "DWA"),
    "torchjd-random": ("rlw", "Random"),
    "torchjd-geometricmean": ("gls", "GeometricMean"),
    "torchjd-imtll": ("imtl-l", "IMTLL"),
    "torchjd-famo": ("famo", "FAMO"),
    "torchjd-stch": ("stch", "STCH"),
    "libmtl-dwa": ("dwa", "DWA"),
    "libmtl-rlw": ("rlw", "RLW"),
    "libmtl-gls": ("gls", "GLS"),
}
_LOSS_NOTES = {
    "dwa": "from the same two epoch means (epoch 2)",
    "rlw": "the peer's global generator seeded as mtlopt's RLW(seed)",
    "gls": "weights: ∂GM/∂L_t on both sides (LibMTL's returned weights are not its gradient's)",
    "imtl-l": "from the same nonzero scales",
    "famo": "second step, after one logit update from the same new losses",
    "stch": "STCH(transform='none', λ = 1/K): TorchJD's form; the timed row is the official recipe",
}


def _imtl_scales(K: int) -> Tensor:
    return torch.linspace(-0.5, 0.5, K)


def _famo_new_losses(values: Tensor) -> Tensor:
    """Stand-ins for the losses recomputed after a step: the same on both sides, distinct decreases."""
    K = values.shape[0]
    return values.detach() * (1.0 - 0.05 * (torch.arange(K, dtype=values.dtype) % 3))


def _mtlopt_loss_method(s: Setup, reference: str) -> Any:
    """mtlopt's method as the peer is configured, in the state the peer is put in."""
    K = s.tasks
    if reference == "dwa":
        method: Any = mtlopt.DWA(2.0)
        history = peers.dwa_history(K)
        method.load_state_dict({"epoch": 2, "sums": None, "count": 0, "history": [history[0], history[1]]})
        return method
    if reference == "rlw":
        return mtlopt.RLW(seed=s.seed)
    if reference == "gls":
        return mtlopt.GLS()
    if reference == "imtl-l":
        method = mtlopt.IMTLL(K)
        with torch.no_grad():
            method.scales.copy_(_imtl_scales(K))
        return method
    if reference == "famo":
        return mtlopt.FAMO(K, lr=0.025, weight_decay=1e-3)
    if reference == "stch":
        return mtlopt.STCH(1.0, transform="none", preference=[1.0 / K] * K)
    raise ValueError(f"no loss method {reference!r}")


def _weights_of(losses: Tensor, backward: Any) -> Tensor:
    """The weights a backward pass applies to the losses (∂objective/∂L_t, read by a hook)."""
    seen: list[Tensor] = []
    losses.register_hook(lambda g: seen.append(g.detach().clone()))
    backward(losses)
    return seen[0].double().cpu()


def _loss_agreement(s: Setup, base: MultiTaskModel, name: str) -> Agreement:
    reference, cls = LOSS_PEERS[name]
    peer = name.split("-")[0]
    ours_model = copy.deepcopy(base)
    method = _mtlopt_loss_method(s, reference)

    def ours_step() -> Tensor:
        ours_model.zero_grad(set_to_none=True)
        _, losses = s.forward(ours_model)
        return mtlopt.backward(losses, method).weights

    seed = s.seed
    with torch.random.fork_rng(devices=[]):
        weights = ours_step()
        if reference == "famo":
            method.update(_famo_new_losses(torch.stack(s.forward(ours_model)[1]).detach()))
            weights = ours_step()
    ours_update = _flat_grads([*ours_model.encoder.parameters(), *ours_model.heads.parameters()])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # RLW: the peers draw from the global generator
        if peer == "torchjd":
            model = copy.deepcopy(base)
            scalarizer = peers.torchjd_scalarizer(cls, s.tasks)
            if reference == "dwa":
                history = peers.dwa_history(s.tasks).float()
                scalarizer._previous_averages = [history[0], history[1]]
            if reference == "imtl-l":
                with torch.no_grad():
                    scalarizer.log_scale.copy_(_imtl_scales(s.tasks))

            def peer_step() -> Tensor:
                model.zero_grad(set_to_none=True)
                _, losses = s.forward(model)
                return _weights_of(torch.stack(losses), lambda v: scalarizer(v).backward())

            theirs = peer_step()
            if reference == "famo":
                with torch.no_grad():
                    scalarizer.update(_famo_new_losses(torch.stack(s.forward(model)[1])))
                theirs = peer_step()
            update = _flat_grads([*model.encoder.parameters(), *model.heads.parameters()])
        else:
            model = peers.libmtl_loss_model(s, cls, copy.deepcopy(base))
            kwargs = peers._LIBMTL_LOSS_KWARGS[cls]
            theirs = _weights_of(peers.libmtl_losses(s, model), lambda v: model.backward(v, **kwargs))
            update = _flat_grads([*model.encoder.parameters(), *model.decoders.parameters()])
    return Agreement(
        reference,
        float((theirs - weights).abs().max()),
        _relative(update, ours_update),
        None,
        _LOSS_NOTES[reference] + "; update of every model parameter",
    )


def _weights_from_update(J: Tensor, update: Tensor) -> Tensor:
    """Weights w with wᵀJ = update (least squares): for an aggregator that returns no weights."""
    return torch.linalg.lstsq(J.double().cpu().T, update.unsqueeze(1)).solution.squeeze(1)


class _ReplayedShuffle:
    """``random.shuffle`` for LibMTL's GradVac: mtlopt's GradVac orders from ``seed``, one per call."""

    def __init__(self, K: int, seed: int) -> None:
        self.source, self.K = mtlopt.GradVac(seed=seed), K
        self.pending: list[list[int]] = []

    def __call__(self, items: list[int]) -> None:
        if not self.pending:
            self.pending = self.source.orders(self.K)
        order = self.pending.pop(0)
        assert sorted(order) == sorted(items), (order, items)
        items[:] = order


def _gramian_agreement(s: Setup, base: MultiTaskModel, method: Method) -> Agreement:
    """The generic check of a Gramian peer row: the peer's step and ``method.reference``'s runner with
    ``method.agree`` from identical weights on the identical batch, the weights (recovered by least
    squares on J where the peer returns none) and the update of the encoder. Random orders: TorchJD
    draws from the global generator, seeded as the runner's weighting; LibMTL's ``random.shuffle``
    replays the runner's orders."""
    assert method.reference is not None and method.peer_class is not None
    reference, cls = method.reference, method.peer_class
    result, ours_model = _ours(s, base, reference, **(method.agree or {}))
    ours_update = _flat_grads(list(ours_model.encoder.parameters()))
    model = copy.deepcopy(base)
    note = f"{reference} with {method.agree or 'its defaults'}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        if method.peer == "torchjd":
            peers.import_peer("torchjd")
            from torchjd import aggregation
            from torchjd.autojac import jac_to_grad, mtl_backward

            z, losses = s.forward(model)
            if cls.endswith("Weighting"):
                weights: Tensor | None = peers.torchjd_features_backward(
                    model, losses, z, getattr(aggregation, cls)()
                )
            else:
                J = mtlopt.jacobian(losses, list(model.encoder.parameters()), retain_graph=True)
                mtl_backward(losses, features=z)
                weights = jac_to_grad(model.encoder.parameters(), getattr(aggregation, cls)())
            update = _flat_grads(list(model.encoder.parameters()))
            if weights is None:
                weights = _weights_from_update(J, update)
                note += "; the peer's weights by least squares on J"
        else:
            libmtl_model = peers.libmtl_model(s, cls, False, model)
            libmtl: Any = peers.import_peer("libmtl")
            module: Any = sys.modules[getattr(libmtl.weighting, cls).__module__]
            saved = getattr(module, "random", None)  # the module's `random` (GradVac's, PCGrad's shuffle)
            if saved is not None:
                module.random = types.SimpleNamespace(shuffle=_ReplayedShuffle(s.tasks, s.seed))
            try:
                kwargs = peers._LIBMTL_KWARGS.get(cls, {})
                out = libmtl_model.backward(peers.libmtl_losses(s, libmtl_model), **kwargs)
            finally:
                if saved is not None:
                    module.random = saved
            weights = torch.as_tensor(np.asarray(out, dtype=np.float64))
            update = _flat_grads(list(libmtl_model.encoder.parameters()))
    return Agreement(
        reference,
        float((weights.double().cpu() - result.weights.double().cpu()).abs().max()),
        _relative(update, ours_update),
        None,
        note + "; update of the shared parameters",
    )
