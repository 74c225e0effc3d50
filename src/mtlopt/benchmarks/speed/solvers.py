"""The min-norm solver table: mtlopt's solver and the peers' on Gramians of real per-task gradients."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

import mtlopt

from ..models import SenerLeNet, cross_entropy_losses
from . import peers as _peers
from .results import SolverRow
from .timing import StepTimeout, time_limit


def real_gramians(tasks: int, count: int, seed: int = 0, batch: int = 64) -> tuple[list[np.ndarray], str]:
    """Gramians of real per-task gradients and where they come from.

    A LeNet with K heads on scikit-learn's 8×8 digits (upsampled to 28×28); task t is the digit shifted
    by t (mod 10): related, conflicting labelings of the same images. One Gramian per step of a short EW
    training run. Without scikit-learn, random images stand in (said in the returned source).
    """
    torch.manual_seed(seed)
    try:
        from sklearn.datasets import load_digits

        data = load_digits()
        images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
        images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
        digits = torch.tensor(data.target)
        source = "scikit-learn digits"
    except ImportError:
        generator = torch.Generator().manual_seed(seed)
        images = torch.rand(1797, 1, 28, 28, generator=generator)
        digits = torch.randint(0, 10, (1797,), generator=generator)
        source = "random images (scikit-learn not installed)"
    labels = torch.stack([(digits + t) % 10 for t in range(tasks)], dim=1)
    model = SenerLeNet(tasks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        index = torch.randint(0, len(images), (batch,), generator=generator)
        z = model.encoder(images[index])
        losses = cross_entropy_losses([head(z) for head in model.heads], labels[index])
        J = mtlopt.jacobian(losses, list(model.encoder.parameters()))
        out.append(mtlopt.gramian(J).double().numpy())
        optimizer.zero_grad()
        mtlopt.backward(losses, mtlopt.EW())
        optimizer.step()
    return out, source


def _time_once(fn: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    value = fn()
    return time.perf_counter() - began, value


def _objective(G: np.ndarray, weights: Any) -> float:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    w = w / w.sum()
    return float(w @ G @ w)


def solver_table(
    tasks: Sequence[int], count: int, peers: Sequence[str], repeat: int = 5, limit: float | None = 30.0
) -> tuple[list[SolverRow], str]:
    """Time and accuracy of the min-norm solvers, Gramian given (float64 for mtlopt; the peers get
    float32, the dtype their training step hands them)."""
    rows = []
    source = ""
    torchjd = "torchjd" in peers and _peers.import_peer("torchjd") is not None
    libmtl = "libmtl" in peers and _peers.import_peer("libmtl") is not None
    for K in tasks:
        gramians, source = real_gramians(K, count)
        results = [mtlopt.min_norm(G) for G in gramians]
        optimum = [r.objective for r in results]
        times: list[float] = []
        for G in gramians:
            for _ in range(repeat):
                times.append(_time_once(functools.partial(mtlopt.min_norm, G))[0])
        rows.append(
            SolverRow(
                K,
                "mtlopt (default: closed form at K = 2, active set above)",
                times,
                [(r.objective - f) / f if f > 0 else 0.0 for r, f in zip(results, optimum)],
                [2 * max(r.gap, 0.0) / r.objective if r.objective > 0 else 0.0 for r in results],
            )
        )
        if torchjd:
            from torchjd.aggregation import MGDAWeighting

            weighting = MGDAWeighting()
            times, excess = [], []
            for G, f in zip(gramians, optimum):
                G32 = torch.from_numpy(G).float()
                for _ in range(repeat):
                    seconds, weights = _time_once(functools.partial(weighting, G32))
                    times.append(seconds)
                excess.append((_objective(G, weights.numpy()) - f) / f if f > 0 else 0.0)
            rows.append(
                SolverRow(
                    K, "TorchJD MGDAWeighting (Frank–Wolfe, ε = 0.001, ≤ 100 iterations)", times, excess
                )
            )
        if libmtl:
            from LibMTL.weighting import MGDA as LibMTLMGDA

            times, excess, note = [], [], ""
            for G, f in zip(gramians, optimum):
                # LibMTL's solver takes the K×P gradients and forms G itself: hand it a K×K factor.
                values, vectors = np.linalg.eigh(G)
                factor = torch.from_numpy(vectors * np.sqrt(np.clip(values, 0.0, None))).float()
                try:
                    with time_limit(limit, "LibMTL's min-norm solver"):
                        seconds, weights = _time_once(
                            functools.partial(LibMTLMGDA._find_min_norm_element, None, factor)
                        )
                except StepTimeout as error:
                    note = str(error)
                    continue
                times.append(seconds)
                excess.append((_objective(G, weights.numpy()) - f) / f if f > 0 else 0.0)
            rows.append(
                SolverRow(
                    K, "LibMTL MGDA._find_min_norm_element (projected gradient)", times, excess, note=note
                )
            )
    return rows, source
