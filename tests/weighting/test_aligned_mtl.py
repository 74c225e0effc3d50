"""Aligned-MTL and Aligned-MTL-UB: agreement with the peers, the alignment property, degenerate inputs.

Peers (``peer_golden_aligned.json``, from ``tools/record_aligned_peers.py``; live when installed):
TorchJD 0.18.0 ``AlignedMTL(pref_vector=ones)``, LibMTL HEAD ``Aligned_MTL`` (``rep_grad`` False,
and True for the UB variant with ``feature_batch="sum"``), the official SamsungLabs/MTL
``ProcrustesSolver`` as its ``amtl``/``amtlub`` balancers use it. Convention difference tested apart:
TorchJD 0.18.0 cuts the spectrum at float64's epsilon on a float64 Gramian, the official code (and
mtlopt's default) at float32's.
"""

from __future__ import annotations

import importlib.util

import aligned_scenario as sc
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlopt
from mtlopt.weighting.aligned_mtl import balance_transformation

F64 = torch.float64
GOLDEN = sc.golden()
NAMES = ["aligned-mtl", "aligned-mtl-median", "aligned-mtl-rmse", "aligned-mtl-ub", "aligned-mtl-ub-sum"]
CASES = [(name, peer) for name in NAMES for peer in sc.PEERS[name]]
_RUNS: dict[str, dict] = {}


def ours(name: str) -> dict:
    if name not in _RUNS:
        _RUNS[name] = sc.run_mtlopt(name)
    return _RUNS[name]


@pytest.mark.parametrize(("name", "peer"), CASES)
def test_weights_and_grads_agree_with_the_recorded_peer(name, peer):
    sc.assert_agrees(ours(name), GOLDEN[name][peer])


@pytest.mark.parametrize(("name", "peer"), CASES)
def test_weights_and_grads_agree_with_the_live_peer(name, peer):
    sc.assert_agrees(ours(name), sc.live_peer(name, peer))


def test_a_moved_weight_fails_the_comparison():
    moved = {"weights": [list(w) for w in GOLDEN["aligned-mtl"]["official"]["weights"]]}
    moved["grads"] = GOLDEN["aligned-mtl"]["official"]["grads"]
    moved["weights"][3][2] *= 1 + 1e-7
    with pytest.raises(AssertionError):
        sc.assert_agrees(ours("aligned-mtl"), moved)


def test_the_scenario_has_conflicts_and_distinguishes_the_scale_modes():
    G = torch.tensor(GOLDEN["aligned-mtl"]["official"]["weights"], dtype=F64)
    assert not torch.allclose(G, torch.tensor(GOLDEN["aligned-mtl-rmse"]["official"]["weights"], dtype=F64))
    assert not torch.allclose(G, torch.tensor(GOLDEN["aligned-mtl-median"]["official"]["weights"], dtype=F64))
    x, y = sc.batch(0)
    net = sc.Model()
    losses = net.task_losses(net.features(x), y)
    result = mtlopt.backward(losses, mtlopt.AlignedMTL(), shared_params=net.encoder)
    assert float(result.gramian[0, 3]) < 0 and result.diagnostics["rank"] == sc.K


def cutoff_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    J = torch.tensor(GOLDEN["cutoff-gramian"]["jacobian"], dtype=F64)
    return J @ J.T, torch.ones(3, dtype=F64)


def test_the_default_cutoff_is_the_official_float32_one_and_eps64_is_torchjd_0_18():
    G, L = cutoff_inputs()
    default = mtlopt.AlignedMTL().compute(G, L)
    assert default.diagnostics["rank"] == 2  # 1e-9 < 1 · 3 · 1.19e-7
    torch.testing.assert_close(
        default.weights, torch.tensor(GOLDEN["cutoff-gramian"]["official"], dtype=F64), rtol=1e-9, atol=1e-12
    )
    tjd = mtlopt.AlignedMTL(eps=float(torch.finfo(F64).eps)).compute(G, L)
    assert tjd.diagnostics["rank"] == 3
    torch.testing.assert_close(
        tjd.weights, torch.tensor(GOLDEN["cutoff-gramian"]["torchjd"], dtype=F64), rtol=1e-7, atol=1e-12
    )


