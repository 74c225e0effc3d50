"""Agreement with the peers: a peer's step and mtlopt's step of the same algorithm, from identical
weights on the identical batch (task weights, update of the shared parameters, MGDA's objective)."""

from __future__ import annotations

import copy
import random
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
