"""Fixed training runs for the methods that read several batches per step (MoDo, SDMGrad), shared by
tests/weighting/test_modo_sdmgrad.py and ``tools/record_modo_sdmgrad_peers.py`` (which records the
peers' values into ``peer_golden_modo_sdmgrad.json``).

The model, data and SGD of ``direction_scenario.py``; step s reads the batches 3s, 3s + 1, 3s + 2
(modulo its 4 blocks of 8 rows) as the step's batches 0, 1, 2 (MoDo with ``batches=2``: the first two).
Every step records the reported weights and the gradient of every model parameter. Peer: LibMTL
HEAD's ``MoDo`` and ``SDMGrad`` (read from the mirror of median-research-group/LibMTL on the installed
1.1.5, with HEAD's ``AbsWeighting``: 1.1.5's frees the graph after the last task's backward pass,
HEAD's keeps it for these two), whose ``backward`` takes the losses of 3 batches as a [3, K] tensor: batch 0, 1, 2 there are
ours (MoDo: A = J₀J₁ᵀ, the update on batch 2; SDMGrad: ζ = 0, ξ = 1, ξ' = 2). LibMTL's SDMGrad returns
no weights: its c = (w + λ/K)/(1 + λ) is read from its state after the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import direction_scenario as ds
import torch
from torch import Tensor, nn

K, STEPS, F64 = ds.K, ds.STEPS, ds.F64


def step_batches(step: int, count: int) -> list[tuple[Tensor, Tensor]]:
    return [ds.batch(3 * step + b) for b in range(count)]


def run(step_fn: Callable[[ds.Model, list[tuple[Tensor, Tensor]]], Tensor], net: ds.Model, count: int):
    params = list(net.parameters())
    optimizer = torch.optim.SGD(params, lr=ds.LR)
    weights, grads = [], []
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        w = step_fn(net, step_batches(step, count))
        weights.append([float(v) for v in w])
        grads.append(ds.flat_grads(params))
        optimizer.step()
    return {"weights": weights, "grads": grads}


# case → (mtlopt builder, peer, the peer's configuration)
def cases() -> dict[str, tuple[Callable[[], Any], str, dict[str, Any]]]:
    import mtlopt

    libmtl_heads = {"head_batches": "all", "reduction": "mean"}
    return {
        # LibMTL's MoDo: three batches, the update on the third, heads averaged over the three
        "modo-libmtl": (
            lambda: mtlopt.MoDo(1e-3, 0.1, batches=3, **libmtl_heads),
            "libmtl:MoDo",
            {"MoDo_gamma": 1e-3, "MoDo_rho": 0.1},
        ),
        "modo-libmtl-gamma": (
            lambda: mtlopt.MoDo(0.5, 0.2, batches=3, **libmtl_heads),
            "libmtl:MoDo",
            {"MoDo_gamma": 0.5, "MoDo_rho": 0.2},
        ),
        # LibMTL's SDMGrad: inner lr 5; heads summed over the three batches
        "sdmgrad-libmtl": (
            lambda: mtlopt.SDMGrad(0.3, 20, 5.0, head_batches="all", reduction="sum"),
            "libmtl:SDMGrad",
            {"SDMGrad_lamda": 0.3, "SDMGrad_niter": 20},
        ),
        # LibMTL's inner lr 5 puts w on a vertex of the simplex here; with 0.05 (its SGD patched to that
        # lr for the call: LibMTL has no option for it) w stays inside, so the inner loop is compared
        "sdmgrad-libmtl-inner-lr": (
            lambda: mtlopt.SDMGrad(0.3, 20, 0.05, head_batches="all", reduction="sum"),
            "libmtl:SDMGrad",
            {"SDMGrad_lamda": 0.3, "SDMGrad_niter": 20, "inner_lr": 0.05},
        ),
        "sdmgrad-libmtl-lambda": (
            lambda: mtlopt.SDMGrad(1.5, 7, 5.0, head_batches="all", reduction="sum"),
            "libmtl:SDMGrad",
            {"SDMGrad_lamda": 1.5, "SDMGrad_niter": 7},
        ),
    }


def run_mtlopt(case: str) -> dict[str, list[list[float]]]:
    import mtlopt

    method = cases()[case][0]()

    def step(net: ds.Model, batches: list[tuple[Tensor, Tensor]]) -> Tensor:
        losses = []
        for x, y in batches:
            z = net.encoder(x)
            losses.append(net.losses_of([head(z) for head in net.heads], y))
        result = mtlopt.backward(losses[0], method, shared_params=net.encoder, extra_losses=losses[1:])
        return result.weights

    return run(step, ds.model(), method.batches_per_step)


def libmtl_head_class(name: str) -> type:
    """LibMTL HEAD's ``LibMTL/weighting/<name>.py`` on HEAD's ``AbsWeighting`` (both from the mirror)."""
    import subprocess
    import sys
    import types

    from mtlopt.benchmarks.speed import import_peer

    if import_peer("libmtl") is None:
        raise RuntimeError("LibMTL does not import")

    def head_module(path: str, key: str) -> types.ModuleType:
        if key not in sys.modules:
            source = subprocess.run(
                ["git", f"--git-dir={ds.LIBMTL_MIRROR}", "show", f"HEAD:{path}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            module = types.ModuleType(key)
            exec(compile(source, f"{path} (HEAD)", "exec"), module.__dict__)
            sys.modules[key] = module
        return sys.modules[key]

    base_key = "LibMTL.weighting.abstract_weighting"
    head_base = head_module(
        "LibMTL/weighting/abstract_weighting.py", "LibMTL.weighting._head_abstract_weighting"
    )
    installed = sys.modules[base_key]
    sys.modules[base_key] = head_base  # what ``from ... import AbsWeighting`` in the HEAD file finds
    try:
        module = head_module(f"LibMTL/weighting/{name}.py", f"LibMTL.weighting._head_multibatch_{name}")
    finally:
        sys.modules[base_key] = installed
    return getattr(module, name)


def run_libmtl(case: str) -> dict[str, list[list[float]]]:
    """LibMTL HEAD's ``X.backward(losses [3, K], **config)`` on ``class M(HPS, X)``."""
    _, peer, config = cases()[case]
    name = peer.split(":")[1]
    weighting = libmtl_head_class(name)
    from LibMTL.architecture import HPS

    class M(HPS, weighting):  # type: ignore[misc, valid-type]
        def zero_grad_share_params(self) -> None:
            self.encoder.zero_grad(set_to_none=False)

    ours = ds.model()
    names = [f"t{t}" for t in range(K)]
    decoders = nn.ModuleDict({n: head for n, head in zip(names, ours.heads)})
    net = M(names, lambda: ours.encoder, decoders, False, False, torch.device("cpu"))
    ours.heads = nn.ModuleList(decoders[n] for n in names)
    default = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # LibMTL allocates its buffers in the default dtype
    try:
        net.init_param()
    finally:
        torch.set_default_dtype(default)

    def step(_: ds.Model, batches: list[tuple[Tensor, Tensor]]) -> Tensor:
        rows = []
        for x, y in batches:
            out = net(x)
            rows.append(torch.stack(ours.losses_of([out[n] for n in names], y)))
        options = {k: v for k, v in config.items() if k != "inner_lr"}
        sgd = torch.optim.SGD
        if "inner_lr" in config:
            torch.optim.SGD = lambda params, lr, momentum: sgd(
                params, lr=config["inner_lr"], momentum=momentum
            )  # type: ignore[misc, assignment]
        torch.set_default_dtype(F64)
        try:
            out = net.backward(torch.stack(rows), **options)
        finally:
            torch.set_default_dtype(default)
            torch.optim.SGD = sgd  # type: ignore[misc]
        if out is None:  # SDMGrad: the weights of ζ's gradients, from its state
            lam = config["SDMGrad_lamda"]
            return (net.w.detach() + lam / K) / (1 + lam)
        return torch.as_tensor(out)

    return run(step, ours, 3)
