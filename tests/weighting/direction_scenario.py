"""Fixed training runs for the direction methods (ExcessMTL, MoCo, DB-MTL), shared by
tests/weighting/test_direction_methods.py and ``tools/record_direction_peers.py`` (which records the
peers' values into ``peer_golden_direction.json``).

A float64 model (a tanh encoder, K linear heads) is trained with SGD for STEPS steps on fixed batches;
every step records the weights the method reports and the gradient of every model parameter, so
that the state the methods carry (accumulators, moving averages, λ) is compared over consecutive
steps. Peers: TorchJD 0.18.0 ``ExcessMTL`` (``mtl_backward`` + ``jac_to_grad``) and LibMTL's
``ExcessMTL``, ``MoCo`` and ``DB_MTL`` from the GitHub HEAD (not in the PyPI 1.1.5 wheel: their
source is read from the mirror of median-research-group/LibMTL at run time and put on top of the
installed 1.1.5, whose ``AbsWeighting`` they subclass).
"""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

K = 3
STEPS = 6
LR = 0.05
F64 = torch.float64
LIBMTL_MIRROR = Path("/work/.mirror/median-research-group+LibMTL/repo")


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
        _DATA["x"] = torch.randn(32, 4, generator=g, dtype=F64)
        _DATA["y"] = (
            torch.randn(32, K, generator=g, dtype=F64) * torch.tensor([1.0, 3.0, 0.3], dtype=F64) + 0.5
        )
    rows = slice((step % 4) * 8, (step % 4) * 8 + 8)
    return _DATA["x"][rows], _DATA["y"][rows]


def model() -> Model:
    torch.manual_seed(0)
    return Model().to(F64)


def flat_grads(params: list[Tensor]) -> list[float]:
    return torch.cat(
        [torch.zeros_like(p).reshape(-1) if p.grad is None else p.grad.reshape(-1) for p in params]
    ).tolist()


def run(step_fn: Callable[[Model, Tensor, Tensor], Tensor], net: Model) -> dict[str, list[list[float]]]:
    """Train STEPS steps; ``step_fn(net, x, y)`` writes ``.grad`` and returns the reported weights (K,)."""
    params = list(net.parameters())
    optimizer = torch.optim.SGD(params, lr=LR)
    weights, grads = [], []
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        x, y = batch(step)
        w = step_fn(net, x, y)
        weights.append([float(v) for v in w])
        grads.append(flat_grads(params))
        optimizer.step()
    return {"weights": weights, "grads": grads}


# case → (mtlopt builder, peer, the peer's configuration)
CASES: dict[str, tuple[Callable[[], Any], str, dict[str, Any]]] = {}


