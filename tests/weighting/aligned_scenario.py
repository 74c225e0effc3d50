"""One fixed small training run for Aligned-MTL(-UB), ConFIG and GradVac, shared by the peer-agreement
tests and by ``tools/record_aligned_peers.py`` (which records the peers' values into
``peer_golden_aligned.json``).

A float64 model (a tanh encoder and K = 4 linear heads, task 3 built to conflict with task 0) trains
with plain SGD on fixed batches for a few steps; every step records the task weights and the gradient
of every parameter. Each method runs through a ``step`` function that writes ``.grad`` and returns the
weights (or None where a peer returns only a direction); mtlopt's runs go through ``mtlopt.backward``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

K = 4
STEPS = 5
LR = 0.2
GRADVAC_SEED = 11
F64 = torch.float64


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.encoder = nn.Linear(5, 6).double()
        self.heads = nn.ModuleList(nn.Linear(6, 1).double() for _ in range(K))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.5)

    def features(self, x: Tensor) -> Tensor:
        return torch.tanh(self.encoder(x))

    def task_losses(self, z: Tensor, y: Tensor) -> list[Tensor]:
        return [((head(z).squeeze(1) - y[:, t]) ** 2).mean() for t, head in enumerate(self.heads)]


def batch(step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 5, generator=g, dtype=F64)
    y = torch.randn(8, K, generator=g, dtype=F64) * torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=F64)
    y[:, 3] = -1.5 * y[:, 0] + 0.3 * y[:, 3]  # task 3 against task 0: conflicting gradients
    return x, y


def params(net: Model) -> list[Tensor]:
    return list(net.parameters())


def flat_grads(net: Model) -> list[float]:
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()]).tolist()  # type: ignore[union-attr]


# step(net, x, y) writes every .grad and returns the K weights (None when only a direction is known)
Step = Callable[[Model, Tensor, Tensor], "Tensor | None"]


def run(step: Step) -> dict[str, Any]:
    """STEPS steps of SGD; the weights and the gradients of every step."""
    net = Model()
    weights: list[list[float] | None] = []
    grads: list[list[float]] = []
    for s in range(STEPS):
        x, y = batch(s)
        for p in net.parameters():
            p.grad = None
        w = step(net, x, y)
        weights.append(None if w is None else [float(v) for v in w])
        grads.append(flat_grads(net))
        with torch.no_grad():
            for p in net.parameters():
                p -= LR * p.grad  # type: ignore[operator]
    return {"weights": weights, "grads": grads}


def mtlopt_method(name: str) -> tuple[Any, str]:
    """mtlopt's method for a scenario name and where it reads its Gramian (shared or features)."""
    import mtlopt

    methods = {
        "aligned-mtl": (lambda: mtlopt.AlignedMTL(), "shared"),
        "aligned-mtl-median": (lambda: mtlopt.AlignedMTL(scale_mode="median"), "shared"),
        "aligned-mtl-rmse": (lambda: mtlopt.AlignedMTL(scale_mode="rmse"), "shared"),
        "aligned-mtl-ub": (lambda: mtlopt.AlignedMTL(), "features"),
        "aligned-mtl-ub-sum": (lambda: mtlopt.AlignedMTL(feature_batch="sum"), "features"),
        "config": (lambda: mtlopt.ConFIG(), "shared"),
        "gradvac": (lambda: mtlopt.GradVac(seed=GRADVAC_SEED), "shared"),
        "gradvac-pypi": (
            lambda: mtlopt.GradVac(seed=GRADVAC_SEED, eps=0.0, target_update="on-correction"),
            "shared",
        ),
    }
    make, where = methods[name]
    return make(), where


def run_mtlopt(name: str) -> dict[str, Any]:
    import mtlopt

    method, where = mtlopt_method(name)

    def step(net: Model, x: Tensor, y: Tensor) -> Tensor:
        z = net.features(x)
        losses = net.task_losses(z, y)
        kwargs = {"shared_params": net.encoder} if where == "shared" else {"features": z}
        return mtlopt.backward(losses, method, **kwargs).weights

    return run(step)


