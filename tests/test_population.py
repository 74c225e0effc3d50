"""Population training with transfer (MTGD), preference vectors, scalarizations and hypervolume."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from mtlopt import EW, FixedWeights, NonFiniteError, ParetoMTL, circle_preferences
from mtlopt.hypervolume import hypervolume, non_dominated
from mtlopt.population import Population, Transfer, transfer_matrix
from mtlopt.preferences import check_preferences, das_dennis, preference_vectors
from mtlopt.scalarization import IdealPoint, linear, tchebycheff


class TwoTaskNet(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 8), nn.ReLU()
        )
        self.heads = nn.ModuleList(nn.Linear(8, 4) for _ in range(2))

    def forward(self, x):
        z = self.encoder(x)
        return [head(z) for head in self.heads]


def two_task_loss(outputs, y):
    return torch.stack([F.cross_entropy(outputs[t], y[:, t]) for t in range(2)])


def batches(steps: int):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 4, (16, 2), generator=g))
        for _ in range(steps)
    ]


def population(vectorize: str, transfer: Transfer | None, optimizer=None, K: int = 4, **kwargs) -> Population:
    models = [TwoTaskNet(seed) for seed in range(K)]
    optimizer = optimizer or functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)
    return Population(
        models, preference_vectors(2, K), optimizer, transfer=transfer, vectorize=vectorize, **kwargs
    )


def members(pop: Population):
    return pop.member_state_dicts()


# --- preferences and scalarizations -------------------------------------------------------------------


def test_preference_vectors():
    two = preference_vectors(2, 5)
    assert two.tolist() == [[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.0, 1.0]]
    lattice = das_dennis(3, 4)
    assert lattice.shape == (15, 3) and torch.allclose(lattice.sum(1), torch.ones(15, dtype=torch.float64))
    assert len({tuple(row.tolist()) for row in lattice}) == 15
    assert torch.equal(preference_vectors(3, 15), lattice)
    with pytest.raises(ValueError, match="not a Das–Dennis lattice size"):
        preference_vectors(3, 11)
    inner = preference_vectors(2, 5, interior=True)
    torch.testing.assert_close(inner[:, 1], torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64))
    inner3 = preference_vectors(3, 15, interior=True)  # H = 4: each vector 1/5 of the way to the centroid
    torch.testing.assert_close(inner3, 0.8 * lattice + 0.2 / 3)
    assert bool((inner3 > 0).all()) and torch.allclose(inner3.sum(1), torch.ones(15, dtype=torch.float64))


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        ([[0.5, 0.5, 0.0]], "have 3 entries, expected 2"),
        ([[1.2, -0.2]], r"vector 0 is \[1.2, -0.2\]: entries must be finite and >= 0"),
        ([[0.5, 0.5], [0.5, 0.6]], "vector 1 .* sums to 1.1"),
    ],
)
def test_bad_preference_vectors_are_named(vectors, message):
    with pytest.raises(ValueError, match=message):
        check_preferences(torch.tensor(vectors), 2)


def test_scalarizations():
    losses = torch.tensor([[1.0, 4.0], [3.0, 2.0]])
    weights = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    assert linear(losses, weights).tolist() == [2.5, 2.25]
    ideal = torch.tensor([0.5, 1.0])
    assert tchebycheff(losses, weights, ideal).tolist() == [1.5, 0.75]
    tracker = IdealPoint(2, margin=0.1)
    tracker.update(losses)
    tracker.update(torch.tensor([[2.0, 0.5]]))
    assert tracker.value.tolist() == pytest.approx([0.9, 0.4])
    tracker.update(torch.tensor([[float("nan"), float("inf")], [0.2, float("-inf")]]))  # skipped, not kept
    assert tracker.value.tolist() == pytest.approx([0.1, 0.4])


def test_a_non_finite_loss_names_the_member_and_task():
    pop = population("never", Transfer(strength=0.2, neighbours=2))
    (x, y), calls = batches(1)[0], []

    def loss_with_nan(outputs, targets):
        losses = two_task_loss(outputs, targets)
        calls.append(None)
        return losses * torch.tensor([1.0, float("nan")]) if len(calls) == 3 else losses  # member 2

    before = members(pop)
    with pytest.raises(
        NonFiniteError,
        match=r"member 2 \(preference \[0.33\d*, 0.66\d*\]\) has a non-finite loss for task 1: nan",
    ):
        pop.step(x, y, loss_with_nan)
    assert all(torch.equal(a[n], b[n]) for a, b in zip(before, members(pop)) for n in a)  # nothing moved
    unchecked = population("never", None, check_finite=False)
    calls.clear()
    unchecked.step(x, y, loss_with_nan)
    assert not torch.isfinite(members(unchecked)[2]["heads.1.weight"]).all()


# --- the transfer matrix ------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.integers(1, 12), st.floats(0.0, 1.0), st.integers(1, 5), st.sampled_from([2, 3]))
def test_transfer_matrix_is_row_stochastic(K, strength, neighbours, objectives):
    prefs = (
        preference_vectors(objectives, K)
        if objectives == 2
        else torch.softmax(torch.randn(K, 3, dtype=torch.float64), 1)
    )
    M = transfer_matrix(prefs, strength, neighbours)
    assert M.shape == (K, K) and bool((M >= 0).all())
    torch.testing.assert_close(M.sum(1), torch.ones(K, dtype=torch.float64))
    assert bool(
        ((M - torch.diag(M.diagonal())) > 0).sum(1).le(neighbours).all()
    )  # only the nearest neighbours
    if strength == 0.0:
        assert torch.equal(M, torch.eye(K, dtype=torch.float64))


def test_transfer_matrix_mixes_with_the_nearest_preferences():
    M = transfer_matrix(preference_vectors(2, 5), 0.2, neighbours=2)
    assert M[0, 1] > 0 and M[0, 2] > 0 and M[0, 3] == 0 and M[0, 4] == 0
    assert M[2, 1] == pytest.approx(M[2, 3]) and M[2, 2] == pytest.approx(0.8)


def test_schedules_decay_to_zero():
    for schedule in ("linear", "cosine"):
        transfer = Transfer(strength=0.4, schedule=schedule)
        assert transfer.strength_at(0, 100) == pytest.approx(0.4)
        assert transfer.strength_at(100, 100) == pytest.approx(0.0, abs=1e-15)
        assert 0.0 < transfer.strength_at(50, 100) < 0.4
    with pytest.raises(ValueError, match="needs total_steps"):
        Transfer(strength=0.4, schedule="linear").strength_at(3, None)


# --- the population ------------------------------------------------------------------------------------


def test_strength_zero_is_k_independent_trainings_bitwise():
    data = batches(6)
    pop = population("never", Transfer(strength=0.0))
    for x, y in data:
        pop.step(x, y, two_task_loss)
    for k, prefs in enumerate(preference_vectors(2, 4)):  # each model alone, its own optimizer
        model = TwoTaskNet(k)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for x, y in data:
            optimizer.zero_grad()
            linear(two_task_loss(model(x), y), prefs.float()).backward()
            optimizer.step()
        for name, value in model.state_dict().items():
            assert torch.equal(pop.member_state_dicts()[k][name], value), name


@pytest.mark.parametrize(
    "transfer",
    [
        None,
        Transfer(strength=0.3, neighbours=2),
        Transfer(strength=0.3, schedule="cosine", parameters="shared"),
    ],
)
def test_vectorized_population_equals_the_loop(transfer):
    data = batches(8)
    shared = (
        (lambda name: name.startswith("encoder.")) if transfer and transfer.parameters == "shared" else None
    )
    pops = [
        population(
            mode,
            transfer,
            optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
            shared=shared,
            total_steps=8,
        )
        for mode in ("always", "never")
    ]
    assert pops[0].vectorized and not pops[1].vectorized
    for x, y in data:
        results = [pop.step(x, y, two_task_loss) for pop in pops]
        torch.testing.assert_close(results[0].losses, results[1].losses, rtol=1e-4, atol=1e-5)
    for a, b in zip(members(pops[0]), members(pops[1])):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    x, _ = data[0]
    for out_a, out_b in zip(pops[0](x), pops[1](x)):
        for a, b in zip(out_a, out_b):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_mgd_form_with_sgd_equals_the_coupled_gradient_form():
    """θ^k ← Σ_j M_kj θ^j − η ∇f_k(θ^k) is θ^k − η[∇f_k(θ^k) + (ρ/η) Σ_j W_kj (θ^k − θ^j)]."""
    lr, strength = 0.05, 0.2
    data = batches(5)
    pop = population(
        "always",
        Transfer(strength=strength, neighbours=2),
        optimizer=functools.partial(torch.optim.SGD, lr=lr),
    )
    models = [TwoTaskNet(seed) for seed in range(4)]
    prefs = preference_vectors(2, 4)
    W = (transfer_matrix(prefs, 1.0, 2)).float()  # ρ = 1 gives W itself
    for x, y in data:
        pop.step(x, y, two_task_loss)
        grads = []
        for model, pref in zip(models, prefs):
            loss = linear(two_task_loss(model(x), y), pref.float())
            grads.append(torch.autograd.grad(loss, list(model.parameters())))
        with torch.no_grad():
            old = [[p.detach().clone() for p in model.parameters()] for model in models]
            for k, model in enumerate(models):
                for i, p in enumerate(model.parameters()):
                    coupling = sum(W[k, j] * (old[k][i] - old[j][i]) for j in range(4))
                    p -= lr * (grads[k][i] + (strength / lr) * coupling)
    for k, model in enumerate(models):
        for name, value in model.state_dict().items():
            torch.testing.assert_close(pop.member_state_dicts()[k][name], value, rtol=1e-5, atol=1e-6)


def test_transfer_of_shared_parameters_leaves_heads_independent():
    data = batches(4)
    shared = lambda name: name.startswith("encoder.")  # noqa: E731
    mixed = population("always", Transfer(strength=0.5, parameters="shared"), shared=shared)
    alone = population("always", None)
    for x, y in data[:1]:
        mixed.step(x, y, two_task_loss)
        alone.step(x, y, two_task_loss)
    for a, b in zip(members(mixed), members(alone)):
        for name in a:
            assert torch.equal(a[name], b[name]) == (not name.startswith("encoder.")), name


def test_transfer_speeds_up_convergence_on_nearby_quadratics():
    """The paper's theorem, checked empirically: K strongly convex quadratics with nearby minimizers,
    each ill-conditioned in a different direction. Gradient descent with a small transfer reaches
    max_k (f_k − f_k*) ≤ 1e-3 in fewer iterations than independent gradient descent."""
    K, dim = 4, 4
    g = torch.Generator().manual_seed(0)
    curvature = torch.full((K, dim), 1.0, dtype=torch.float64)
    for k in range(K):
        curvature[k, k] = 0.01  # member k is slow along axis k only
    minimizers = 1.0 + 0.01 * torch.randn(K, dim, generator=g, dtype=torch.float64)

    class Point(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = nn.Parameter(torch.zeros(dim, dtype=torch.float64))

        def forward(self, _):
            return self.theta

    def objectives(theta, _):  # f_j(θ) for every j: member k's preference e_k picks f_k
        return 0.5 * (curvature * (theta - minimizers) ** 2).sum(1)

    def iterations(transfer):
        pop = Population(
            [Point() for _ in range(K)],
            torch.eye(K, dtype=torch.float64),
            functools.partial(torch.optim.SGD, lr=1.0),
            transfer=transfer,
        )
        for step in range(1, 2000):
            pop.step(None, None, objectives)
            thetas = torch.stack([m["theta"] for m in pop.member_state_dicts()])
            gaps = 0.5 * (curvature * (thetas - minimizers) ** 2).sum(1)
            if float(gaps.max()) <= 1e-3:
                return step
        return 2000

    independent = iterations(None)
    coupled = iterations(Transfer(strength=0.05, neighbours=K - 1))
    assert coupled < 0.5 * independent, (coupled, independent)


def assert_resumes_exactly(first: Population, make_resumed, data, split: int) -> Population:
    """Train ``first`` on ``data``; a population from ``make_resumed()`` loaded with the state after
    ``split`` batches and trained on the rest ends bitwise where ``first`` did. Returns it."""
    for x, y in data[:split]:
        first.step(x, y, two_task_loss)
    saved = copy.deepcopy(first.state_dict())
    for x, y in data[split:]:
        first.step(x, y, two_task_loss)
    resumed = make_resumed()
    resumed.load_state_dict(saved)
    for x, y in data[split:]:
        resumed.step(x, y, two_task_loss)
    for a, b in zip(members(first), members(resumed)):
        assert all(torch.equal(a[n], b[n]) for n in a)
    return resumed


def test_state_dict_resumes_exactly():
    def make():
        return population(
            "always", Transfer(strength=0.2, schedule="linear"), total_steps=6, scalarization="tchebycheff"
        )

    assert_resumes_exactly(make(), make, batches(6), 3)


def test_a_run_that_fell_back_to_the_loop_resumes_in_the_loop():
    """``vectorize="auto"`` on an accelerator falls back to the loop when vmap fails at the first step;
    a fresh population for the resume starts vectorized and must follow the checkpoint."""
    data = batches(4)

    def auto_on_accelerator():  # what vectorize="auto" builds on a GPU
        pop = population("always", Transfer(strength=0.2))
        pop._fallback_allowed = True
        return pop

    pop = auto_on_accelerator()
    with pytest.warns(UserWarning, match="training members in a loop"):
        pop._to_loop(RuntimeError("an op vmap does not support"))
    resumed = assert_resumes_exactly(pop, auto_on_accelerator, data, 2)
    assert not resumed.vectorized
    with pytest.raises(ValueError, match="other vectorization mode"):
        population("always", Transfer(strength=0.2)).load_state_dict(
            pop.state_dict()
        )  # "always" does not fall back


def test_per_member_fixed_weights_equal_the_linear_scalarization():
    data = batches(4)
    transfer = Transfer(strength=0.1, parameters="all")
    scalarized = population("never", transfer)
    prefs = preference_vectors(2, 4)
    weighted = population("auto", transfer, weightings=[FixedWeights(p.tolist()) for p in prefs])
    assert not weighted.vectorized
    for x, y in data:
        a = scalarized.step(x, y, two_task_loss)
        b = weighted.step(x, y, two_task_loss)
        torch.testing.assert_close(a.losses, b.losses)
        torch.testing.assert_close(a.scalarized, b.scalarized)
    for a, b in zip(members(scalarized), members(weighted)):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_pareto_mtl_members_resume_exactly():
    data = batches(6)

    def make():
        rays = circle_preferences(3)
        return population(
            "never", None, K=3, weightings=[ParetoMTL(rays, k, warmup_steps=2) for k in range(3)]
        )

    assert_resumes_exactly(make(), make, data, 3)


def test_weightings_errors():
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    models = [TwoTaskNet(0), TwoTaskNet(1)]
    with pytest.raises(ValueError, match="1 weightings for 2 models"):
        Population(models, preference_vectors(2, 2), sgd, weightings=[FixedWeights([0.5, 0.5])])
    with pytest.raises(ValueError, match="train the members in a loop"):
        Population(models, preference_vectors(2, 2), sgd, vectorize="always", weightings=[EW(), EW()])


def test_population_input_errors():
    models = [TwoTaskNet(0), TwoTaskNet(1)]
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="2 models but 3 preference vectors"):
        Population(models, preference_vectors(2, 3), sgd)
    with pytest.raises(ValueError, match="needs the `shared` predicate"):
        Population(models, preference_vectors(2, 2), sgd, transfer=Transfer(parameters="shared"))
    with pytest.raises(ValueError, match="transfer strength must be in"):
        Transfer(strength=1.5)
    with pytest.raises(ValueError, match="does not have the architecture"):
        Population([TwoTaskNet(0), nn.Linear(2, 2)], preference_vectors(2, 2), sgd)
    with pytest.raises(ValueError, match=r"a 'cosine' transfer schedule needs total_steps >= 1, got None"):
        Population(models, preference_vectors(2, 2), sgd, transfer=Transfer(0.1, schedule="cosine"))


def test_parameters_are_copied_only_before_a_transferring_step():
    pop = population("never", Transfer(strength=0.2, every=2))
    for step, (x, y) in enumerate(batches(4)):
        assert bool(pop._snapshot()) == (step % 2 == 0)
        pop.step(x, y, two_task_loss)
    decayed = population("never", Transfer(strength=0.2, schedule="linear"), total_steps=2)
    for x, y in batches(2):
        decayed.step(x, y, two_task_loss)
    assert decayed._snapshot() == {}  # strength 0 from the end of the schedule on


# --- hypervolume ---------------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.integers(1, 30), st.integers(2, 4), st.integers(0, 2**31 - 1))
def test_hypervolume_agrees_with_pymoo(n, m, seed):
    HV = pytest.importorskip("pymoo.indicators.hv").HV

    rng = np.random.default_rng(seed)
    points = rng.uniform(0.0, 2.5, size=(n, m))
    reference = np.full(m, 2.0)
    inside = points[np.all(points <= reference, axis=1)]
    expected = HV(ref_point=reference)(inside) if len(inside) else 0.0
    assert hypervolume(points, reference) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_non_dominated_and_known_values():
    points = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [2.5, 2.5], [1.0, 3.0]])
    assert non_dominated(points).tolist() == [True, True, True, False, False]  # a duplicate counts once
    assert hypervolume(points, [4.0, 4.0]) == pytest.approx(3 + 2 + 1)
    assert hypervolume([[5.0, 5.0]], [4.0, 4.0]) == 0.0
    with pytest.raises(ValueError, match="reference point has 3 entries"):
        hypervolume(points, [4.0, 4.0, 4.0])


# --- issue 16: transfer forms and user matrices, frozen layers, architecture and state checks ---------


def mgd_weights_by_hand(prefs: torch.Tensor, neighbours: int) -> torch.Tensor:
    """MGD's w = c/(1+c), c = max(0, cos), to each of the ``neighbours`` most similar; the rest stays."""
    K = prefs.shape[0]
    cos = (prefs @ prefs.T) / (prefs.norm(dim=1)[:, None] * prefs.norm(dim=1)[None, :])
    c = cos.clamp_min(0.0)
    W = torch.zeros(K, K, dtype=torch.float64)
    for k in range(K):
        order = sorted((j for j in range(K) if j != k), key=lambda j: (-float(c[k, j]), abs(j - k), j))
        for j in order[:neighbours]:
            W[k, j] = c[k, j] / (1 + c[k, j])
        W[k, k] = 1 - W[k].sum()
    return W


