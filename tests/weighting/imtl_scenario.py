"""Fixed inputs and training runs for IMTL-G and IMTL, shared by tests/weighting/test_imtl.py and
``tools/record_imtl_peers.py`` (which records the peers' values into ``peer_golden_imtl.json``).

- ``gramians()``: fixed Gramians (full rank, duplicated, zero and opposite rows, dependent rows) for
  TorchJD's ``IMTLGWeighting``;
- ``run(...)``: a float32 model (a tanh encoder, K linear heads) trained with SGD for STEPS steps on fixed
  batches; every step records the weights applied and the gradient of every model parameter (and of
  the scales). ``hybrid=False`` keeps the scales at 0 (IMTL-G alone: LibMTL's IMTL at s = 0);
  ``rep_grad`` takes the gradients w.r.t. the representation summed over the batch (LibMTL's
  ``rep_grad=True``, mtlopt's ``features=z`` with ``feature_batch="sum"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

K = 3
STEPS = 6
LR = 0.05
F64 = torch.float64
DTYPE = F64  # the peers then compute in float64 too, except LibMTL's float32 gradient buffers


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(6, 1) for _ in range(K))

    def losses_of(self, outputs: list[Tensor], y: Tensor) -> list[Tensor]:
        return [((o.squeeze(1) - y[:, t]) ** 2).mean() + 0.1 for t, o in enumerate(outputs)]


_DATA: dict[str, Tensor] = {}


def batch(step: int) -> tuple[Tensor, Tensor]:
    if not _DATA:
        g = torch.Generator().manual_seed(2)
        _DATA["x"] = torch.randn(32, 4, generator=g)
        _DATA["y"] = torch.randn(32, K, generator=g) * torch.tensor([1.0, 3.0, 0.3]) + 0.5
        _DATA["x"], _DATA["y"] = _DATA["x"].to(DTYPE), _DATA["y"].to(DTYPE)
    rows = slice((step % 4) * 8, (step % 4) * 8 + 8)
    return _DATA["x"][rows], _DATA["y"][rows]


def model() -> Model:
    torch.manual_seed(0)
    return Model().to(DTYPE)


def gramians() -> dict[str, Tensor]:
    """Named fixed Gramians (float64) on which the weights are compared with TorchJD's."""
    g = torch.Generator().manual_seed(7)
    out = {}
    for k in (2, 3, 5, 8):
        J = torch.randn(k, 12, generator=g, dtype=F64) * torch.logspace(-1, 1, k, dtype=F64)[:, None]
        out[f"full-rank-{k}"] = J @ J.T
    J = torch.randn(3, 12, generator=g, dtype=F64)
    J[2] = -0.8 * J[0] + 0.2 * J[2]  # a conflict: negative weights appear
    out["conflict-3"] = J @ J.T
    J = torch.randn(3, 12, generator=g, dtype=F64)
    out["duplicated"] = torch.cat([J, J[:1]]) @ torch.cat([J, J[:1]]).T
    J = torch.randn(4, 12, generator=g, dtype=F64)
    J[1] = 0
    out["zero-row"] = J @ J.T
    J = torch.randn(1, 12, generator=g, dtype=F64)
    out["opposite"] = torch.cat([J, -J]) @ torch.cat([J, -J]).T
    out["zero"] = torch.zeros(3, 3, dtype=F64)
    # rank-deficient cases where the two pseudo-inverses differ (CONVENTION_DIFFERS)
    J = torch.randn(2, 12, generator=g, dtype=F64)
    J = torch.cat([J, 2.5 * J[:1]])  # task 2 a positive multiple of task 0
    out["scaled-duplicate"] = J @ J.T
    J = torch.randn(2, 12, generator=g, dtype=F64)
    J = torch.cat([J, J[:1] + J[1:]])  # task 2 the sum of the others: no exact equal projections
    out["dependent"] = J @ J.T
    return out


# the Gramians on which solve="cosine" (the default) differs from TorchJD's G⁺n (solve="gramian"
# agrees on all of them)
CONVENTION_DIFFERS = ("scaled-duplicate", "dependent")


def flat_grads(params: list[Tensor]) -> list[float]:
    return torch.cat(
        [torch.zeros_like(p).reshape(-1) if p.grad is None else p.grad.reshape(-1) for p in params]
    ).tolist()


