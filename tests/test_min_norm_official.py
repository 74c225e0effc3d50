"""``solver="pgd"`` against the official MGDA solver, step for step (issue 16, item 8).

The oracle is ``reference.official_pgd_reference``, a transcription of
``MinNormSolver.find_min_norm_element`` (github isl-org/MultiObjectiveOptimization,
``multi_task/min_norm_solvers.py``) written with the official loops and constants. Golden values of the
transcription on fixed inputs are committed here, so that the oracle itself cannot drift; mtlopt with
the official end-of-segment weights ``clip=(0.001, 0.999)`` must reproduce them to rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlopt import min_norm
from mtlopt.min_norm import _best_pair
from reference import official_pgd_reference, random_jacobian

OFFICIAL_CLIP = (0.001, 0.999)


def fixed_gramians() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2018)
    J10 = np.eye(10, 30) + 0.3 * rng.standard_normal((10, 30))
    J8 = np.random.default_rng(16).normal(size=(8, 4)) + 1.0
    # Two-task cases: interior optimum, and an optimum at either end (clipped to 0.999 / 0.001).
    interior = np.array([[1.0, 0.0], [0.5, 1.0]])
    a_end = np.array([[1.0, 0.0], [3.0, 0.0]])
    b_end = np.array([[1.0, 1.0], [0.2, 0.1]])
    # The best pair's optimum is an end of its segment: (0, 1) (g0 is on the segment towards g1) costs
    # ‖g0‖² = 1 in the official ranking, while its clipped point 0.999 g0 + 0.001 g1 costs 1.002; pair
    # (0, 2) also costs 1 (later in order), and pair (1, 2) has an interior optimum of cost 1.001.
    clipped_pair = np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 0.5777]])
    return {
        "two tasks, interior": interior @ interior.T,
        "two tasks, optimum at a": a_end @ a_end.T,
        "two tasks, optimum at b": b_end @ b_end.T,
        "best pair clipped": clipped_pair @ clipped_pair.T,
        "4 tasks": np.array(
            [
                [4.0, 1.0, -1.0, 0.5],
                [1.0, 3.0, 0.5, 1.0],
                [-1.0, 0.5, 2.0, 0.25],
                [0.5, 1.0, 0.25, 5.0],
            ]
        ),
        "8 tasks, sparse optimum": J8 @ J8.T,
        "10 tasks, dense optimum": J10 @ J10.T,
    }


# Weights and iteration counts of the official algorithm (the transcription), committed.
OFFICIAL_GOLDEN: dict[str, tuple[list[float], int]] = {
    "two tasks, interior": ([0.6, 0.4], 0),
    "two tasks, optimum at a": ([0.999, 0.0010000000000000009], 0),
    "two tasks, optimum at b": ([0.001, 0.999], 0),
    "best pair clipped": ([0.9994994999999999, 1.0000000000369715e-06, 0.0004995000000000371], 2),
    "4 tasks": ([0.3169806596970917, 0.0438973725760015, 0.5435771588656906, 0.09554480886121626], 13),
    "8 tasks, sparse optimum": ([0.0, 0.0, 0.7549991189769372, 0.0, 0.24500088102306283, 0.0, 0.0, 0.0], 1),
    "10 tasks, dense optimum": (
        [
            0.06919300713593526,
            0.20582409321890643,
            0.10444866313585988,
            0.13670159366566603,
            0.0,
            0.10564375969049612,
            0.05999912598795272,
            0.1704353329743133,
            0.08976436025870155,
            0.057990063932168615,
        ],
        29,
    ),
}


@pytest.mark.parametrize("name", list(OFFICIAL_GOLDEN))
def test_the_transcription_reproduces_the_committed_official_values(name: str) -> None:
    weights, iterations = official_pgd_reference(fixed_gramians()[name])
    expected, expected_iterations = OFFICIAL_GOLDEN[name]
    assert weights.tolist() == pytest.approx(expected, abs=1e-15)
    assert iterations == expected_iterations


@pytest.mark.parametrize("name", list(OFFICIAL_GOLDEN))
def test_pgd_with_the_official_clip_reproduces_the_official_weights(name: str) -> None:
    result = min_norm(fixed_gramians()[name], solver="pgd", clip=OFFICIAL_CLIP)
    expected, iterations = OFFICIAL_GOLDEN[name]
    assert result.weights.numpy() == pytest.approx(np.array(expected), abs=1e-9)  # rounding
    assert result.iterations == iterations
    assert result.converged


def test_two_tasks_return_the_clipped_closed_form_at_once() -> None:
    """The official code returns the best pair's weights for K < 3 (no iteration)."""
    J = np.array([[1.0, 0.0], [3.0, 0.0]])  # optimum at a: the official weight is 0.999
    result = min_norm(J @ J.T, solver="pgd", clip=OFFICIAL_CLIP)
    assert result.weights.tolist() == [0.999, pytest.approx(0.001, abs=1e-15)]
    assert result.iterations == 0
    paper = min_norm(J @ J.T, solver="pgd")  # the paper's clip: the exact closed form
    assert paper.weights.tolist() == min_norm(J @ J.T, solver="two-task").weights.tolist()


def test_the_start_is_the_pair_the_official_code_picks_when_its_weight_is_clipped() -> None:
    """Pairs are ranked by the cost of the segment's end, not of the clipped point (first wins ties):
    (0, 1) here, where ranking by the clipped point picks (0, 2)."""
    G = fixed_gramians()["best pair clipped"]
    assert _best_pair(G, OFFICIAL_CLIP).tolist() == [0.999, pytest.approx(0.001, abs=1e-15), 0.0]


def test_the_official_bound_on_the_pair_cost_is_not_kept() -> None:
    """The official pair search starts from dmin = 1e8 and fails when every pair costs more; mtlopt
    has no bound: it is the official algorithm with that bound removed."""
    G = fixed_gramians()["4 tasks"] * 1e9
    with pytest.raises(RuntimeError, match="1e8"):
        official_pgd_reference(G)
    expected, iterations = official_pgd_reference(G, pair_bound=np.inf)
    result = min_norm(G, solver="pgd", clip=OFFICIAL_CLIP)
    assert result.weights.numpy() == pytest.approx(expected, abs=1e-9)
    assert result.iterations == iterations


@st.composite
def small_gramians(draw: st.DrawFn) -> np.ndarray:
    K = draw(st.integers(2, 12))
    n = draw(st.sampled_from([2, K, 3 * K]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    J = random_jacobian(rng, K, n)
    return J @ J.T


@settings(max_examples=100)
@given(small_gramians())
def test_pgd_follows_the_official_algorithm_step_by_step(G: np.ndarray) -> None:
    """Random problems: the same first iterates as the transcription, to rounding, and the same end
    point and iteration count when the official run stops within 300 iterations (longer runs drift
    apart at rounding level and may stop an iteration apart)."""
    for cap in (1, 2, 5, 20):
        expected, _ = official_pgd_reference(G, max_iter=cap, at_cap="return")
        result = min_norm(G, solver="pgd", clip=OFFICIAL_CLIP, max_iter=cap)
        assert result.weights.numpy() == pytest.approx(expected, abs=1e-12), cap
    try:
        expected, iterations = official_pgd_reference(G, max_iter=300)
    except RuntimeError:
        return
    result = min_norm(G, solver="pgd", clip=OFFICIAL_CLIP, max_iter=300)
    assert result.converged and result.iterations == iterations
    assert result.weights.numpy() == pytest.approx(expected, abs=1e-9)
