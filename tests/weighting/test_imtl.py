"""IMTL-G and the IMTL hybrid: the equal-projection condition, the degenerate rule, the hybrid's loss
transform through every path of mtlopt.backward, and agreement with TorchJD and LibMTL.

Peers (``imtl_scenario.py``, recorded by ``tools/record_imtl_peers.py`` into ``peer_golden_imtl.json``,
and live when they import here): TorchJD 0.18.0 ``IMTLGWeighting`` on fixed Gramians and
``mtl_backward`` + ``jac_to_grad(IMTLG())`` on a model; LibMTL 1.1.5 ``IMTL.backward`` (``class M(HPS,
IMTL)``, rep_grad off and on) for IMTL-G (scales held at 0) and for the hybrid over STEPS SGD steps with
the scales trained. Everything runs in float64 (LibMTL's float32 gradient buffers through the default
dtype), so the tolerance is far below the 1e-6 asked.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import imtl_scenario as sc
import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mtlopt
from mtlopt.weighting.imtl_g import imtl_g_weights

F64 = torch.float64
GOLDEN = json.loads(Path(__file__).with_name("peer_golden_imtl.json").read_text())
RTOL, ATOL = 1e-9, 1e-12


def close(ours, theirs, rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(
        torch.tensor(ours, dtype=F64), torch.tensor(theirs, dtype=F64), rtol=rtol, atol=atol
    )


def paper_closed_form(J: np.ndarray) -> np.ndarray:
    """The paper's α (LibMTL's code, in numpy float64): α_{2:K} = g_1ᵀUᵀ(DUᵀ)⁻¹, α_1 = 1 − Σα_{2:K}."""
    U_ = J / np.linalg.norm(J, axis=1, keepdims=True)
    D = J[:1] - J[1:]
    U = U_[:1] - U_[1:]
    rest = J[0] @ U.T @ np.linalg.inv(D @ U.T)
    return np.concatenate([[1 - rest.sum()], rest])


# --- IMTL-G on the Gramian -------------------------------------------------------------------


def test_weights_equal_the_papers_closed_form_and_give_equal_projections():
    rng = np.random.default_rng(0)
    for K in (2, 3, 6):
        J = rng.standard_normal((K, 9)) * rng.uniform(0.1, 10, (K, 1))
        out = mtlopt.IMTLG().compute(torch.from_numpy(J @ J.T), torch.ones(K, dtype=F64))
        np.testing.assert_allclose(out.weights.numpy(), paper_closed_form(J), rtol=1e-9, atol=1e-12)
        d = out.weights.numpy() @ J
        projections = J @ d / np.linalg.norm(J, axis=1)
        np.testing.assert_allclose(projections, projections[0], rtol=1e-9)
        assert out.weights.sum().item() == pytest.approx(1.0, rel=1e-12)
        assert out.diagnostics["residual"] < 1e-10 and not out.diagnostics["degenerate"]
        assert out.diagnostics["projection"] == pytest.approx(projections[0], rel=1e-9)


def test_weights_can_be_negative():
    J = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 0.3]], dtype=F64)  # g_2 between two others
    w = mtlopt.IMTLG()(J @ J.T, torch.ones(3, dtype=F64))
    assert w[1] < -0.5 and float(w.sum()) == pytest.approx(1.0)
    projections = J @ (w @ J) / J.norm(dim=1)
    torch.testing.assert_close(projections, projections[:1].expand(3))


@pytest.mark.parametrize("name", sorted(sc.gramians()))
def test_weights_agree_with_the_recorded_torchjd_weights(name):
    G = sc.gramians()[name]
    theirs = GOLDEN["torchjd_gramians"][name]
    close(imtl_g_weights(G, "gramian")[0].tolist(), theirs)  # TorchJD's G⁺n: every case
    ours = imtl_g_weights(G, "cosine")[0]
    if name not in sc.CONVENTION_DIFFERS:
        close(ours.tolist(), theirs)
    else:  # a documented difference: the minimum-norm least squares of Cβ = 1, α ∝ N⁻¹β (scipy's)
        assert not torch.allclose(ours, torch.tensor(theirs, dtype=F64), atol=1e-6)
        n = G.diagonal().sqrt().numpy()
        beta = scipy.linalg.lstsq(G.numpy() / np.outer(n, n), np.ones(len(n)))[0]
        close(ours.tolist(), (beta / n / (beta / n).sum()).tolist(), rtol=1e-8, atol=1e-10)
        assert float(ours.sum()) == pytest.approx(1.0) == pytest.approx(sum(theirs))


def test_the_scaled_duplicate_case_still_has_equal_projections_under_both_conventions():
    G = sc.gramians()["scaled-duplicate"]
    for solve in ("cosine", "gramian"):
        _, diagnostics = imtl_g_weights(G, solve)  # type: ignore[arg-type]
        assert diagnostics["residual"] < 1e-9 and diagnostics["rank"] == 2


def test_degenerate_rule_zero_rows_duplicates_opposites_and_zero():
    grams = sc.gramians()
    w, d = imtl_g_weights(grams["zero-row"])
    assert w[1] == 0 and d["zero_gradient_tasks"] == [1] and float(w.sum()) == pytest.approx(1.0)
    assert d["residual"] < 1e-10
    w, d = imtl_g_weights(grams["duplicated"])  # tasks 0 and 3 identical: they share equally
    assert float(w[0]) == pytest.approx(float(w[3]), rel=1e-9) and d["rank"] == 3
    for name in ("opposite", "zero"):
        w, d = imtl_g_weights(grams[name])
        assert torch.equal(w, torch.zeros_like(w)) and d["degenerate"]
    theta = nn.Parameter(torch.tensor([1.0, -2.0], dtype=F64))  # opposite tasks: the update is 0
    result = mtlopt.backward([theta.sum(), -theta.sum()], mtlopt.IMTLG(), shared_params=[theta])
    assert torch.equal(theta.grad, torch.zeros(2, dtype=F64)) and result.diagnostics["weight_sum"] == 0


@st.composite
def jacobians(draw):
    K = draw(st.integers(2, 64))
    P = draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((K, P)) * 10.0 ** rng.uniform(-8, 8, (K, 1))
    kind = draw(st.sampled_from(["plain", "duplicated", "zero", "dependent"]))
    if kind == "duplicated":
        J[1] = J[0]
    elif kind == "zero":
        J[draw(st.integers(0, K - 1))] = 0
    elif kind == "dependent":
        J[-1] = J[0] - 0.5 * J[1]
    return J


@settings(max_examples=40, deadline=None)
@given(jacobians(), st.sampled_from(["cosine", "gramian"]))
def test_any_gramian_gives_finite_weights_summing_to_one_or_zero(J, solve):
    G = torch.from_numpy(J @ J.T)
    out = mtlopt.IMTLG(solve=solve).compute(G, torch.ones(len(J), dtype=F64))
    w = out.weights
    assert torch.isfinite(w).all()
    assert float(w.sum()) == pytest.approx(1.0, rel=1e-9) or (out.diagnostics["degenerate"] and not w.any())
    zero = np.linalg.norm(J, axis=1) == 0
    if solve == "cosine":
        assert (w[torch.from_numpy(zero)] == 0).all()
        # full row rank among the nonzero gradients: the condition is met, whatever the scales
        nonzero = J[~zero]
        unit = nonzero / np.linalg.norm(nonzero, axis=1, keepdims=True)
        if np.linalg.matrix_rank(unit, tol=1e-6) == len(unit) and np.linalg.cond(unit @ unit.T) < 1e6:
            assert out.diagnostics["residual"] < 1e-6


@settings(max_examples=15, deadline=None)
@given(jacobians(), st.floats(1e-6, 1e6))
def test_weights_are_invariant_to_the_scale_of_g_and_equivariant_under_permutations(J, c):
    G = torch.from_numpy(J @ J.T)
    w = imtl_g_weights(G)[0]
    torch.testing.assert_close(imtl_g_weights(G * c**2)[0], w, rtol=1e-6, atol=1e-9)
    perm = torch.randperm(len(J), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(imtl_g_weights(G[perm][:, perm])[0], w[perm], rtol=1e-6, atol=1e-9)


def test_options_are_checked_with_named_errors():
    with pytest.raises(ValueError, match="IMTLG solve must be one of 'cosine', 'gramian'; got 'inv'"):
        mtlopt.IMTLG(solve="inv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="IMTLG head_weighting"):
        mtlopt.IMTLG(head_weighting="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="IMTL feature_batch"):
        mtlopt.IMTL(2, feature_batch="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="IMTL num_tasks"):
        mtlopt.IMTL(0)


# --- both paths, the hybrid's mechanism ----------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.encoder = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(7, 1) for _ in range(3))
        self.double()

    def losses(self, z, y):
        return [((h(z).squeeze(1) - y[:, t]) ** 2).mean() + 0.2 for t, h in enumerate(self.heads)]


def data():
    g = torch.Generator().manual_seed(4)
    return torch.randn(10, 5, generator=g, dtype=F64), torch.randn(10, 3, generator=g, dtype=F64)


def test_imtl_g_on_features_uses_the_representation_gramian():
    net, (x, y) = Net(), data()
    z = net.encoder(x)
    losses = net.losses(z, y)
    rows = [torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses]
    G = torch.stack(rows) @ torch.stack(rows).T
    result = mtlopt.backward(losses, mtlopt.IMTLG(), features=z)
    torch.testing.assert_close(result.gramian, G)
    torch.testing.assert_close(result.weights, imtl_g_weights(G)[0])
    assert result.diagnostics["weight_sum"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "where", ["shared", "shared-heads-given", "features", "features-loop", "features-weighted-total"]
)
def test_the_hybrid_is_imtl_g_on_the_scaled_losses_and_trains_the_scales(where):
    """Against a hand-written reference: IMTL-G of the scaled losses' gradients, heads ∇L'_t, and
    s.grad = e^s L − 1."""
    net, (x, y) = Net(), data()
    imtl = mtlopt.IMTL(3).double()
    with torch.no_grad():
        imtl.scales.copy_(torch.tensor([0.3, -0.5, 0.1], dtype=F64))
    z = net.encoder(x)
    losses = net.losses(z, y)
    s = imtl.scales.detach()
    scaled = [s[t].exp() * loss - s[t] for t, loss in enumerate(losses)]
    on = z if where.startswith("features") else list(net.encoder.parameters())
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(L, on, retain_graph=True)]) for L in scaled]
    G = torch.stack(rows) @ torch.stack(rows).T
    alpha = imtl_g_weights(G)[0]
    head_ref = torch.autograd.grad(sum(scaled), list(net.heads.parameters()), retain_graph=True)
    ref = torch.autograd.grad(
        sum(a * L for a, L in zip(alpha, scaled)), list(net.encoder.parameters()), retain_graph=True
    )
    kwargs: dict = {}
    if where == "shared":
        kwargs = {"shared_params": net.encoder}
    elif where == "shared-heads-given":
        kwargs = {"shared_params": net.encoder, "head_params": list(net.heads.parameters())}
    elif where == "features":
        kwargs = {"features": z}
    elif where == "features-loop":
        kwargs = {"features": z, "method": "loop"}
    else:
        kwargs = {"features": z, "weight_total": 2.0}
    result = mtlopt.backward(losses, imtl, **kwargs)
    factor = 2.0 if where.endswith("total") else 1.0
    torch.testing.assert_close(result.weights, alpha * factor, rtol=1e-10, atol=1e-12)
    for p, r in zip(net.encoder.parameters(), ref):
        torch.testing.assert_close(p.grad, r * factor, rtol=1e-10, atol=1e-12)
    for p, r in zip(net.heads.parameters(), head_ref):
        torch.testing.assert_close(p.grad, r, rtol=1e-10, atol=1e-12)
    expected = s.exp() * torch.stack([loss.detach() for loss in losses]) - 1
    torch.testing.assert_close(imtl.scales.grad, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.losses, torch.stack([loss.detach() for loss in losses]))
    assert result.diagnostics["loss_scales"] == pytest.approx(s.exp().tolist())


def test_the_hybrid_at_zero_scales_is_imtl_g():
    net, (x, y) = Net(), data()
    z = net.encoder(x)
    a = mtlopt.backward(net.losses(z, y), mtlopt.IMTL(3).double(), shared_params=net.encoder)
    grads = [p.grad.clone() for p in net.encoder.parameters()]
    net.zero_grad()
    z = net.encoder(x)
    b = mtlopt.backward(net.losses(z, y), mtlopt.IMTLG(), shared_params=net.encoder)
    torch.testing.assert_close(a.weights, b.weights)
    for g, p in zip(grads, net.encoder.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_the_hybrid_state_is_its_scales_and_resumes_exactly():
    imtl = mtlopt.IMTL(3)
    with torch.no_grad():
        imtl.scales.copy_(torch.tensor([0.1, 0.2, 0.3]))
    other = mtlopt.IMTL(3)
    other.load_state_dict(imtl.state_dict())
    assert torch.equal(other.scales, imtl.scales)
    imtl.reset()
    assert torch.equal(imtl.scales, torch.zeros(3))
    with pytest.raises(ValueError, match="IMTL was set up for 3 tasks but got 2 losses"):
        imtl.transform_losses([torch.ones(()), torch.ones(())])


# --- agreement with the peers --------------------------------------------------------------------

_RUNS: dict[str, dict] = {}


def ours(case: str) -> dict:
    if case not in _RUNS:
        _RUNS[case] = (
            sc.run_mtlopt(*sc.LIBMTL_CASES[case]) if case in sc.LIBMTL_CASES else sc.run_mtlopt(False, False)
        )
    return _RUNS[case]


def assert_run_agrees(mine: dict, theirs: dict) -> None:
    assert len(theirs["weights"]) == sc.STEPS >= 5
    assert set(mine) == set(theirs)
    for key in mine:  # weights, every parameter's .grad, and the scales' .grad for the hybrid
        close(mine[key], theirs[key])


@pytest.mark.parametrize("case", sorted(sc.LIBMTL_CASES))
def test_weights_and_grads_agree_with_the_recorded_libmtl_run(case):
    assert_run_agrees(ours(case), GOLDEN["libmtl"][case])


def test_weights_and_grads_agree_with_the_recorded_torchjd_run():
    assert_run_agrees(ours("torchjd"), GOLDEN["torchjd_model"])


def test_the_hybrid_scenario_trains_the_scales_and_moves_the_weights():
    run = ours("imtl-shared")
    scale_grads = torch.tensor(run["scale_grads"], dtype=F64)
    assert (scale_grads[1:] - scale_grads[:-1]).abs().max() > 1e-2
    # the hybrid's weights differ from IMTL-G's after the scales moved
    plain = torch.tensor(ours("imtl-g-shared")["weights"], dtype=F64)
    assert (torch.tensor(run["weights"], dtype=F64)[1:] - plain[1:]).abs().max() > 1e-4


def test_a_moved_scale_gradient_fails_the_comparison():
    moved = json.loads(json.dumps(GOLDEN["libmtl"]["imtl-features-sum"]))
    moved["scale_grads"][4][1] *= 1 + 1e-6
    with pytest.raises(AssertionError):
        assert_run_agrees(ours("imtl-features-sum"), moved)


def _recorder():
    path = Path(__file__).parents[2] / "tools" / "record_imtl_peers.py"
    spec = importlib.util.spec_from_file_location("record_imtl_peers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("record_imtl_peers", module)
    spec.loader.exec_module(module)
    return module


def _peer(name: str):
    from mtlopt.benchmarks.speed import import_peer

    if import_peer(name) is None:
        pytest.skip(f"{name} is not installed here (tools/record_imtl_peers.py runs it elsewhere)")


def test_weights_agree_with_live_torchjd():
    _peer("torchjd")
    recorder = _recorder()
    for name, weights in recorder.torchjd_gramians().items():
        close(imtl_g_weights(sc.gramians()[name], "gramian")[0].tolist(), weights)
    assert_run_agrees(ours("torchjd"), sc.run_torchjd_model())


@pytest.mark.parametrize("case", sorted(sc.LIBMTL_CASES))
def test_weights_and_grads_agree_with_live_libmtl(case):
    _peer("libmtl")
    assert_run_agrees(ours(case), _recorder().libmtl(case))


@pytest.mark.parametrize("on", ["shared", "features"])
def test_the_hybrid_under_a_grad_scaler_takes_the_unscaled_weights_and_scaled_grads(on):
    runs = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        net, (x, y) = Net(), data()
        imtl = mtlopt.IMTL(3).double()
        with torch.no_grad():
            imtl.scales.copy_(torch.tensor([0.2, -0.1, 0.4], dtype=F64))
        z = net.encoder(x)
        where = {"features": z} if on == "features" else {"shared_params": net.encoder}
        result = mtlopt.backward(net.losses(z, y), imtl, scaler=scaler, **where)
        runs.append((result.weights, [p.grad.clone() for p in [*net.parameters(), imtl.scales]]))
    (w0, g0), (w1, g1) = runs
    torch.testing.assert_close(w1, w0, rtol=1e-10, atol=1e-12)
    for scaled, plain in zip(g1, g0, strict=True):
        torch.testing.assert_close(scaled, plain * 2.0**10, rtol=1e-10, atol=1e-12)


def test_the_scales_change_the_length_of_the_shared_update_not_its_direction():
    rng = np.random.default_rng(5)
    J = torch.from_numpy(rng.standard_normal((4, 9)))
    s = torch.tensor([0.5, -1.0, 0.2, 1.5], dtype=F64)
    scaled = s.exp()[:, None] * J
    alpha = mtlopt.IMTL(4).double().compute(scaled @ scaled.T, torch.ones(4, dtype=F64)).weights
    raw = imtl_g_weights(J @ J.T)[0]
    on_raw = alpha * s.exp()
    torch.testing.assert_close(on_raw / on_raw.sum(), raw, rtol=1e-10, atol=1e-12)
    assert float(on_raw.sum()) != pytest.approx(1.0, abs=1e-3)