def test_mgd_form_is_the_mgd_codes_two_task_matrix():
    prefs = torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=torch.float64)
    c = 0.6  # cos((3, 1), (1, 3)) = 6 / 10
    w = 0.01 * c / (1 + c)
    M = transfer_matrix(prefs, 0.01, 1, form="mgd")
    torch.testing.assert_close(M, torch.tensor([[1 - w, w], [w, 1 - w]], dtype=torch.float64))
    # Orthogonal preferences: MGD exchanges nothing; the normalized form still exchanges ρ.
    ends = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert torch.equal(transfer_matrix(ends, 0.01, 1, form="mgd"), torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(
        transfer_matrix(ends, 0.01, 1), torch.tensor([[0.99, 0.01], [0.01, 0.99]], dtype=torch.float64)
    )


@settings(max_examples=100)
@given(st.integers(2, 10), st.floats(0.0, 1.0), st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_mgd_form_agrees_with_the_formula(K, strength, neighbours, seed):
    g = torch.Generator().manual_seed(seed)
    prefs = torch.softmax(torch.randn(K, 3, generator=g, dtype=torch.float64), 1)
    M = transfer_matrix(prefs, strength, neighbours, form="mgd")
    expected = (1 - strength) * torch.eye(K, dtype=torch.float64) + strength * mgd_weights_by_hand(
        prefs, neighbours
    )
    torch.testing.assert_close(M, expected, rtol=1e-12, atol=1e-15)
    assert bool((M >= 0).all())
    torch.testing.assert_close(M.sum(1), torch.ones(K, dtype=torch.float64))


def test_mgd_form_refuses_a_negative_self_weight():
    prefs = torch.tensor([[1.0, 0.0]] * 4, dtype=torch.float64) + torch.tensor([[0.0, 1e-3]])
    prefs = prefs / prefs.sum(1, keepdim=True)  # four nearly equal vectors: c ≈ 1, w ≈ 1/2 each
    transfer_matrix(prefs, 0.5, 3, form="mgd")  # 1 − 0.5·3/2 ≥ 0
    with pytest.raises(
        ValueError, match=r"member 0 the self-weight -0.4\d* < 0: lower the strength to at most 0.66"
    ):
        transfer_matrix(prefs, 0.95, 3, form="mgd")


@pytest.mark.parametrize("spec", ["mgd", "matrix"])
def test_population_applies_the_chosen_transfer_matrix(spec):
    """With SGD: θ^k ← θ^k − η[∇f_k(θ^k) + (ρ/η) Σ_j W_kj (θ^k − θ^j)], W the chosen form or matrix."""
    lr, strength = 0.05, 0.2
    prefs = preference_vectors(2, 4)
    user = torch.tensor(
        [[0.5, 0.5, 0, 0], [0.25, 0.25, 0.5, 0], [0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64
    )
    W = (mgd_weights_by_hand(prefs, 2) if spec == "mgd" else user).float()
    transfer = (
        Transfer(strength=strength, form="mgd") if spec == "mgd" else Transfer(strength=strength, matrix=user)
    )
    pop = population("never", transfer, optimizer=functools.partial(torch.optim.SGD, lr=lr))
    models = [TwoTaskNet(seed) for seed in range(4)]
    for x, y in batches(3):
        pop.step(x, y, two_task_loss)
        grads = [
            torch.autograd.grad(linear(two_task_loss(m(x), y), p.float()), list(m.parameters()))
            for m, p in zip(models, prefs)
        ]
        with torch.no_grad():
            old = [[p.detach().clone() for p in m.parameters()] for m in models]
            for k, model in enumerate(models):
                for i, p in enumerate(model.parameters()):
                    coupling = sum(W[k, j] * (old[k][i] - old[j][i]) for j in range(4))
                    p -= lr * (grads[k][i] + (strength / lr) * coupling)
    for k, model in enumerate(models):
        for name, value in model.state_dict().items():
            torch.testing.assert_close(pop.member_state_dicts()[k][name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[1.0, 0.0, 0.0]], r"^the transfer matrix has shape \(1, 3\), expected \(K, K\)$"),
        (
            [[0.5, 0.5], [float("nan"), 1.0]],
            r"^transfer matrix row 1 is \[nan, 1.0\]: entries must be finite and >= 0$",
        ),
        (
            [[1.5, -0.5], [0.0, 1.0]],
            r"^transfer matrix row 0 is \[1.5, -0.5\]: entries must be finite and >= 0$",
        ),
        ([[0.5, 0.5], [0.2, 0.7]], r"^transfer matrix row 1 sums to 0.9; expected 1$"),
    ],
)
def test_a_bad_user_transfer_matrix_is_named(matrix, message):
    with pytest.raises(ValueError, match=message):
        Transfer(strength=0.1, matrix=matrix)


def test_a_user_transfer_matrix_must_fit_the_population_and_exclude_a_form():
    with pytest.raises(
        ValueError,
        match=r"^the transfer matrix has shape \(2, 2\), expected \(4, 4\), one row and column per member$",
    ):
        population("never", Transfer(strength=0.1, matrix=torch.eye(2)))
    with pytest.raises(ValueError, match=r"^give a transfer form \('mgd'\) or a matrix, not both$"):
        Transfer(form="mgd", matrix=torch.eye(2))
    with pytest.raises(ValueError, match="Transfer form must be one of 'normalized', 'mgd'; got 'cosine'"):
        Transfer(form="cosine")  # type: ignore[arg-type]
    assert Transfer(matrix=torch.eye(2)) == Transfer(matrix=[[1.0, 0.0], [0.0, 1.0]])  # stored immutably


class PartlyFrozenNet(TwoTaskNet):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.encoder[0].requires_grad_(False)  # a frozen first layer, e.g. a pretrained stem


@pytest.mark.parametrize("vectorize", ["always", "never"])
def test_transfer_of_all_parameters_leaves_frozen_layers_alone(vectorize):
    models = [PartlyFrozenNet(seed) for seed in range(4)]
    frozen = [{n: t.clone() for n, t in m.state_dict().items() if n.startswith("encoder.0.")} for m in models]
    pop = Population(
        models,
        preference_vectors(2, 4),
        functools.partial(torch.optim.SGD, lr=0.05),
        transfer=Transfer(strength=0.5, parameters="all"),
        vectorize=vectorize,
    )
    for x, y in batches(2):
        pop.step(x, y, two_task_loss)
    after = members(pop)
    for before, now in zip(frozen, after):
        for name, value in before.items():
            assert torch.equal(now[name], value), name
    assert not torch.equal(after[0]["encoder.3.weight"], after[1]["encoder.3.weight"])  # others still mix
    assert "encoder.0.weight" not in pop.mixed_names


def test_members_of_different_shapes_are_refused_at_construction():
    class Wider(TwoTaskNet):
        def __init__(self, seed: int) -> None:
            super().__init__(seed)
            self.heads[1] = nn.Linear(8, 5)  # same names, another shape

    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"^parameter 'heads.1.weight' has shape \(5, 8\) in model 1 but \(4, 8\) in model 0: "
        r"the members must have one architecture$",
    ):
        Population([TwoTaskNet(0), Wider(1)], preference_vectors(2, 2), sgd, vectorize="never")
    with pytest.raises(
        ValueError, match=r"^parameter 'encoder.0.weight' does not require grad in model 1 but does"
    ):
        Population([TwoTaskNet(0), PartlyFrozenNet(1)], preference_vectors(2, 2), sgd)


def test_a_state_saved_with_other_preference_vectors_is_refused():
    pop = population("never", Transfer(strength=0.2))
    x, y = batches(1)[0]
    pop.step(x, y, two_task_loss)
    state = pop.state_dict()
    other = Population(
        [TwoTaskNet(seed) for seed in range(4)],
        preference_vectors(2, 4, interior=True),
        functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        transfer=Transfer(strength=0.2),
        vectorize="never",
    )
    with pytest.raises(
        ValueError,
        match=r"^the state was saved with preference vectors \[\[1.0, 0.0\], .*\], this population has "
        r"\[\[0.875, 0.125\], .*\]$",
    ):
        other.load_state_dict(state)
    fewer = population("never", Transfer(strength=0.2), K=3)
    with pytest.raises(ValueError, match="saved with preference vectors"):
        fewer.load_state_dict(state)
    legacy = {k: v for k, v in state.items() if k != "preferences"}  # an older state: members are counted
    with pytest.raises(
        ValueError, match=r"^the state holds 4 members, this population has 3 preference vectors$"
    ):
        fewer.load_state_dict(legacy)
    population("never", Transfer(strength=0.2)).load_state_dict(legacy)


def test_the_default_set_size_is_a_lattice_size_for_any_number_of_tasks():
    from mtlopt.benchmarks.methods.population import auto_count

    sizes = {k: auto_count(k) for k in (1, 2, 3, 4, 5, 8, 16)}
    assert sizes == {1: 5, 2: 5, 3: 6, 4: 10, 5: 5, 8: 8, 16: 16}
    for k, n in sizes.items():
        assert preference_vectors(k, n).shape == (n, k)  # a valid size: no error
