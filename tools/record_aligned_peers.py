"""Record the peers' values of Aligned-MTL(-UB), ConFIG and GradVac on the shared scenario.

Runs in the peers' environment (``/tmp/peers-venv``), never in mtlopt's:

- TorchJD 0.18.0: ``AlignedMTL(pref_vector=ones, scale_mode)`` and ``GradVac()`` through
  ``mtl_backward`` + ``jac_to_grad`` (the weights are what ``jac_to_grad`` returns; GradVac's orders
  from the global generator seeded with ``GRADVAC_SEED``), ``ConFIG()`` on J (the weights recovered
  from the direction by least squares on J); Aligned-MTL-UB composed: ``AlignedMTLWeighting`` on the
  Gramian of the flattened representation gradients, then one encoder backward pass;
- LibMTL 1.1.5 (PyPI): ``GradVac`` (``beta=0.5``; ``random.shuffle`` replays mtlopt's orders);
- LibMTL HEAD 4336804 (``LIBMTL_HEAD``, a git directory of median-research-group/LibMTL):
  ``Aligned_MTL`` (``rep_grad`` False and True) and ``GradVac`` (group type 0), their sources read
  with ``git show`` and run on LibMTL 1.1.5's package (``abstract_weighting`` taken from HEAD too);
- the official codes: SamsungLabs/MTL 3f577f1 (``SAMSUNG_MTL``) ``ProcrustesSolver`` as its
  ``amtl``/``amtlub`` balancers call it, and tum-pbs/ConFIG 9486243 (``CONFIG_REPO``)
  ``ConFIG_update``.

``torch.symeig`` (removed in torch 2) is shimmed with ``torch.linalg.eigh(M, UPLO="U")``. The peers run
with float64 as torch's default dtype (LibMTL allocates its gradient buffers in the default dtype), so
their eigenvalue cutoff uses float64's epsilon; every eigenvalue of the scenario is far above either
cutoff (the float32-epsilon cutoff is tested apart). Writes
``tests/weighting/peer_golden_aligned.json``: per scenario name and peer, the weights (or None) and
every parameter's gradient over the steps.

    LIBMTL_HEAD=... SAMSUNG_MTL=... CONFIG_REPO=... /tmp/peers-venv/bin/python tools/record_aligned_peers.py
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "weighting"))

import aligned_scenario as sc  # noqa: E402

import mtlopt  # noqa: E402
from mtlopt.benchmarks.speed import import_peer  # noqa: E402

MIRROR = Path("/work/.mirror")
LIBMTL_HEAD = Path(os.environ.get("LIBMTL_HEAD", MIRROR / "median-research-group+LibMTL" / "repo"))
SAMSUNG_MTL = Path(os.environ.get("SAMSUNG_MTL", MIRROR / "SamsungLabs+MTL" / "repo"))
CONFIG_REPO = Path(os.environ.get("CONFIG_REPO", MIRROR / "tum-pbs+ConFIG" / "repo"))


def git_source(repo: Path, path: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repo), "show", f"HEAD:{path}"], check=True, capture_output=True, text=True
    ).stdout


def module_from(name: str, source: str, extra: dict[str, Any] | None = None) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(extra or {})
    exec(compile(source, name, "exec"), module.__dict__)
    return module


@contextlib.contextmanager
def symeig_shim() -> Iterator[None]:
    def symeig(M: Tensor, eigenvectors: bool = True) -> tuple[Tensor, Tensor]:
        return torch.linalg.eigh(M, UPLO="U")

    had = hasattr(torch, "symeig")
    old = getattr(torch, "symeig", None)
    torch.symeig = symeig  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if had:
            torch.symeig = old  # type: ignore[attr-defined]
        else:
            del torch.symeig  # type: ignore[attr-defined]


def rows(outputs: list[Tensor], inputs: list[Tensor]) -> Tensor:
    """The K×P Jacobian of the outputs w.r.t. the inputs (flattened), by autograd."""
    return torch.stack(
        [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(o, inputs, retain_graph=True)])
            for o in outputs
        ]
    )


def write(params: list[Tensor], vector: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = vector[offset : offset + n].view_as(p).clone()
        offset += n


def heads_unweighted(net: sc.Model, losses: list[Tensor]) -> None:
    head_params = list(net.heads.parameters())
    write(
        head_params,
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(sum(losses), head_params, retain_graph=True)]),
    )


def weights_from_direction(J: Tensor, d: Tensor) -> Tensor:
    return torch.linalg.solve(J @ J.T, J @ d)


# --- TorchJD -----------------------------------------------------------------------------------------


def torchjd(name: str) -> dict[str, Any]:
    from torchjd import aggregation as agg
    from torchjd.autojac import jac_to_grad, mtl_backward

    ones = torch.ones(sc.K, dtype=torch.float64)
    if name.startswith("aligned-mtl") and not name.startswith("aligned-mtl-ub"):
        mode = {"aligned-mtl": "min", "aligned-mtl-median": "median", "aligned-mtl-rmse": "rmse"}[name]
        aggregator: Any = agg.AlignedMTL(pref_vector=ones, scale_mode=mode)
    elif name == "config":
        aggregator = agg.ConFIG()
    elif name == "gradvac":
        aggregator = agg.GradVac()
    elif name == "aligned-mtl-ub":
        weighting = agg.AlignedMTLWeighting(pref_vector=ones, scale_mode="min")

        def ub(net: sc.Model, x: Tensor, y: Tensor) -> Tensor:
            z = net.features(x)
            losses = net.task_losses(z, y)
            Jz = rows(losses, [z])
            w = weighting(Jz @ Jz.T)
            heads_unweighted(net, losses)
            z.backward((w @ Jz).view_as(z))
            return w

        return sc.run(ub)
    else:
        raise ValueError(name)

    seeded: list[bool] = []

    def step(net: sc.Model, x: Tensor, y: Tensor) -> Tensor:
        if name == "gradvac" and not seeded:  # after the model's construction, which draws too
            torch.manual_seed(sc.GRADVAC_SEED)  # TorchJD draws its orders from the global generator
            seeded.append(True)
        z = net.features(x)
        losses = net.task_losses(z, y)
        J = rows(losses, list(net.encoder.parameters())) if name == "config" else None
        mtl_backward(losses, features=z)
        w = jac_to_grad(list(net.encoder.parameters()), aggregator)
        if J is not None:
            d = torch.cat([p.grad.reshape(-1) for p in net.encoder.parameters()])  # type: ignore[union-attr]
            return weights_from_direction(J, d)
        return w

    return sc.run(step)


# --- LibMTL ------------------------------------------------------------------------------------------


def libmtl_host(method: Any, net: sc.Model, rep_grad: bool) -> None:
    method.task_num, method.device, method.rep_grad = sc.K, torch.device("cpu"), rep_grad
    method.task_name = [f"t{t}" for t in range(sc.K)]
    method.get_share_params = lambda: net.encoder.parameters()
    method.zero_grad_share_params = lambda: net.encoder.zero_grad(set_to_none=False)
    method.encoder = net.encoder


class ReplayedShuffle:
    """random.shuffle replaced by mtlopt's GradVac orders (each call: the next task i of the step)."""

    def __init__(self) -> None:
        self.source = mtlopt.GradVac(seed=sc.GRADVAC_SEED)
        self.pending: list[list[int]] = []

    def __call__(self, items: list[int]) -> None:
        if not self.pending:
            self.pending = self.source.orders(sc.K)
        order = self.pending.pop(0)
        assert sorted(order) == sorted(items), (order, items)
        items[:] = order


