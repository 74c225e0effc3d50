"""Weighting time of Nash-MTL and FairGrad from a given Gramian, against the peers' solvers, one thread.

    OMP_NUM_THREADS=1 PYTHONPATH=src /tmp/peers-venv/bin/python tools/nash_fairgrad_speed.py

Rows: mtlopt ``NashMTL`` / ``FairGrad`` ``.compute(G, losses)``; TorchJD 0.18.0's ``NashMTL`` weighting
(cvxpy/ECOS CCP, the official code's and LibMTL's solver; it takes J, here the Cholesky factor of G, so
that J Jᵀ = G) and ``FairGradWeighting`` (scipy ``least_squares``, the official code's and LibMTL's
solver), at K = 40; at K = 2, exact MGDA's ``.compute`` for scale. The Gramians cycle through a few random ones
(the CCP warm-starts from the last α, as in training). Timings are interleaved (one call of each
method per round) and summarized by their medians; the residual column is the median of
max_t |w_t^{1/a}(Gw)_t − 1| each method reaches (Nash-MTL: on the unclipped weights).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

import mtlopt

torch.set_num_threads(1)
warnings.filterwarnings("ignore")  # cvxpy's "not DPP" warning on every call


def gramians(K: int, count: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        J = rng.standard_normal((K, 3 * K)) * np.geomspace(0.3, 3.0, K)[:, None]
        J[-1] = -0.5 * J[0] + J[-1]
        out.append(J @ J.T)
    return out


def residual(G: np.ndarray, w: np.ndarray, a: float) -> float:
    if a == 1.0:  # unclip: αᵀGα = K at the solution
        w = w * math.sqrt(len(G) / float(w @ G @ w))
    return float(np.max(np.abs(w ** (1 / a) * (G @ w) - 1)))


Runner = Callable[[np.ndarray], np.ndarray]


def candidates(K: int, with_mgda: bool, with_peers: bool) -> dict[str, tuple[float, Runner]]:
    L = torch.ones(K, dtype=torch.float64)
    nash = mtlopt.NashMTL()
    fair = mtlopt.FairGrad(2.0)
    rows: dict[str, tuple[float, Runner]] = {
        "mtlopt nash-mtl": (1.0, lambda G: nash.compute(torch.from_numpy(G), L).weights.numpy()),
        "mtlopt fairgrad": (2.0, lambda G: fair.compute(torch.from_numpy(G), L).weights.numpy()),
    }
    if with_mgda:
        mgda = mtlopt.MGDA()
        rows["mtlopt mgda (exact)"] = (
            math.nan,
            lambda G: mgda.compute(torch.from_numpy(G), L).weights.numpy(),
        )
    if not with_peers:
        return rows
    try:
        from torchjd.aggregation import NashMTL
        from torchjd.aggregation._fairgrad import FairGradWeighting
    except ImportError:
        return rows
    tj_nash = NashMTL(n_tasks=K, max_norm=1.0, update_weights_every=1, optim_niter=20)
    tj_fair = FairGradWeighting(2.0)

    def torchjd_nash(G: np.ndarray) -> np.ndarray:
        J = torch.linalg.cholesky(torch.from_numpy(G) + 1e-12 * torch.eye(K, dtype=torch.float64))
        return tj_nash.weighting(J).numpy()

    rows["torchjd nash-mtl (cvxpy CCP)"] = (1.0, torchjd_nash)
    rows["torchjd fairgrad (least_squares)"] = (2.0, lambda G: tj_fair(torch.from_numpy(G)).numpy())
    return rows


def measure(
    K: int, rounds: int, with_mgda: bool, with_peers: bool, select: str = ""
) -> dict[str, tuple[float, float]]:
    Gs = gramians(K)
    rows = {name: row for name, row in candidates(K, with_mgda, with_peers).items() if select in name}
    times: dict[str, list[float]] = {name: [] for name in rows}
    residuals: dict[str, list[float]] = {name: [] for name in rows}
    for _, run in rows.values():  # warm-up (TorchJD builds its cvxpy problem on the first call)
        run(Gs[-1])
    for r in range(rounds):
        G = Gs[r % len(Gs)]
        order = list(rows) if r % 2 == 0 else list(rows)[::-1]
        for name in order:
            a, run = rows[name]
            start = time.perf_counter()
            w = run(G)
            times[name].append(time.perf_counter() - start)
            if not math.isnan(a):
                residuals[name].append(residual(G, w, a))
    return {
        name: (
            statistics.median(times[name]),
            statistics.median(residuals[name]) if residuals[name] else math.nan,
        )
        for name in rows
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds-40", type=int, default=5, help="rounds of the Nash-MTL group at K = 40")
    parser.add_argument("--rounds-fairgrad-40", type=int, default=100)
    parser.add_argument("--rounds-2", type=int, default=2000)
    args = parser.parse_args()
    # Each group interleaved on its own: TorchJD's cvxpy CCP takes seconds per call at K = 40.
    runs = [
        (40, args.rounds_40, "nash-mtl"),
        (40, args.rounds_fairgrad_40, "fairgrad"),
        (2, args.rounds_2, ""),
    ]
    results = {}
    for K, rounds, select in runs:
        result = measure(K, rounds, with_mgda=K == 2, with_peers=K == 40, select=select)
        results[(K, select)] = result
        print(f"\nK = {K} ({rounds} interleaved rounds, one thread, Gramian given)")
        print(f"| {'method':34s} | {'median time':>12s} | {'median residual':>15s} |")
        print(f"|{'-' * 36}|{'-' * 14}|{'-' * 17}|")
        for name, (t, res) in result.items():
            print(f"| {name:34s} | {t * 1e6:9.1f} µs | {res:15.2e} |")
        peers = [name for name in result if name.startswith("torchjd")]
        for theirs in peers:
            ours = "mtlopt " + select
            print(f"{theirs} / {ours}: {result[theirs][0] / result[ours][0]:.1f}x")
        if K == 2:
            base = result["mtlopt mgda (exact)"][0]
            for ours in ("mtlopt nash-mtl", "mtlopt fairgrad"):
                print(f"{ours} / mgda: {result[ours][0] / base:.3f}")


if __name__ == "__main__":
    main()