# scenario name → the peers recorded for it
PEERS: dict[str, list[str]] = {
    "aligned-mtl": ["torchjd", "libmtl-head", "official"],
    "aligned-mtl-median": ["torchjd", "official"],
    "aligned-mtl-rmse": ["torchjd", "official"],
    "aligned-mtl-ub": ["torchjd", "official"],
    "aligned-mtl-ub-sum": ["libmtl-head"],
    "config": ["torchjd", "official"],
    "gradvac": ["torchjd", "libmtl-head"],
    "gradvac-pypi": ["libmtl"],
}


# --- helpers of the tests ----------------------------------------------------------------------------


def golden() -> dict[str, Any]:
    import json
    from pathlib import Path

    return json.loads(Path(__file__).with_name("peer_golden_aligned.json").read_text())


def assert_agrees(ours: dict[str, Any], theirs: dict[str, Any], rtol: float = 1e-9) -> None:
    """Weights (where the peer gives them) and every parameter's gradient, step by step."""
    assert len(theirs["grads"]) == STEPS
    for step in range(STEPS):
        if theirs["weights"][step] is not None:
            torch.testing.assert_close(
                torch.tensor(ours["weights"][step], dtype=F64),
                torch.tensor(theirs["weights"][step], dtype=F64),
                rtol=rtol,
                atol=1e-12,
            )
        torch.testing.assert_close(
            torch.tensor(ours["grads"][step], dtype=F64),
            torch.tensor(theirs["grads"][step], dtype=F64),
            rtol=rtol,
            atol=1e-12,
        )


def recorder() -> Any:
    import importlib.util
    import sys
    from pathlib import Path

    if "record_aligned_peers" not in sys.modules:
        path = Path(__file__).parents[2] / "tools" / "record_aligned_peers.py"
        spec = importlib.util.spec_from_file_location("record_aligned_peers", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["record_aligned_peers"] = module
        spec.loader.exec_module(module)
    return sys.modules["record_aligned_peers"]


def live_peer(name: str, peer: str) -> dict[str, Any]:
    """The peer's values now, or a pytest skip when it is not installed here."""
    import importlib.util

    import pytest

    from mtlopt.benchmarks.speed import import_peer

    if peer == "torchjd" and importlib.util.find_spec("torchjd") is None:
        pytest.skip("torchjd is not installed here (tools/record_aligned_peers.py runs it elsewhere)")
    if peer.startswith("libmtl") and import_peer("libmtl") is None:
        pytest.skip("LibMTL is not installed here (tools/record_aligned_peers.py runs it elsewhere)")
    rec = recorder()
    repo = {
        "libmtl-head": rec.LIBMTL_HEAD,
        "official": rec.CONFIG_REPO if name == "config" else rec.SAMSUNG_MTL,
    }
    if peer in repo and not repo[peer].exists():
        pytest.skip(f"no git copy of the {peer} code at {repo[peer]}")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # as the recorder runs them
    try:
        if peer == "torchjd":
            return rec.torchjd(name)
        if peer.startswith("libmtl"):
            return rec.libmtl(name, head=peer == "libmtl-head")
        return rec.official(name)
    finally:
        torch.set_default_dtype(old)


def structured_jacobian(
    seed: int, K: int, rank: int, duplicates: int = 0, zeros: int = 0, scale: float = 1.0, P: int = 80
) -> Tensor:
    """K×P float64 rows of a given rank with singular values in [0.1, 1] (a clear gap above 0), then
    ``duplicates`` rows copied from others, ``zeros`` rows zeroed, everything times ``scale``."""
    g = torch.Generator().manual_seed(seed)
    rank = max(1, min(rank, K, P))
    U, _ = torch.linalg.qr(torch.randn(K, rank, generator=g, dtype=F64))
    Q, _ = torch.linalg.qr(torch.randn(P, rank, generator=g, dtype=F64))
    s = 0.1 + 0.9 * torch.rand(rank, generator=g, dtype=F64)
    J = (U * s) @ Q.T
    perm = torch.randperm(K, generator=g).tolist()
    for t in range(min(duplicates, K - 1)):
        J[perm[t]] = J[perm[-1 - t]] if perm[-1 - t] != perm[t] else J[perm[t]]
    for t in range(min(zeros, K - 1)):
        J[perm[(t + duplicates) % K]] = 0.0
    return J * scale
