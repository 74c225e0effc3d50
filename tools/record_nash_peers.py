"""Record the peers' Nash-MTL and FairGrad weights and shared ``.grad`` on fixed Jacobians.

Runs in the peers' environment (``/tmp/peers-venv``: TorchJD 0.18.0, cvxpy, ECOS, scipy), never in
mtlopt's. Peers:

- TorchJD 0.18.0: ``NashMTL(K, max_norm, update_weights_every, optim_niter=20).weighting(J)``,
  ``FairGradWeighting(alpha)(G)``;
- the official codes, from git snapshots named by ``NASH_OFFICIAL`` (AvivNavon/nash-mtl, cce1840) and
  ``FAIRGRAD_OFFICIAL`` (OptMN-Lab/fairgrad, 2b8cba1): ``NashMTL.backward(losses, shared_parameters)``
  and ``FairGrad.fairgrad(grads)``;
- LibMTL's ``Nash_MTL`` and ``FairGrad`` from a snapshot of its GitHub tree (``LIBMTL_GITHUB``,
  median-research-group/LibMTL 4336804; the PyPI 1.1.5 wheel has neither), on LibMTL 1.1.5's
  ``AbsWeighting`` with the gradient hooks replaced by the given Jacobian.

Each case is a list of steps; step s has the Jacobian J_s (K×P, float64) and the linear losses
L_t = J_s[t]·θ, so that ∇_θ L_t = J_s[t] exactly and ``θ.grad`` is the shared update. Recorded per peer
and step: the weights applied to the shared gradients (Nash-MTL: after the max_norm clip) and θ.grad.
Writes ``tests/weighting/peer_golden_nash.json`` with the inputs.

    NASH_OFFICIAL=/path/nash-mtl FAIRGRAD_OFFICIAL=/path/fairgrad LIBMTL_GITHUB=/path/LibMTL \\
        /tmp/peers-venv/bin/python tools/record_nash_peers.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "weighting" / "peer_golden_nash.json"
MAX_NORM = 1.0


def jacobians(K: int, P: int, steps: int, seed: int, scale: float) -> list[np.ndarray]:
    """Random Jacobians with one conflict (task K-1 against task 0) and task norms spread over 10×."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        J = rng.standard_normal((K, P)) * np.geomspace(0.3, 3.0, K)[:, None]
        J[-1] = -0.5 * J[0] + J[-1]
        out.append(scale * J)
    return out


NASH_CASES: dict[str, dict[str, Any]] = {
    "K2": {"K": 2, "P": 7, "steps": 3, "seed": 0, "scale": 1.0, "every": 1},
    "K3": {"K": 3, "P": 9, "steps": 3, "seed": 1, "scale": 1.0, "every": 1},
    "K5-scale100": {"K": 5, "P": 12, "steps": 3, "seed": 2, "scale": 100.0, "every": 1},
    "K10": {"K": 10, "P": 30, "steps": 2, "seed": 3, "scale": 1.0, "every": 1},
    "K4-every2": {"K": 4, "P": 10, "steps": 4, "seed": 4, "scale": 1.0, "every": 2},
}
FAIRGRAD_CASES: dict[str, dict[str, Any]] = {
    f"K{K}-alpha{alpha:g}": {"K": K, "P": 3 * K + 4, "steps": 1, "seed": 10 + K, "scale": 1.0, "alpha": alpha}
    for K in (2, 3, 5, 10)
    for alpha in (0.5, 1.0, 2.0)
}


def linear_losses(J: np.ndarray) -> tuple[torch.nn.Parameter, torch.Tensor]:
    theta = torch.nn.Parameter(torch.zeros(J.shape[1], dtype=torch.float64))
    return theta, torch.from_numpy(J) @ theta


def clipped(J: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(alpha @ J))
    return alpha * (MAX_NORM / norm) if norm > MAX_NORM else alpha


def load_module(name: str, path: Path, extra_path: Path | None = None) -> types.ModuleType:
    if extra_path is not None and str(extra_path) not in sys.path:
        sys.path.insert(0, str(extra_path))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def official_module(env: str, name: str) -> types.ModuleType | None:
    root = os.environ.get(env)
    if not root:
        return None
    for key in [k for k in sys.modules if k == "methods" or k.startswith("methods.")]:
        del sys.modules[key]  # both official repos call their package "methods"
    sys.path.insert(0, root)
    try:
        return load_module(name, Path(root) / "methods" / "weight_methods.py")
    finally:
        sys.path.remove(root)


def libmtl_class(name: str) -> type | None:
    root = os.environ.get("LIBMTL_GITHUB")
    if not root:
        return None
    from mtlopt.benchmarks.speed import import_peer

    if import_peer("libmtl") is None:
        return None
    module = load_module(f"libmtl_github_{name}", Path(root) / "LibMTL" / "weighting" / f"{name}.py")
    return getattr(module, name)


