"""Sequences of cross-Gramians A = J₁J₂ᵀ (two independent batches: not symmetric) for the weighting-level
comparison of MoDo and SDMGrad with TorchJD's ``MoDoWeighting`` and ``SDMGradWeighting``, which take
such a matrix as given (``tools/record_torchjd_modo_sdmgrad.py`` records TorchJD's weights)."""

from __future__ import annotations

from typing import Any

import torch

STEPS = 6

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (method, options as mtlopt names them); the TorchJD names are mapped in torchjd_weighting
    "modo": ("modo", {"gamma": 0.1, "rho": 0.1}),
    "modo-no-rho": ("modo", {"gamma": 0.05, "rho": 0.0}),
    "sdmgrad": ("sdmgrad", {"lambda_": 0.3, "n_iter": 20, "lr": 10.0, "momentum": 0.5}),
    "sdmgrad-small-lr": ("sdmgrad", {"lambda_": 0.6, "n_iter": 7, "lr": 0.5, "momentum": 0.0}),
}


def matrices(K: int = 3, P: int = 7, seed: int = 0) -> list[torch.Tensor]:
    """STEPS cross-Gramians of drifting random Jacobians (float64), one conflicting pair of tasks."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(K, P, generator=g, dtype=torch.float64)
    base[1] = -0.7 * base[0] + 0.3 * base[1]
    out = []
    for _ in range(STEPS):
        J1 = base + 0.3 * torch.randn(K, P, generator=g, dtype=torch.float64)
        J2 = base + 0.3 * torch.randn(K, P, generator=g, dtype=torch.float64)
        out.append(J1 @ J2.T)
        base = base + 0.1 * torch.randn(K, P, generator=g, dtype=torch.float64)
    return out


def mtlopt_weights(case: str) -> list[list[float]]:
    import mtlopt

    method, options = CASES[case]
    weighting = mtlopt.MoDo(**options) if method == "modo" else mtlopt.SDMGrad(**options)
    losses = torch.ones(3, dtype=torch.float64)
    return [weighting.compute(A, losses).weights.tolist() for A in matrices()]


def torchjd_weights(case: str) -> list[list[float]]:
    from torchjd.aggregation import MoDoWeighting, SDMGradWeighting

    method, o = CASES[case]
    if method == "modo":
        weighting: Any = MoDoWeighting(gamma=o["gamma"], rho=o["rho"])
    else:
        weighting = SDMGradWeighting(
            lr=o["lr"], momentum=o["momentum"], n_iter=o["n_iter"], lambda_=o["lambda_"]
        )
    return [weighting(A).tolist() for A in matrices()]