def _cases() -> dict[str, tuple[Callable[[], Any], str, dict[str, Any]]]:
    import mtlopt

    return {
        # the official code (LibMTL's copy): weights start at 1, Σw = K, weighted heads
        "excess-mtl-libmtl": (lambda: mtlopt.ExcessMTL(), "libmtl:ExcessMTL", {"robust_step_size": 1e-2}),
        "excess-mtl-libmtl-step-1": (
            lambda: mtlopt.ExcessMTL(1.0),
            "libmtl:ExcessMTL",
            {"robust_step_size": 1.0},
        ),
        # TorchJD: Σw = 1, its n_warmup_steps=1 is the official first step; heads get ∇L_t
        "excess-mtl-torchjd": (
            lambda: mtlopt.ExcessMTL(1.0, weight_scale="one", baseline_eps=1e-7, head_weighting="unweighted"),
            "torchjd:ExcessMTL",
            {"robust_step_size": 1.0, "n_warmup_steps": 1},
        ),
        "excess-mtl-torchjd-warmup-3": (
            lambda: mtlopt.ExcessMTL(
                1.0, weight_scale="one", warmup_steps=3, baseline_eps=1e-7, head_weighting="unweighted"
            ),
            "torchjd:ExcessMTL",
            {"robust_step_size": 1.0, "n_warmup_steps": 3},
        ),
        # LibMTL's MoCo: its defaults (β 0.5, σβ 0.5, γ 0.1, σγ 0.5), g/‖g‖·L, softmax for λ
        "moco-libmtl": (
            lambda: mtlopt.MoCo(
                0.5, 0.1, beta_decay=0.5, gamma_decay=0.5, normalize="unit-times-loss", lambda_map="softmax"
            ),
            "libmtl:MoCo",
            {
                "MoCo_beta": 0.5,
                "MoCo_beta_sigma": 0.5,
                "MoCo_gamma": 0.1,
                "MoCo_gamma_sigma": 0.5,
                "MoCo_rho": 0.0,
            },
        ),
        "moco-libmtl-rho": (
            lambda: mtlopt.MoCo(0.99, 0.5, rho=0.1, normalize="unit-times-loss", lambda_map="softmax"),
            "libmtl:MoCo",
            {
                "MoCo_beta": 0.99,
                "MoCo_beta_sigma": 0.0,
                "MoCo_gamma": 0.5,
                "MoCo_gamma_sigma": 0.0,
                "MoCo_rho": 0.1,
            },
        ),
        "db-mtl-libmtl": (lambda: mtlopt.DBMTL(), "libmtl:DB_MTL", {"DB_beta": 0.9, "DB_beta_sigma": 0.0}),
        # GradDrop at the representation (LibMTL 1.1.5, rep_grad=True; its purity has +1e-7), its
        # torch.rand_like drawing from a generator seeded as ours; TorchJD's on J (torch.rand patched)
        "graddrop-libmtl": (
            lambda: mtlopt.GradDrop(purity_eps=1e-7, seed=5),
            "libmtl:GradDrop",
            {"leak": 0.0},
        ),
        "graddrop-libmtl-leak": (
            lambda: mtlopt.GradDrop(leak=0.3, purity_eps=1e-7, seed=5),
            "libmtl:GradDrop",
            {"leak": 0.3},
        ),
        "graddrop-torchjd": (lambda: mtlopt.GradDrop("parameters", seed=5), "torchjd:GradDrop", {}),
        "db-mtl-libmtl-decay": (
            lambda: mtlopt.DBMTL(0.5, beta_decay=0.5),
            "libmtl:DB_MTL",
            {"DB_beta": 0.5, "DB_beta_sigma": 0.5},
        ),
    }


def cases() -> dict[str, tuple[Callable[[], Any], str, dict[str, Any]]]:
    if not CASES:
        CASES.update(_cases())
    return CASES


def run_mtlopt(case: str, **backward_kwargs: Any) -> dict[str, list[list[float]]]:
    import mtlopt

    method = cases()[case][0]()

    def step(net: Model, x: Tensor, y: Tensor) -> Tensor:
        z = net.encoder(x)
        losses = net.losses_of([head(z) for head in net.heads], y)
        reads = getattr(method, "reads", "parameters")
        where = {"features": z} if reads == "features" else {"shared_params": net.encoder}
        return mtlopt.backward(losses, method, **where, **backward_kwargs).weights

    return run(step, model())


def seeded_draws(seed: int) -> Callable[..., Tensor]:
    """Uniform draws as GradDrop's: float64 on the CPU from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    rand = torch.rand

    def draw(shape: Any, dtype: torch.dtype | None = None, device: Any = None) -> Tensor:
        return rand(tuple(shape), generator=generator, dtype=F64).to(device=device, dtype=dtype or F64)

    return draw


def run_torchjd(case: str) -> dict[str, list[list[float]]]:
    """TorchJD's aggregator on the Jacobian w.r.t. the encoder (``mtl_backward`` + ``jac_to_grad``)."""
    from torchjd import aggregation
    from torchjd.autojac import jac_to_grad, mtl_backward

    name = cases()[case][1].split(":")[1]
    aggregator = getattr(aggregation, name)(**cases()[case][2])
    weights: list[Tensor] = []
    if name == "ExcessMTL":
        aggregator.weighting.register_forward_hook(lambda _m, _i, out: weights.append(out.detach().clone()))
    draw = seeded_draws(5)
    rand = torch.rand

    def step(net: Model, x: Tensor, y: Tensor) -> Tensor:
        z = net.encoder(x)
        losses = net.losses_of([head(z) for head in net.heads], y)
        mtl_backward(losses, features=z)
        torch.rand = lambda shape, dtype=None, device=None: draw(shape, dtype, device)  # type: ignore[assignment]
        try:
            jac_to_grad(list(net.encoder.parameters()), aggregator)
        finally:
            torch.rand = rand
        return weights[-1] if weights else torch.ones(K, dtype=F64)

    return run(step, model())