def libmtl_head_classes() -> dict[str, Any]:
    if import_peer("libmtl") is None:
        raise RuntimeError("LibMTL does not import")
    abstract = module_from(
        "LibMTL.weighting.abstract_weighting",
        git_source(LIBMTL_HEAD, "LibMTL/weighting/abstract_weighting.py"),
    )
    saved = sys.modules.get("LibMTL.weighting.abstract_weighting")
    sys.modules["LibMTL.weighting.abstract_weighting"] = abstract
    try:
        aligned = module_from(
            "libmtl_head_aligned", git_source(LIBMTL_HEAD, "LibMTL/weighting/Aligned_MTL.py")
        )
        gradvac = module_from("libmtl_head_gradvac", git_source(LIBMTL_HEAD, "LibMTL/weighting/GradVac.py"))
    finally:
        if saved is not None:
            sys.modules["LibMTL.weighting.abstract_weighting"] = saved
    return {"Aligned_MTL": aligned.Aligned_MTL, "GradVac": gradvac.GradVac, "random": gradvac.random}


def libmtl(name: str, head: bool) -> dict[str, Any]:
    if head:
        classes = libmtl_head_classes()
        cls = classes["Aligned_MTL" if name.startswith("aligned") else "GradVac"]
        rng = classes["random"]
    else:
        if import_peer("libmtl") is None:
            raise RuntimeError("LibMTL does not import")
        import LibMTL.weighting.GradVac  # noqa: F401

        module = sys.modules["LibMTL.weighting.GradVac"]  # the package's GradVac is the class
        cls, rng = module.GradVac, module.random
    rep_grad = name == "aligned-mtl-ub-sum"
    state: dict[str, Any] = {}
    shuffle = ReplayedShuffle()

    def step(net: sc.Model, x: Tensor, y: Tensor) -> Tensor:
        if "method" not in state:
            state["method"] = cls()
            libmtl_host(state["method"], net, rep_grad)
            if head and name.startswith("gradvac"):
                state["method"].init_param()
        method = state["method"]
        z = net.features(x)
        if rep_grad:
            reps = {task: z.detach().clone().requires_grad_(True) for task in method.task_name}
            method.rep, method.rep_tasks = z, reps
            losses = [net.task_losses(reps[f"t{t}"], y)[t] for t in range(sc.K)]
        else:
            losses = net.task_losses(z, y)
        J = rows(losses, list(net.encoder.parameters())) if name.startswith("gradvac") else None
        kwargs = {"GradVac_beta": 0.5, "GradVac_group_type": 0} if head else {"beta": 0.5}
        old_shuffle, rng.shuffle = rng.shuffle, shuffle
        try:
            with symeig_shim():
                w = method.backward(losses, **kwargs)
        finally:
            rng.shuffle = old_shuffle
        if J is not None:  # LibMTL HEAD returns ones (its weight bookkeeping is commented out)
            d = torch.cat([p.grad.reshape(-1) for p in net.encoder.parameters()])  # type: ignore[union-attr]
            return weights_from_direction(J, d)
        return torch.as_tensor(w, dtype=torch.float64)

    return sc.run(step)


