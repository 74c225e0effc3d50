"""Structured random Jacobians for the property tests of the Gramian solvers (CAGrad, UPGrad, DualProj):
K from 2 to 64, rank-deficient, duplicated and zero rows, row scales from 1e-8 to 1e8."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


@st.composite
def jacobians(draw: st.DrawFn, max_tasks: int = 64) -> np.ndarray:
    K = draw(st.integers(2, max_tasks))
    P = draw(st.integers(1, 48))
    kind = draw(st.sampled_from(["plain", "rank", "duplicate", "zero", "conflict"]))
    low = draw(st.integers(-8, 8))
    high = draw(st.integers(low, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    J = rng.standard_normal((K, P))
    if kind == "rank":
        r = int(rng.integers(1, min(K, P) + 1))
        J = rng.standard_normal((K, r)) @ rng.standard_normal((r, P))
    elif kind == "duplicate":
        J[K // 2 :] = J[: K - K // 2]
    elif kind == "zero":
        J[rng.random(K) < 0.3] = 0.0
    elif kind == "conflict":
        J[1::2] = -0.8 * J[::2][: K // 2] + 0.2 * J[1::2]
    return J * (10.0 ** rng.uniform(low, high, (K, 1)))
