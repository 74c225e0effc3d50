"""ConFIG: the Gramian formula equals the J-based one (TorchJD's pinv, the official lstsq), equal cosines,
lengths, degenerate inputs.

Peers (``peer_golden_aligned.json`` from ``tools/record_aligned_peers.py``; live when installed):
TorchJD 0.18.0 ``ConFIG()`` on J and the official tum-pbs/ConFIG ``ConFIG_update`` (weights recovered
from their direction by least squares on J).
"""

from __future__ import annotations

import aligned_scenario as sc
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlopt

F64 = torch.float64
GOLDEN = sc.golden()
CASES = [("config", peer) for peer in sc.PEERS["config"]]


def reference_direction(
    J: torch.Tensor, pref: torch.Tensor | None = None, length: str = "projection"
) -> torch.Tensor:
    """ConFIG on J itself, as TorchJD's ``ConFIG`` computes it (pinv of the unit rows), in float64."""
    pref = torch.ones(J.shape[0], dtype=F64) if pref is None else pref
    norms = J.norm(dim=1)
    units = torch.nan_to_num(J / norms[:, None], 0.0)
    x = torch.linalg.pinv(units) @ pref
    if float(x.norm()) < 1e-10 * float(pref.norm()):  # p out of reach of the unit gradients: d = 0
        return torch.zeros(J.shape[1], dtype=F64)
    u = torch.nn.functional.normalize(x, dim=0)
    if length == "projection":
        return (J @ u).sum() * u
    stat = {"track-minimum": norms.min(), "track-maximum": norms.max(), "track-arithmetic": norms.mean()}[
        length
    ]
    return stat * (units @ u).sum() * u


def test_weights_and_grads_agree_with_the_recorded_peers():
    ours = sc.run_mtlopt("config")
    for _, peer in CASES:
        sc.assert_agrees(ours, GOLDEN["config"][peer])


@pytest.mark.parametrize(("name", "peer"), CASES)
def test_weights_and_grads_agree_with_the_live_peer(name, peer):
    sc.assert_agrees(sc.run_mtlopt(name), sc.live_peer(name, peer))


jacobians = st.builds(
    lambda seed, K, rank, dup, zero, exponent: sc.structured_jacobian(
        seed, K, rank, dup, zero, 10.0**exponent
    ),
    seed=st.integers(0, 10_000),
    K=st.integers(2, 64),
    rank=st.integers(1, 64),
    dup=st.integers(0, 3),
    zero=st.integers(0, 3),
    exponent=st.sampled_from([-8, -4, 0, 4, 8]),
)


@settings(max_examples=25, deadline=None)
@given(J=jacobians)
def test_the_gramian_formula_equals_config_on_the_jacobian(J):
    """d = Jᵀw from G alone equals pinv(Û)-based ConFIG on J, for full-rank, rank-deficient, duplicated
    and zero rows at every scale."""
    G = J @ J.T
    K = G.shape[0]
    out = mtlopt.ConFIG().compute(G, torch.ones(K, dtype=F64))
    assert torch.isfinite(out.weights).all()
    d = J.T @ out.weights
    expected = reference_direction(J)
    scale = float(expected.norm()) + float(J.norm(dim=1).max())
    torch.testing.assert_close(d, expected, rtol=0, atol=1e-7 * scale)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    K=st.integers(2, 40),
    exponent=st.sampled_from([-8, 0, 8]),
    zero=st.integers(0, 2),
)
def test_full_row_rank_gives_equal_cosines_with_every_nonzero_gradient(seed, K, exponent, zero):
    J = sc.structured_jacobian(seed, K, K, 0, zero, 10.0**exponent)
    G = J @ J.T
    out = mtlopt.ConFIG().compute(G, torch.ones(K, dtype=F64))
    d = J.T @ out.weights
    nonzero = J.norm(dim=1) > 0
    cosines = (J[nonzero] @ d) / (J[nonzero].norm(dim=1) * d.norm())
    assert float(cosines.min()) > 0  # no conflict with any task
    torch.testing.assert_close(cosines, torch.full_like(cosines, float(cosines.mean())), rtol=1e-8, atol=0)
    assert out.diagnostics["cosine_spread"] < 1e-8
    assert float(out.weights[~nonzero].abs().sum()) == 0.0  # a zero gradient gets weight 0
    # scale: the weights are invariant (d scales with J)
    torch.testing.assert_close(
        mtlopt.ConFIG()(G * 1e6, torch.ones(K, dtype=F64)), out.weights, rtol=1e-8, atol=0
    )