# --- official codes ----------------------------------------------------------------------------------


def official(name: str) -> dict[str, Any]:
    if name == "config":
        with tempfile.TemporaryDirectory() as tmp:
            package = Path(tmp) / "conflictfree"
            package.mkdir()
            for file in ("__init__", "utils", "weight_model", "length_model", "grad_operator"):
                source = git_source(CONFIG_REPO, f"conflictfree/{file}.py") if file != "__init__" else ""
                (package / f"{file}.py").write_text(source)
            sys.path.insert(0, tmp)
            try:
                with warnings.catch_warnings():  # its docstrings' invalid escapes, at compile time
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", SyntaxWarning)
                    from conflictfree.grad_operator import ConFIG_update

                def step(net: sc.Model, x: Tensor, y: Tensor) -> Tensor:
                    z = net.features(x)
                    losses = net.task_losses(z, y)
                    J = rows(losses, list(net.encoder.parameters()))
                    d = ConFIG_update(J)
                    write(list(net.encoder.parameters()), d)
                    heads_unweighted(net, losses)
                    return weights_from_direction(J, d)

                return sc.run(step)
            finally:
                sys.path.remove(tmp)
    solver = module_from("samsung_solver", git_source(SAMSUNG_MTL, "code/optim/aligned/solver.py"))
    mode = {"aligned-mtl": "min", "aligned-mtl-median": "median", "aligned-mtl-rmse": "rmse"}.get(name, "min")

    def aligned(net: sc.Model, x: Tensor, y: Tensor) -> Tensor:
        z = net.features(x)
        losses = net.task_losses(z, y)
        ub = name == "aligned-mtl-ub"
        inputs = [z] if ub else list(net.encoder.parameters())
        J = rows(losses, inputs)  # the balancers' get_G_wrt_shared / get_model_G_wrt_hrepr: K×P
        with symeig_shim():
            grads, weights, _ = solver.ProcrustesSolver.apply(J.T.unsqueeze(0), mode)
        direction, w = grads[0].sum(-1), weights.sum(-1)
        heads_unweighted(net, losses)  # scale_decoder_grad=False: the decoders get ∇L_t
        if ub:
            z.backward(direction.view_as(z))
        else:
            write(list(net.encoder.parameters()), direction)
        return w

    return sc.run(aligned)


def cutoff_case() -> dict[str, Any]:
    """A Jacobian whose Gramian has the eigenvalues 1, 1e-3, 1e-9: the smallest is above TorchJD 0.18.0's
    float64 cutoff and below the float32 one of the official code (and TorchJD HEAD)."""
    from torchjd import aggregation as agg

    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(7, 3, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    J = (V * torch.tensor([1.0, 1e-3**0.5, 1e-9**0.5], dtype=torch.float64)) @ Q.T  # K×P rows
    G = J @ J.T
    solver = module_from("samsung_solver", git_source(SAMSUNG_MTL, "code/optim/aligned/solver.py"))
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the official cutoff: torch.finfo() of the default dtype
    try:
        with symeig_shim():
            _, weights, _ = solver.ProcrustesSolver.apply(J.T.unsqueeze(0), "min")
    finally:
        torch.set_default_dtype(old)
    ones = torch.ones(3, dtype=torch.float64)
    return {
        "jacobian": J.tolist(),
        "torchjd": agg.AlignedMTLWeighting(pref_vector=ones)(G).tolist(),
        "official": weights.sum(-1).tolist(),
    }


def main() -> None:
    torch.set_default_dtype(torch.float64)
    golden: dict[str, dict[str, Any]] = {"cutoff-gramian": cutoff_case()}
    for name, peers in sc.PEERS.items():
        golden[name] = {}
        for peer in peers:
            if peer == "torchjd":
                values = torchjd(name)
            elif peer in ("libmtl", "libmtl-head"):
                values = libmtl(name, head=peer == "libmtl-head")
            else:
                values = official(name)
            golden[name][peer] = values
            print(f"{name:20s} {peer:12s} recorded")
    path = ROOT / "tests" / "weighting" / "peer_golden_aligned.json"
    path.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
