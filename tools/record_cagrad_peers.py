"""Record the peers' values of CAGrad, UPGrad and DualProj on fixed Jacobians.

Runs in the peers' environment (``VENV=/tmp/peers-venv bash scripts/install_peers.sh``), never in
mtlopt's: TorchJD 0.18.0 (``CAGradWeighting``, ``UPGradWeighting``, ``DualProjWeighting`` on the
float64 Gramian), LibMTL 1.1.5 (``CAGrad.backward`` on a float32 model with one shared parameter
vector; its CAGrad is written for 3 tasks), and the official CAGrad function (Cranial-XIX/CAGrad
dc3d481, ``nyuv2/utils.py``: ``cagrad`` is nested in the trainer, so it is read from the repository
named by ``CAGRAD_OFFICIAL``, a git directory, and run as it is, on P×K float64 gradient columns; its
trainer multiplies the result by 3, "to match the sum loss"). Writes
``tests/weighting/peer_golden_cagrad.json``.

    CAGRAD_OFFICIAL=/path/to/CAGrad/.git PYTHONPATH=src /tmp/peers-venv/bin/python tools/record_cagrad_peers.py
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_COMMIT = "dc3d481"
# Fixed Jacobians: (name, K, P, seed); every one has a conflict; "rank" has rank 4 < K = 6.
CASES = [("k2", 2, 7, 1), ("k3", 3, 12, 2), ("k5", 5, 12, 3), ("rank", 6, 4, 4), ("k10", 10, 30, 5)]
C_VALUES = (0.4, 0.5)


def jacobian(K: int, P: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((K, P))
    J[-1] = -0.6 * J[0] + 0.4 * J[-1]  # task K-1 conflicts with task 0
    return J * np.exp(rng.uniform(-1.0, 1.0, (K, 1)))


def libmtl_problem() -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """θ (P = 8, float32) and three losses L_t = ½‖A_t θ − y_t‖² + ½‖θ‖²/(t + 2) (fixed draws)."""
    g = torch.Generator().manual_seed(7)
    theta0 = torch.randn(8, generator=g)
    A = [torch.randn(5, 8, generator=g) for _ in range(3)]
    y = [torch.randn(5, generator=g) for _ in range(3)]
    A[2] = -0.8 * A[0] + 0.3 * A[2]
    return theta0, A, y


def libmtl_losses(theta: torch.Tensor, A: list[torch.Tensor], y: list[torch.Tensor]) -> list[torch.Tensor]:
    return [0.5 * (A[t] @ theta - y[t]).pow(2).sum() + 0.5 * theta.pow(2).sum() / (t + 2) for t in range(3)]


def torchjd_values(J: np.ndarray) -> dict[str, Any]:
    from torchjd.aggregation import CAGradWeighting, DualProjWeighting, UPGradWeighting

    G = torch.from_numpy(J @ J.T)
    out: dict[str, Any] = {f"cagrad_c{c}": CAGradWeighting(c)(G).tolist() for c in C_VALUES}
    out["upgrad"] = UPGradWeighting()(G).tolist()
    out["dualproj"] = DualProjWeighting()(G).tolist()
    return out


def official_function():
    git_dir = os.environ.get("CAGRAD_OFFICIAL")
    if not git_dir:
        return None
    source = subprocess.run(
        ["git", "--git-dir", git_dir, "show", f"{OFFICIAL_COMMIT}:nyuv2/utils.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    node = next(
        n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == "cagrad"
    )
    from scipy.optimize import minimize

    namespace: dict[str, Any] = {"np": np, "torch": torch, "minimize": minimize}
    exec(compile(ast.Module([node], []), "official_cagrad", "exec"), namespace)
    return namespace["cagrad"]


def libmtl_values(c: float) -> dict[str, Any] | None:
    sys.path.insert(0, str(ROOT / "src"))
    from mtlopt.benchmarks.speed import import_peer

    if import_peer("libmtl") is None:
        return None
    from LibMTL.weighting import CAGrad

    theta0, A, y = libmtl_problem()
    theta = torch.nn.Parameter(theta0.clone())

    class Method(CAGrad):
        def get_share_params(self):
            return [theta]

        def zero_grad_share_params(self):
            if theta.grad is not None:
                theta.grad.zero_()

    method = Method()
    method.task_num, method.device, method.rep_grad = 3, torch.device("cpu"), False
    weights = method.backward(libmtl_losses(theta, A, y), calpha=c, rescale=1)
    return {"inner_weights": np.asarray(weights).tolist(), "grad": theta.grad.tolist()}


def main() -> None:
    golden: dict[str, Any] = {"official_commit": OFFICIAL_COMMIT, "cases": {}}
    official = official_function()
    for name, K, P, seed in CASES:
        J = jacobian(K, P, seed)
        entry: dict[str, Any] = {"J": J.tolist(), "torchjd": torchjd_values(J)}
        if official is not None and K == 3:  # the official code is written for 3 tasks
            grads = torch.from_numpy(J.T.copy())
            entry["official"] = {
                f"rescale{r}": (3 * official(grads, alpha=0.4, rescale=r)).tolist() for r in (0, 1, 2)
            }
        golden["cases"][name] = entry
    libmtl = libmtl_values(0.5)
    if libmtl is not None:
        golden["libmtl"] = {"calpha": 0.5, "rescale": 1, **libmtl}
    path = ROOT / "tests" / "weighting" / "peer_golden_cagrad.json"
    path.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