def run(
    step_fn: Callable[[Model, Tensor, Tensor], Tensor],
    scales: Tensor | None,
    net: Model,
    *,
    hybrid: bool,
) -> dict[str, list[list[float]]]:
    """Train STEPS steps; ``step_fn(net, x, y)`` writes ``.grad`` and returns the applied weights (K,)."""
    params = list(net.parameters())
    trained = params + ([scales] if hybrid and scales is not None else [])
    optimizer = torch.optim.SGD(trained, lr=LR)
    weights, grads, scale_grads = [], [], []
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        if scales is not None:
            scales.grad = None
            if not hybrid:
                with torch.no_grad():
                    scales.zero_()
        x, y = batch(step)
        w = step_fn(net, x, y)
        weights.append([float(v) for v in w])
        grads.append(flat_grads(params))
        if scales is not None and hybrid:
            scale_grads.append(flat_grads([scales]))
        optimizer.step()
    out: dict[str, Any] = {"weights": weights, "grads": grads}
    if hybrid:
        out["scale_grads"] = scale_grads
    return out


def run_mtlopt(hybrid: bool, rep_grad: bool) -> dict[str, list[list[float]]]:
    """The scenario with mtlopt's IMTL (``hybrid``) or IMTLG, in LibMTL's configuration."""
    import mtlopt

    net = model()
    feature_batch = "sum" if rep_grad else "flatten"
    method: Any = (
        mtlopt.IMTL(K, feature_batch=feature_batch).to(DTYPE)
        if hybrid
        else mtlopt.IMTLG(feature_batch=feature_batch)
    )
    scales = method.scales if hybrid else None

    def step(net: Model, x: Tensor, y: Tensor) -> Tensor:
        z = net.encoder(x)
        losses = net.losses_of([head(z) for head in net.heads], y)
        where = {"features": z} if rep_grad else {"shared_params": net.encoder}
        return mtlopt.backward(losses, method, **where).weights

    return run(step, scales, net, hybrid=hybrid)


def run_torchjd_model() -> dict[str, list[list[float]]]:
    """TorchJD's IMTLG on the Jacobian w.r.t. the encoder (``mtl_backward`` + ``jac_to_grad``)."""
    from torchjd.aggregation import IMTLG
    from torchjd.autojac import jac_to_grad, mtl_backward

    aggregator = IMTLG()

    def step(net: Model, x: Tensor, y: Tensor) -> Tensor:
        z = net.encoder(x)
        losses = net.losses_of([head(z) for head in net.heads], y)
        mtl_backward(losses, features=z)
        return jac_to_grad(list(net.encoder.parameters()), aggregator)

    return run(step, None, model(), hybrid=False)


def run_libmtl(hybrid: bool, rep_grad: bool) -> dict[str, list[list[float]]]:
    """LibMTL 1.1.5's ``IMTL.backward`` on ``class M(HPS, IMTL)`` with the same weights and batches."""
    from LibMTL.architecture import HPS
    from LibMTL.weighting import IMTL

    class M(HPS, IMTL):
        def zero_grad_share_params(self) -> None:
            # LibMTL (2021) expects zeroed, not freed, gradients: torch >= 2.0 frees them by default,
            # and its _reset_grad then fails on None.
            self.encoder.zero_grad(set_to_none=False)

    ours = model()
    names = [f"t{t}" for t in range(K)]
    decoders = nn.ModuleDict({name: head for name, head in zip(names, ours.heads)})
    net = M(names, lambda: ours.encoder, decoders, rep_grad, False, torch.device("cpu"))
    net.init_param()
    net.loss_scale.data = net.loss_scale.data.to(DTYPE)
    # the run's parameter order: encoder, then the heads (as Model's)
    ours.heads = nn.ModuleList(decoders[name] for name in names)

    def step(_: Model, x: Tensor, y: Tensor) -> Tensor:
        out = net(x)
        losses = ours.losses_of([out[name] for name in names], y)
        # LibMTL allocates its Jacobian buffers with torch.zeros in the default dtype (float32):
        # float64 here, so that the comparison is not float32 rounding.
        default = torch.get_default_dtype()
        torch.set_default_dtype(DTYPE)
        try:
            return torch.as_tensor(net.backward(torch.stack(losses)))
        finally:
            torch.set_default_dtype(default)

    return run(step, net.loss_scale, ours, hybrid=hybrid)


# case name → (hybrid, rep_grad)
LIBMTL_CASES: dict[str, tuple[bool, bool]] = {
    "imtl-g-shared": (False, False),
    "imtl-g-features-sum": (False, True),
    "imtl-shared": (True, False),
    "imtl-features-sum": (True, True),
}