def test_the_cutoff_difference_with_live_torchjd():
    if importlib.util.find_spec("torchjd") is None:
        pytest.skip("torchjd is not installed here")
    from torchjd.aggregation import AlignedMTLWeighting

    G, L = cutoff_inputs()
    theirs = AlignedMTLWeighting(pref_vector=torch.ones(3, dtype=F64))(G)
    mine = mtlopt.AlignedMTL(eps=float(torch.finfo(F64).eps))(G, L)
    torch.testing.assert_close(mine, theirs, rtol=1e-7, atol=1e-12)
    # TorchJD's default preference is 1/K: a factor K on the same direction
    torch.testing.assert_close(mtlopt.AlignedMTL("mean", eps=2.220446049250313e-16)(G, L), theirs / 3)


# --- properties ---------------------------------------------------------------------------------------

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


def reference_weights(G: np.ndarray, mode: str, eps: float) -> np.ndarray:
    """numpy's eigh, the rule of the docstring, written out again."""
    lam, V = np.linalg.eigh(G)
    keep = lam > lam.max() * len(G) * eps
    if not keep.any() or lam.max() <= 0:
        return np.ones(len(G))
    lam_r, V_r = lam[keep], V[:, keep]
    s = {"min": lam_r.min(), "rmse": lam_r.mean(), "median": np.sort(lam_r)[(len(lam_r) - 1) // 2]}[mode]
    return np.sqrt(s) * (V_r / np.sqrt(lam_r)) @ V_r.T @ np.ones(len(G))


@settings(max_examples=25, deadline=None)
@given(J=jacobians, mode=st.sampled_from(["min", "median", "rmse"]))
def test_aligned_gradients_are_orthogonal_with_equal_norms_on_the_kept_subspace(J, mode):
    G = J @ J.T
    K = G.shape[0]
    method = mtlopt.AlignedMTL(scale_mode=mode)
    out = method.compute(G, torch.ones(K, dtype=F64))
    w = out.weights
    assert torch.isfinite(w).all()
    B, info = balance_transformation(G, mode)
    s = info["scale"]
    lam, V = torch.linalg.eigh(G)
    V_r = V[:, lam > info["cutoff"]]
    # B G B = s · V_r V_rᵀ: the aligned gradients B J are orthogonal, each of norm √s, in the kept span
    torch.testing.assert_close(B @ G @ B, s * V_r @ V_r.T, rtol=0, atol=1e-8 * s * K)
    torch.testing.assert_close(w, B @ torch.ones(K, dtype=F64))
    assert out.diagnostics["alignment_residual"] < 1e-8 * K
    expected = torch.from_numpy(reference_weights(G.numpy(), mode, float(torch.finfo(torch.float32).eps)))
    torch.testing.assert_close(w, expected, rtol=1e-7, atol=1e-7 * float(expected.abs().max()))
    zero = (J == 0).all(dim=1)
    assert float(w[zero].abs().sum()) <= 1e-9 * float(w.abs().max())  # zero gradients: weight 0


@settings(max_examples=15, deadline=None)
@given(J=jacobians, exponent=st.sampled_from([-8, -3, 3, 8]), seed=st.integers(0, 100))
def test_weights_are_scale_invariant_and_permutation_equivariant(J, exponent, seed):
    G = J @ J.T
    K = G.shape[0]
    L = torch.ones(K, dtype=F64)
    w = mtlopt.AlignedMTL()(G, L)
    torch.testing.assert_close(
        mtlopt.AlignedMTL()(G * 10.0**exponent, L), w, rtol=1e-7, atol=1e-7 * float(w.abs().max())
    )
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(
        mtlopt.AlignedMTL()(G[perm][:, perm], L), w[perm], rtol=1e-7, atol=1e-7 * float(w.abs().max())
    )


def test_degenerate_gramians_follow_the_stated_rules():
    L = torch.ones(4, dtype=F64)
    out = mtlopt.AlignedMTL().compute(torch.zeros(4, 4, dtype=F64), L)
    assert torch.equal(out.weights, torch.ones(4, dtype=F64)) and out.diagnostics["rank"] == 0  # B = I
    assert torch.equal(
        mtlopt.AlignedMTL("mean")(torch.zeros(4, 4, dtype=F64), L), torch.full((4,), 0.25, dtype=F64)
    )
    g = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    same = torch.stack([g] * 4)
    torch.testing.assert_close(mtlopt.AlignedMTL()(same @ same.T, L), torch.ones(4, dtype=F64))  # W = K
    tiny = torch.eye(4, dtype=F64) * 1e-300
    assert torch.isfinite(mtlopt.AlignedMTL()(tiny, L)).all()
    orthogonal = torch.diag(torch.tensor([4.0, 1.0, 9.0, 2.0], dtype=F64))
    # B = diag(√(λ_min/λ_t)): each gradient is shrunk to the smallest norm
    torch.testing.assert_close(mtlopt.AlignedMTL()(orthogonal, L), (1.0 / orthogonal.diagonal()).sqrt())


def test_median_is_torch_median_the_lower_middle_value():
    G = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=F64))
    out = mtlopt.AlignedMTL(scale_mode="median").compute(G, torch.ones(4, dtype=F64))
    assert out.diagnostics["scale"] == 2.0
    assert out.diagnostics["condition"] == 4.0


