"""PCGrad: the Gramian form against the vector algorithm, non-conflict, scale invariance, golden values, state."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from cases import per_task_gradients
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlopt
from models import make_problem
from mtlopt.weighting.pcgrad import PCGrad

F64 = torch.float64


def pcgrad_reference(J: np.ndarray, orders) -> np.ndarray:
    """Algorithm 1 of Yu et al. (2020) on the gradient vectors themselves: Σ_i g_i^PC."""
    projected = J.astype(np.float64).copy()
    for i in range(len(J)):
        for j in orders[i]:
            norm_sq = float(J[j] @ J[j])
            dot = float(projected[i] @ J[j])
            if dot < 0 and norm_sq > 0:
                projected[i] = projected[i] - dot / norm_sq * J[j]
    return projected.sum(axis=0)


def reference_orders(K, seed=0, order="shuffled", include_self=False, steps=1):
    """The documented draw: per step, for each i, torch.randperm over the candidates in index order."""
    generator = torch.Generator().manual_seed(seed)
    result = []
    for _ in range(steps):
        result = []
        for i in range(K):
            candidates = [j for j in range(K) if include_self or j != i]
            if order == "shuffled":
                candidates = [
                    candidates[p] for p in torch.randperm(len(candidates), generator=generator).tolist()
                ]
            result.append(candidates)
    return result


@st.composite
def jacobians(draw, min_tasks=2, max_tasks=6):
    """K gradients with shared and opposed components, zero and duplicated rows, scales 1e-6..1e6."""
    K = draw(st.integers(min_tasks, max_tasks))
    n = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    common = rng.standard_normal(n) * rng.uniform(-2.0, 2.0)
    J = (common + rng.standard_normal((K, n))) * 10.0 ** rng.uniform(-1.5, 1.5, size=(K, 1))
    for _ in range(draw(st.integers(0, 2))):
        J[rng.integers(K)] = 0.0
    for _ in range(draw(st.integers(0, 2))):
        J[rng.integers(K)] = J[rng.integers(K)] * rng.choice([-1.0, 1.0, 2.0])
    return J * 10.0 ** draw(st.floats(-6.0, 6.0))


COORDINATE = st.one_of(st.just(0.0), st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3))


def pcgrad_weights(G, **options):
    G = torch.as_tensor(G, dtype=F64)
    return PCGrad(**options)(G, torch.zeros(G.shape[0]))


@settings(max_examples=300)
@given(
    jacobians(),
    st.integers(0, 1000),
    st.sampled_from(["shuffled", "fixed"]),
    st.booleans(),
    st.sampled_from(["sum", "mean"]),
)
def test_pcgrad_weights_reproduce_the_vector_algorithm(J, seed, order, include_self, reduction):
    K = J.shape[0]
    w = pcgrad_weights(J @ J.T, seed=seed, order=order, include_self=include_self, reduction=reduction)
    expected = pcgrad_reference(J, reference_orders(K, seed, order, include_self))
    if reduction == "mean":
        expected = expected / K
    assert w.dtype == F64 and torch.isfinite(w).all()
    scale = float(np.linalg.norm(J, axis=1).max())
    np.testing.assert_allclose(w.numpy() @ J, expected, rtol=0, atol=1e-10 * scale)


@settings(max_examples=300)
@given(
    st.lists(COORDINATE, min_size=1, max_size=5).flatmap(
        lambda a: st.tuples(st.just(a), st.lists(COORDINATE, min_size=len(a), max_size=len(a)))
    ),
    st.floats(-6.0, 6.0),
)
def test_pcgrad_two_tasks_never_conflict_with_either_task(pair, exponent):
    J = np.array(pair, dtype=np.float64) * 10.0**exponent
    G = J @ J.T
    w = pcgrad_weights(G).numpy()
    d = w @ J
    norms_sq = np.diag(G)
    tol = 1e-12 * norms_sq.max()
    assert np.all(J @ d >= -tol)
    if G[0, 1] >= 0:  # no conflict: the plain sum
        assert w.tolist() == [1.0, 1.0]
    elif norms_sq.min() > 0:  # conflict: d·g_i = ‖g_i‖² − (g_1·g_2)²/‖g_j‖²
        expected = norms_sq - G[0, 1] ** 2 / norms_sq[::-1]
        np.testing.assert_allclose(J @ d, expected, rtol=0, atol=1e-9 * norms_sq.max())


@settings(max_examples=200)
@given(jacobians(), st.integers(-20, 20), st.integers(0, 2**32 - 1))
def test_pcgrad_scale_invariance_and_relabeling(J, power, perm_seed):
    K = J.shape[0]
    G = torch.from_numpy(J @ J.T)
    base = pcgrad_weights(G, order="fixed")
    # A common scale 2^power on the gradients (exact in floating point) does not change the weights.
    assert torch.equal(pcgrad_weights(G * 4.0**power, order="fixed"), base)
    # Relabeling the tasks, with each task's visiting order relabeled too, permutes the coefficients.
    perm = np.random.default_rng(perm_seed).permutation(K)
    orders = reference_orders(K, seed=perm_seed % 1000)
    inverse = np.argsort(perm)  # new label of old task k is inverse[k]
    relabeled_orders = [[int(inverse[j]) for j in orders[perm[i]]] for i in range(K)]
    pc = PCGrad()
    C = pc.coefficients(G, orders)
    C_perm = pc.coefficients(G[perm][:, perm], relabeled_orders)
    # (equal up to the summation order of the inner products)
    torch.testing.assert_close(C_perm, C[perm][:, perm], rtol=1e-9, atol=1e-9 * float(C.abs().max()))
    if K == 2:  # one other task: the order is irrelevant, swapping the tasks swaps the weights
        swapped = pcgrad_weights(G[[1, 0]][:, [1, 0]])
        assert swapped.tolist() == base.flip(0).tolist()


def test_pcgrad_zero_gradients_give_finite_weights():
    J = np.array([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.0]])
    for order in ("shuffled", "fixed"):
        w = pcgrad_weights(J @ J.T, order=order)
        assert torch.isfinite(w).all()
        assert w[0].item() == 1.0  # nothing projects on a zero gradient, and it projects on nothing
        np.testing.assert_allclose(w.numpy() @ J, pcgrad_reference(J, reference_orders(3, order=order)))
    assert pcgrad_weights(np.zeros((3, 3))).tolist() == [1.0, 1.0, 1.0]


def test_pcgrad_golden_values():
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]], dtype=F64)
    G = J @ J.T
    # By hand, index order: g1' = g1 + ½g2 + ½g3, g2' = g1 + g2 + g3, g3' = ½g2 + g3 (5 projections).
    result = PCGrad(order="fixed").compute(G, torch.zeros(3))
    assert result.weights.tolist() == [2.0, 2.0, 2.5]
    assert result.diagnostics["projections"] == 5
    assert PCGrad(order="fixed", reduction="mean")(G, torch.zeros(3)).tolist() == pytest.approx(
        [2 / 3, 2 / 3, 5 / 6]
    )
    assert PCGrad(seed=0)(G, torch.zeros(3)).tolist() == [2.5, 2.0, 2.5]
    J2 = torch.tensor([[3.0, 1.0, -2.0], [-1.0, 2.0, 1.0], [0.5, -3.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64)
    assert reference_orders(4, seed=7) == [[1, 2, 3], [2, 0, 3], [1, 3, 0], [2, 0, 1]]
    w = PCGrad(seed=7)(J2 @ J2.T, torch.zeros(4))
    expected = pcgrad_reference(J2.numpy(), reference_orders(4, seed=7))
    np.testing.assert_allclose(w.numpy() @ J2.numpy(), expected, rtol=0, atol=1e-14)
    assert w.tolist() == pytest.approx(GOLDEN_SEED_7, rel=1e-14)


# Exact rational arithmetic on the orders of seed 7 ([1, 2, 3], [2, 0, 3], [1, 3, 0], [2, 0, 1]).
GOLDEN_SEED_7 = [4121 / 2296, 29 / 12, 94 / 41, 1.0]


def test_pcgrad_state_dict_and_reset_reproduce_the_orders():
    rng = np.random.default_rng(0)
    J = rng.standard_normal((6, 4))
    G = torch.from_numpy(J @ J.T)
    losses = torch.zeros(6)
    a = PCGrad(seed=3)
    first = a(G, losses)
    a(G, losses)
    state = a.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    third = a(G, losses)
    b = PCGrad(seed=99)
    b.load_state_dict(torch.load(buffer))
    assert torch.equal(b(G, losses), third)
    assert not torch.equal(state["generator"], PCGrad(seed=3).generator.get_state())  # two draws later
    a.reset()
    assert torch.equal(a(G, losses), first)
    assert PCGrad(seed=0).orders(6) != PCGrad(seed=1).orders(6)
    assert PCGrad(order="fixed").orders(3) == [[1, 2], [0, 2], [0, 1]]
    with pytest.raises(ValueError, match="generator"):
        a.load_state_dict({})


@pytest.mark.parametrize("head_weighting", ["unweighted", "weighted"])
def test_pcgrad_through_backward_writes_the_projected_sum(head_weighting):
    model, x, y = make_problem(num_tasks=4, seed=1)
    z = model.encoder(x)
    losses = model.losses(z, y)
    shared = list(model.encoder.parameters())
    J = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in per_task_gradients(losses, shared)])
    heads = [
        per_task_gradients([losses[t]], list(head.parameters()))[0] for t, head in enumerate(model.heads)
    ]
    expected = pcgrad_reference(J.numpy(), reference_orders(4, seed=5))

    result = mtlopt.backward(
        losses, PCGrad(seed=5, head_weighting=head_weighting), shared_params=model.encoder
    )

    assert result.diagnostics["projections"] > 0  # the tasks do conflict here
    d = torch.cat([p.grad.reshape(-1) for p in shared])
    np.testing.assert_allclose(d.numpy(), expected, rtol=0, atol=1e-12 * float(J.norm(dim=1).max()))
    for t, head in enumerate(model.heads):
        c = 1.0 if head_weighting == "unweighted" else result.weights[t].item()
        for p, e in zip(head.parameters(), heads[t]):
            torch.testing.assert_close(p.grad, c * e, rtol=1e-12, atol=1e-15)


def test_pcgrad_on_every_parameter_is_the_full_vector_algorithm():
    model, x, y = make_problem(num_tasks=3, seed=2)
    losses = model.losses(model.encoder(x), y)
    params = [p for p in model.parameters() if p.requires_grad]
    J = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in per_task_gradients(losses, params)])
    expected = pcgrad_reference(J.numpy(), reference_orders(3, seed=0))
    mtlopt.backward(losses, PCGrad(), shared_params=model)
    d = torch.cat([p.grad.reshape(-1) for p in params])
    np.testing.assert_allclose(d.numpy(), expected, rtol=0, atol=1e-12 * float(J.norm(dim=1).max()))