@pytest.mark.parametrize("length", ["track-minimum", "track-maximum", "track-arithmetic"])
def test_tracked_lengths_follow_the_official_length_models(length):
    J = sc.structured_jacobian(5, 6, 6, 0, 0) * torch.tensor([1.0, 2, 3, 4, 5, 6], dtype=F64)[:, None]
    w = mtlopt.ConFIG(length=length)(J @ J.T, torch.ones(6, dtype=F64))
    torch.testing.assert_close(J.T @ w, reference_direction(J, length=length), rtol=1e-9, atol=1e-12)


def test_a_preference_is_the_right_hand_side():
    J = sc.structured_jacobian(2, 3, 3)
    pref = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    w = mtlopt.ConFIG(pref)(J @ J.T, torch.ones(3, dtype=F64))
    torch.testing.assert_close(J.T @ w, reference_direction(J, pref), rtol=1e-9, atol=1e-12)
    d = J.T @ w
    ratios = (J @ d) / (J.norm(dim=1) * d.norm()) / pref  # cos(g_t, d) ∝ p_t
    torch.testing.assert_close(ratios, ratios[:1].expand(3), rtol=1e-9, atol=0)


def test_degenerate_gramians_follow_the_stated_rules():
    L = torch.ones(4, dtype=F64)
    out = mtlopt.ConFIG().compute(torch.zeros(4, 4, dtype=F64), L)
    assert torch.equal(out.weights, torch.zeros(4, dtype=F64))
    g = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    same = torch.stack([g] * 4)
    torch.testing.assert_close(mtlopt.ConFIG()(same @ same.T, L), torch.ones(4, dtype=F64))  # W = K
    orthogonal = torch.eye(4, dtype=F64) * 9.0
    torch.testing.assert_close(mtlopt.ConFIG()(orthogonal, L), torch.ones(4, dtype=F64))
    opposite = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=F64)  # g and -g: no common descent
    assert torch.equal(mtlopt.ConFIG()(opposite, torch.ones(2, dtype=F64)), torch.zeros(2, dtype=F64))
    assert torch.isfinite(mtlopt.ConFIG()(torch.eye(4, dtype=F64) * 1e-300, L)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"length": "min"}, "length must be one of 'projection', 'track-minimum'"),
        ({"pref": [1.0, -1.0]}, "pref must be 'ones' or K positive numbers"),
        ({"pref": "mean"}, "pref must be one of 'ones'; got 'mean'"),
        ({"eps": 1.0}, "eps must be a number in \\(0, 1\\); got 1.0"),
        ({"head_weighting": "x"}, "head_weighting must be one of"),
    ],
)
def test_bad_options_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        mtlopt.ConFIG(**kwargs)
    assert "\n" not in str(info.value) and "ConFIG" in str(info.value)


def test_two_tasks_equal_the_official_inverse_free_update(tmp_path, monkeypatch):
    """The official ``ConFIG_update_double`` (K = 2, no inverse) and ``ConFIG_update`` give our d."""
    import sys
    import warnings

    rec = sc.recorder()
    if not rec.CONFIG_REPO.exists():
        pytest.skip(f"no git copy of tum-pbs/ConFIG at {rec.CONFIG_REPO}")
    package = tmp_path / "conflictfree"
    package.mkdir()
    for file in ("utils", "weight_model", "length_model", "grad_operator"):
        (package / f"{file}.py").write_text(rec.git_source(rec.CONFIG_REPO, f"conflictfree/{file}.py"))
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "conflictfree", raising=False)
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # its EqualWeight allocates in the default dtype
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from conflictfree.grad_operator import ConFIG_update, ConFIG_update_double
        for seed in range(3):
            J = sc.structured_jacobian(seed, 2, 2) * torch.tensor([[1.0], [3.0]], dtype=F64)
            d = J.T @ mtlopt.ConFIG()(J @ J.T, torch.ones(2, dtype=F64))
            torch.testing.assert_close(ConFIG_update_double(J[0], J[1]), d, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(ConFIG_update(J), d, rtol=1e-12, atol=1e-14)
    finally:
        torch.set_default_dtype(old)
        for name in [m for m in sys.modules if m == "conflictfree" or m.startswith("conflictfree.")]:
            del sys.modules[name]