def libmtl_instance(cls: type, K: int) -> Any:
    method = cls()
    method.task_num = K
    method.device = torch.device("cpu")
    method.rep_grad = False
    method.init_param()
    return method


def run_nash(case: dict[str, Any], Js: list[np.ndarray]) -> dict[str, dict[str, list[list[float]]]]:
    K, every = case["K"], case["every"]
    result: dict[str, dict[str, list[list[float]]]] = {}

    from torchjd.aggregation import NashMTL as TJNashMTL

    tj = TJNashMTL(n_tasks=K, max_norm=MAX_NORM, update_weights_every=every, optim_niter=20)
    rows = [tj.weighting(torch.from_numpy(J)).numpy() for J in Js]
    result["torchjd"] = {
        "weights": [r.tolist() for r in rows],
        "grads": [(r @ J).tolist() for r, J in zip(rows, Js)],
    }

    official = official_module("NASH_OFFICIAL", "nash_official")
    if official is not None:
        method = official.NashMTL(K, torch.device("cpu"), max_norm=MAX_NORM, update_weights_every=every)
        weights, grads = [], []
        for J in Js:
            theta, losses = linear_losses(J)
            _, extra = method.backward(losses, shared_parameters=[theta])
            weights.append(clipped(J, np.asarray(extra["weights"], dtype=np.float64)).tolist())
            grads.append(theta.grad.tolist())
        result["official"] = {"weights": weights, "grads": grads}

    cls = libmtl_class("Nash_MTL")
    if cls is not None:
        method = libmtl_instance(cls, K)
        weights, grads = [], []
        for J in Js:
            theta, losses = linear_losses(J)
            method._compute_grad_dim = lambda: None
            method._compute_grad = lambda losses, mode, J=J: torch.from_numpy(J)
            method.get_share_params = lambda theta=theta: [theta]
            alpha = method.backward(losses, update_weights_every=every, optim_niter=20, max_norm=MAX_NORM)
            weights.append(clipped(J, np.asarray(alpha, dtype=np.float64)).tolist())
            grads.append(theta.grad.tolist())
        result["libmtl"] = {"weights": weights, "grads": grads}
    return result


def run_fairgrad(case: dict[str, Any], Js: list[np.ndarray]) -> dict[str, dict[str, list[list[float]]]]:
    K, alpha = case["K"], case["alpha"]
    result: dict[str, dict[str, list[list[float]]]] = {}

    from torchjd.aggregation._fairgrad import FairGradWeighting

    rows = [FairGradWeighting(alpha)(torch.from_numpy(J @ J.T)).numpy() for J in Js]
    result["torchjd"] = {
        "weights": [r.tolist() for r in rows],
        "grads": [(r @ J).tolist() for r, J in zip(rows, Js)],
    }

    official = official_module("FAIRGRAD_OFFICIAL", "fairgrad_official")
    if official is not None:
        method = official.FairGrad(K, torch.device("cpu"), alpha=alpha)
        weights, grads = [], []
        for J in Js:
            g, _, w = method.fairgrad(torch.from_numpy(J.T.copy()), alpha=alpha)  # P×K columns
            weights.append(np.asarray(w, dtype=np.float64).tolist())
            grads.append(g.double().tolist())  # before overwrite_grad's ×K
        result["official"] = {"weights": weights, "grads": grads}

    cls = libmtl_class("FairGrad")
    if cls is not None:
        method = libmtl_instance(cls, K)
        weights, grads = [], []
        for J in Js:
            theta, losses = linear_losses(J)
            method._compute_grad_dim = lambda: None
            method._compute_grad = lambda losses, mode, J=J: torch.from_numpy(J)
            w = method.backward(losses, FairGrad_alpha=alpha)
            weights.append(np.asarray(w, dtype=np.float64).tolist())
            grads.append(theta.grad.tolist())
        result["libmtl"] = {"weights": weights, "grads": grads}
    return result


def main() -> None:
    import importlib.metadata

    golden: dict[str, Any] = {
        "versions": {
            "torchjd": importlib.metadata.version("torchjd"),
            "official nash-mtl": "cce1840",
            "official fairgrad": "2b8cba1",
            "libmtl": "GitHub 4336804",
        },
        "nash-mtl": {},
        "fairgrad": {},
    }
    for method, cases, run in (
        ("nash-mtl", NASH_CASES, run_nash),
        ("fairgrad", FAIRGRAD_CASES, run_fairgrad),
    ):
        for name, case in cases.items():
            Js = jacobians(case["K"], case["P"], case["steps"], case["seed"], case["scale"])
            golden[method][name] = {
                "case": case,
                "jacobians": [J.tolist() for J in Js],
                "peers": run(case, Js),
            }
            print(method, name, sorted(golden[method][name]["peers"]))
    OUT.write_text(json.dumps(golden, indent=None) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