def libmtl_head_class(name: str) -> type:
    """LibMTL HEAD's ``LibMTL/weighting/<name>.py``, read from the mirror, on the installed LibMTL."""
    from mtlopt.benchmarks.speed import import_peer

    if import_peer("libmtl") is None:
        raise RuntimeError("LibMTL does not import")
    key = f"LibMTL.weighting._head_{name}"
    if key not in sys.modules:
        source = subprocess.run(
            ["git", f"--git-dir={LIBMTL_MIRROR}", "show", f"HEAD:LibMTL/weighting/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        module = types.ModuleType(key)
        exec(compile(source, f"LibMTL/weighting/{name}.py (HEAD)", "exec"), module.__dict__)
        sys.modules[key] = module
    return getattr(sys.modules[key], name)


def libmtl_available(case: str = "") -> bool:
    """LibMTL imports (and, but for GradDrop, the mirror of its HEAD is here)."""
    from mtlopt.benchmarks.speed import import_peer

    head = not case.startswith("graddrop")
    return (LIBMTL_MIRROR.exists() or not head) and import_peer("libmtl") is not None


def run_libmtl(case: str) -> dict[str, list[list[float]]]:
    """LibMTL HEAD's ``X.backward(losses, **config)`` on ``class M(HPS, X)``, same weights and batches."""
    _, peer, config = cases()[case]
    name = peer.split(":")[1]
    if name == "GradDrop":  # in the installed 1.1.5
        from mtlopt.benchmarks.speed import import_peer

        assert import_peer("libmtl") is not None
        from LibMTL.weighting import GradDrop as weighting
    else:
        weighting = libmtl_head_class(name)  # imports LibMTL (with its torchvision stub)
    from LibMTL.architecture import HPS

    rep_grad = name == "GradDrop"
    draw = seeded_draws(5)

    class M(HPS, weighting):  # type: ignore[misc, valid-type]
        def zero_grad_share_params(self) -> None:
            self.encoder.zero_grad(set_to_none=False)

    ours = model()
    names = [f"t{t}" for t in range(K)]
    decoders = nn.ModuleDict({name: head for name, head in zip(names, ours.heads)})
    net = M(names, lambda: ours.encoder, decoders, rep_grad, False, torch.device("cpu"))
    ours.heads = nn.ModuleList(decoders[name] for name in names)
    default = torch.get_default_dtype()
    # LibMTL allocates its buffers in the default dtype: float64 here (not float32 rounding)
    torch.set_default_dtype(F64)
    try:
        net.init_param()
    finally:
        torch.set_default_dtype(default)

    def step(_: Model, x: Tensor, y: Tensor) -> Tensor:
        out = net(x)
        losses = ours.losses_of([out[name] for name in names], y)
        torch.set_default_dtype(F64)
        rand_like = torch.rand_like
        torch.rand_like = lambda t: draw(t.shape, t.dtype, t.device)  # type: ignore[assignment]
        try:
            out = net.backward(torch.stack(losses), **config)
        finally:
            torch.set_default_dtype(default)
            torch.rand_like = rand_like
        return torch.ones(K, dtype=F64) if out is None else torch.as_tensor(out)

    return run(step, ours)


def run_peer(case: str) -> dict[str, list[list[float]]]:
    peer = cases()[case][1]
    return run_torchjd(case) if peer.startswith("torchjd") else run_libmtl(case)