def test_ub_is_the_weighting_of_the_representation_gramian_then_one_encoder_pass():
    x, y = sc.batch(1)
    net = sc.Model()
    z = net.features(x)
    losses = net.task_losses(z, y)
    Jz = torch.stack([torch.autograd.grad(l, z, retain_graph=True)[0].reshape(-1) for l in losses])
    w = mtlopt.AlignedMTL()(Jz @ Jz.T, torch.ones(sc.K, dtype=F64))
    (expected,) = torch.autograd.grad(z, net.encoder.weight, (w @ Jz).view_as(z), retain_graph=True)
    result = mtlopt.backward(losses, mtlopt.AlignedMTL(), features=z)
    torch.testing.assert_close(result.weights, w, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(net.encoder.weight.grad, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale_mode": "max"}, "scale_mode must be one of 'min', 'median', 'rmse'; got 'max'"),
        ({"pref": "sum"}, "pref must be one of 'ones', 'mean'; got 'sum'"),
        ({"pref": [1.0, float("nan")]}, "pref must be 'ones', 'mean' or K finite numbers"),
        ({"eps": 0.0}, "eps must be a number in \\(0, 1\\); got 0.0"),
        ({"head_weighting": "both"}, "head_weighting must be one of"),
        ({"feature_batch": "mean"}, "feature_batch must be one of"),
    ],
)
def test_bad_options_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        mtlopt.AlignedMTL(**kwargs)
    assert "\n" not in str(info.value) and "AlignedMTL" in str(info.value)


def test_a_preference_fixes_the_number_of_tasks():
    method = mtlopt.AlignedMTL([1.0, 2.0, 3.0])
    G = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=F64))
    torch.testing.assert_close(method(G, torch.ones(3, dtype=F64)), torch.tensor([1.0, 1.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="preference of 3 entries"):
        method(torch.eye(2, dtype=F64), torch.ones(2, dtype=F64))


@pytest.mark.parametrize(
    "module",
    [
        "weighting/aligned_mtl.py",
        "weighting/config.py",
        "weighting/gradvac.py",
        "benchmarks/methods/gradients.py",
    ],
)
def test_no_measured_numbers_in_the_docstrings(module):
    from test_docstring_numbers import MEASURED, SRC, docstrings

    found = [m.group(0) for _, doc in docstrings(SRC / module) for m in MEASURED.finditer(doc)]
    assert not found, (module, found)
