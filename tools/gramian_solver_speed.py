"""Time of CAGrad, UPGrad and DualProj from a given Gramian, beside the peers, on one CPU thread.

Prints two tables (markdown):

1. K = 40: the weighting's time from the K×K Gramian (median of interleaved repetitions: every round
   times each solver once, in turn, so that a busy machine slows them alike) and the optimality each
   reaches on the exact problem: CAGrad's objective f(w*) relative to the lowest one found, and its
   duality gap; UPGrad's and DualProj's objective Σ_i v_iᵀGv_i over their QPs (on the exact G)
   relative to the lowest, and the worst cosine min_t g_tᵀd/(‖g_t‖‖d‖) (≥ 0: no conflict). Peers: TorchJD (``CAGradWeighting`` with cvxpy +
   Clarabel; ``UPGradWeighting``/``DualProjWeighting`` with quadprog, on G/tr(G) + 1e-4·I); the
   official/LibMTL CAGrad solve is written for 3 tasks, so its algorithm (scipy SLSQP from 1/K) runs as
   mtlopt's ``solver="slsqp"``.
2. K = 2: each method's weighting time against exact MGDA's (``MGDA()``, the closed form), as a ratio.

Run in the peers' environment for the TorchJD rows (they are left out where it does not import):

    OMP_NUM_THREADS=1 PYTHONPATH=src /tmp/peers-venv/bin/python tools/gramian_solver_speed.py
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
import torch

import mtlopt
from mtlopt.weighting._dual_cone import project_dual_cone
from mtlopt.weighting.cagrad import solve_cagrad


def jacobian(K: int, P: int, seed: int) -> np.ndarray:
    """Gradients with a common component and conflicts (many pairs, and ḡ with a few tasks), norms
    spread ×10."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(P)
    J = 0.1 * common + rng.standard_normal((K, P))
    J[: K // 10] *= -3.0  # a tenth of the tasks against the rest: ḡ conflicts with some of them
    return J * np.exp(rng.uniform(-1.15, 1.15, (K, 1)))


def median_times(solvers: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    for solve in solvers.values():  # warm-up (imports, caches)
        solve()
    times: dict[str, list[float]] = {name: [] for name in solvers}
    for _ in range(rounds):
        for name, solve in solvers.items():
            start = time.perf_counter()
            solve()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def cagrad_objective(G: np.ndarray, c: float, w_eff: np.ndarray) -> float:
    K = G.shape[0]
    extra = w_eff - 1.0 / K
    w = extra / extra.sum()
    b = G.sum(axis=1) / K
    return float(w @ b) + c * math.sqrt(max(float(b.sum()) / K, 0.0)) * math.sqrt(max(float(w @ G @ w), 0.0))


def worst_cosine(G: np.ndarray, w: np.ndarray) -> float:
    Gw = G @ w
    return float((Gw / (np.sqrt(np.diag(G)) * math.sqrt(float(w @ Gw)))).min())


def qp_objective(G: np.ndarray, V: np.ndarray) -> float:
    """Σ_i v_iᵀ G v_i over the QPs (one for DualProj, K for UPGrad) on the exact G."""
    return float(np.einsum("bi,ij,bj->", V, G, V))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        from torchjd.aggregation import CAGradWeighting, DualProjWeighting, UPGradWeighting
    except ImportError:
        CAGradWeighting = DualProjWeighting = UPGradWeighting = None  # type: ignore[assignment, misc]
    print(f"torch threads: {torch.get_num_threads()}; {args.rounds} interleaved rounds, medians\n")

    K = 40
    J = jacobian(K, 500, args.seed)
    G64 = J @ J.T
    G = torch.from_numpy(G64)
    L = torch.ones(K, dtype=torch.float64)
    c = 0.4
    rows: list[tuple[str, str, Callable[[], object], Callable[[], tuple[float, float]]]] = []

    def ours(method: mtlopt.GramianWeighting) -> Callable[[], object]:
        return lambda: method.compute(G, L)

    cagrad, cagrad_slsqp = mtlopt.CAGrad(c), mtlopt.CAGrad(c, solver="slsqp")
    rows.append(
        (
            "CAGrad",
            "mtlopt (exact)",
            ours(cagrad),
            lambda: (cagrad_objective(G64, c, cagrad(G, L).numpy()), solve_cagrad(G64, c).gap),
        )
    )
    rows.append(
        (
            "CAGrad",
            "SLSQP (official/LibMTL solve)",
            ours(cagrad_slsqp),
            lambda: (cagrad_objective(G64, c, cagrad_slsqp(G, L).numpy()), math.nan),
        )
    )
    if CAGradWeighting is not None:
        peer = CAGradWeighting(c)
        rows.append(
            (
                "CAGrad",
                "TorchJD (cvxpy+Clarabel)",
                lambda: peer(G),
                lambda: (cagrad_objective(G64, c, peer(G).numpy()), math.nan),
            )
        )
    u = np.full(K, 1.0 / K)
    for name, cls, peer_cls in (
        ("UPGrad", mtlopt.UPGrad, UPGradWeighting),
        ("DualProj", mtlopt.DualProj, DualProjWeighting),
    ):
        method = cls()
        U = np.diag(u) if name == "UPGrad" else u[None, :]

        def mine(m: mtlopt.GramianWeighting = method, U: np.ndarray = U) -> tuple[float, float]:
            V = project_dual_cone(G64, U).weights  # the projections whose sum (UPGrad) is w
            return qp_objective(G64, V), worst_cosine(G64, m(G, L).numpy())

        rows.append((name, "mtlopt (exact)", ours(method), mine))
        if peer_cls is not None:
            p = peer_cls()

            def theirs(p: object = p, U: np.ndarray = U) -> tuple[float, float]:
                V = p.projector(torch.from_numpy(U), G).numpy()  # type: ignore[attr-defined]
                return qp_objective(G64, V), worst_cosine(G64, p(G).numpy())  # type: ignore[operator]

            rows.append((name, "TorchJD (quadprog, G/tr+1e-4 I)", lambda p=p: p(G), theirs))
    times = median_times({f"{m}|{s}": f for m, s, f, _ in rows}, args.rounds)
    quality = {f"{m}|{s}": q() for m, s, _, q in rows}
    print(f"## K = {K} (P = {J.shape[1]}), Gramian given\n")
    print(
        "| method | solver | median time (ms) | objective rel. to lowest | gap / worst cosine | speed-up of mtlopt |"
    )
    print("|---|---|---|---|---|---|")
    for m, s, _, _ in rows:
        key = f"{m}|{s}"
        lowest = min(v[0] for k, v in quality.items() if k.startswith(m + "|"))
        objective, second = quality[key]
        rel = (objective - lowest) / abs(lowest) if lowest else objective
        speedup = times[key] / times[f"{m}|mtlopt (exact)"]
        print(f"| {m} | {s} | {times[key] * 1e3:.3f} | {rel:.2e} | {second:.2e} | {speedup:.1f}× |")

    K = 2
    J2 = jacobian(K, 50, args.seed + 1)
    J2[1] = -0.5 * J2[0] + 0.5 * J2[1]  # a conflict, so that every closed form does work
    G2 = torch.from_numpy(J2 @ J2.T)
    L2 = torch.ones(K, dtype=torch.float64)
    methods = {
        "MGDA": mtlopt.MGDA(),
        "CAGrad": mtlopt.CAGrad(),
        "UPGrad": mtlopt.UPGrad(),
        "DualProj": mtlopt.DualProj(),
    }
    times2 = median_times({n: (lambda m=m: m.compute(G2, L2)) for n, m in methods.items()}, args.rounds * 20)
    print("\n## K = 2: weighting time (compute from the Gramian) against exact MGDA's\n")
    print("| method | median time (µs) | ratio to MGDA |")
    print("|---|---|---|")
    for name, t in times2.items():
        print(f"| {name} | {t * 1e6:.1f} | {t / times2['MGDA']:.3f} |")


if __name__ == "__main__":
    main()
