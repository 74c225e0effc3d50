"""Set learners (PHN-LS, PHN-EPO, COSMOS, PaMaL): fronts on toy problems with closed-form fronts, exact
resume, the objectives against their formulas, and the errors."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from mtlopt.errors import NonFiniteError
from mtlopt.hypervolume import hypervolume
from mtlopt.set_learners import (
    COSMOS,
    PHN,
    PaMaL,
    ParetoHypernetwork,
    PreferenceInput,
    RaySampler,
    WeightEnsemble,
    evaluate_front,
    recalibrate_batchnorm,
    test_rays,
)
from mtlopt.weighting.epo import EPO

pytest.importorskip("moocore")
pytest.importorskip("scipy")

N = 2  # the fronts below do not depend on the dimension n of x
U = torch.ones(N, dtype=torch.float64) / math.sqrt(N)


def concave(x: Tensor) -> Tensor:
    """The Pareto MTL / EPO toy problem: f = 1 − exp(−‖x ∓ u‖²); its front (x = t·u) is concave."""
    return torch.stack([1 - torch.exp(-((x - U) ** 2).sum()), 1 - torch.exp(-((x + U) ** 2).sum())])


def convex(x: Tensor) -> Tensor:
    """f = ‖x ∓ u‖²: front ((t − 1)², (t + 1)²), t ∈ [−1, 1], convex (linear scalarization covers it)."""
    return torch.stack([((x - U) ** 2).sum(), ((x + U) ** 2).sum()])


def analytic_hv(problem: Callable[[Tensor], Tensor], reference: list[float]) -> float:
    """HV of the closed-form front (x = t·u, t ∈ [−1, 1]) sampled at 4,001 points."""
    t = torch.linspace(-1.0, 1.0, 4001, dtype=torch.float64)
    return hypervolume(torch.stack([problem(ti * U) for ti in t]), reference)


class Point(nn.Module):
    """The toy target network: its output is its parameter x."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(N, dtype=torch.float64))
        self.register_buffer("offset", torch.zeros(N, dtype=torch.float64))

    def forward(self) -> Tensor:
        return self.x + self.offset


def make_phn(objective: str, hidden_dim: int = 32, seed: int = 0) -> tuple[ParetoHypernetwork, PHN]:
    torch.manual_seed(seed)
    hypernetwork = ParetoHypernetwork(Point(), 2, hidden_dim=hidden_dim)
    return hypernetwork, PHN(hypernetwork, objective=objective, seed=seed)  # type: ignore[arg-type]


def make_cosmos(penalty: float, seed: int = 0) -> tuple[PreferenceInput, COSMOS]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(2, 100, dtype=torch.float64), nn.ReLU(), nn.Linear(100, N, dtype=torch.float64)
    )
    return PreferenceInput(model, 2), COSMOS(2, penalty=penalty, seed=seed)


NO_INPUT = torch.zeros(1, 0, dtype=torch.float64)  # the toy has no data: the network sees only the ray


def train(
    learner: PHN | COSMOS, losses: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer, steps: int
) -> None:
    for _ in range(steps):
        ray = learner.sample_ray()
        learner.backward(losses(ray), ray)
        optimizer.step()
        optimizer.zero_grad()


# --- the learned fronts reach the analytic front's HV within 2% ---------------------------------------

DENSE = (
    101  # test rays for the HV checks: 25 points (the default set) fall short of a dense front by the gaps
)


def front_ratio(
    losses: Callable[[Tensor], Tensor], problem: Callable[[Tensor], Tensor], reference: list[float]
) -> float:
    points = evaluate_front(losses, test_rays(2, DENSE))
    return hypervolume(points, reference) / analytic_hv(problem, reference)


@pytest.mark.slow
def test_phn_ls_convex_front_hv() -> None:
    hypernetwork, phn = make_phn("ls")
    losses = lambda ray: convex(hypernetwork.call_target(ray))  # noqa: E731
    train(phn, losses, torch.optim.Adam(hypernetwork.parameters(), lr=1e-2), 300)
    assert front_ratio(losses, convex, [4.0, 4.0]) >= 0.98


@pytest.mark.slow
def test_phn_epo_concave_front_hv() -> None:
    hypernetwork, phn = make_phn("epo")
    losses = lambda ray: concave(hypernetwork.call_target(ray))  # noqa: E731
    train(phn, losses, torch.optim.Adam(hypernetwork.parameters(), lr=3e-3), 1500)
    assert front_ratio(losses, concave, [1.0, 1.0]) >= 0.98


@pytest.mark.slow
def test_cosmos_concave_front_hv() -> None:
    net, cosmos = make_cosmos(penalty=20.0)  # λ is tuned per problem in the official code too
    losses = lambda ray: concave(net(NO_INPUT, ray)[0])  # noqa: E731
    train(cosmos, losses, torch.optim.Adam(net.parameters(), lr=3e-3), 2000)
    assert front_ratio(losses, concave, [1.0, 1.0]) >= 0.98


# --- the objectives ----------------------------------------------------------------------------------


def test_phn_epo_weights_and_grad_match_epo_on_the_hypernetwork_gramian() -> None:
    hypernetwork, phn = make_phn("epo", hidden_dim=8)
    ray = torch.tensor([0.3, 0.7], dtype=torch.float64)
    losses = concave(hypernetwork.call_target(ray))
    params = list(hypernetwork.parameters())
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
        for loss in losses
    ]
    J = torch.stack(rows)
    expected = EPO(ray, weight_scale="num-tasks").weigh(J @ J.T, losses.detach()).weights
    result = phn.backward(losses, ray)
    torch.testing.assert_close(result.weights, expected, rtol=1e-12, atol=1e-12)
    assert float(result.weights.sum()) == pytest.approx(2.0)
    # the .grad written is that of the official Σ α_t L_t with α constant
    grad = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(grad, expected @ J, rtol=1e-10, atol=1e-12)


def test_phn_ls_grad_is_that_of_the_ray_weighted_sum() -> None:
    hypernetwork, phn = make_phn("ls", hidden_dim=8)
    ray = torch.tensor([0.25, 0.75], dtype=torch.float64)
    reference = copy.deepcopy(hypernetwork)
    phn.backward(convex(hypernetwork.call_target(ray)), ray)
    (convex(reference.call_target(ray)) * ray).sum().backward()
    for p, q in zip(hypernetwork.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def test_cosmos_objective_formula() -> None:
    cosmos = COSMOS(2, penalty=3.0)
    losses = torch.tensor([0.4, 1.5], dtype=torch.float64, requires_grad=True)
    ray = torch.tensor([0.2, 0.8], dtype=torch.float64)
    loss, cosine = cosmos.loss(losses, ray)
    expected_cos = float(losses.detach() @ ray / (losses.detach().norm() * ray.norm()))
    assert float(cosine.detach()) == pytest.approx(expected_cos, rel=1e-12)
    assert float(loss.detach()) == pytest.approx(float(losses.detach() @ ray) - 3.0 * expected_cos, rel=1e-12)


def test_call_target_uses_the_generated_parameters_without_copying_the_target() -> None:
    target = Point()
    target.offset.fill_(10.0)
    hypernetwork = ParetoHypernetwork(target, 2, hidden_dim=4)
    assert not any(p is target.x for p in hypernetwork.parameters())
    assert all(not name.startswith("_target") for name in hypernetwork.state_dict())
    ray = torch.tensor([0.5, 0.5], dtype=torch.float64)
    generated = hypernetwork(ray)
    assert set(generated) == {"x"}
    torch.testing.assert_close(hypernetwork.call_target(ray), generated["x"] + 10.0)  # buffer used as is
    assert hypernetwork.target is target and torch.equal(target.x, torch.zeros(N, dtype=torch.float64))


def test_preference_input_appends_the_ray() -> None:
    seen: list[Tensor] = []

    class Spy(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            seen.append(x)
            return x

    ray = torch.tensor([0.1, 0.9])
    PreferenceInput(Spy(), 2)(torch.zeros(3, 4), ray)
    assert seen[-1].shape == (3, 6) and torch.equal(seen[-1][:, 4:], ray.expand(3, 2))
    PreferenceInput(Spy(), 2)(torch.zeros(3, 1, 5, 5), ray)  # images: K constant channels
    assert seen[-1].shape == (3, 3, 5, 5) and torch.equal(seen[-1][:, 1:, 2, 3], ray.expand(3, 2))


# --- rays ----------------------------------------------------------------------------------------------


def test_test_rays_counts_and_simplex() -> None:
    for tasks, count in [(2, 25), (3, 28), (4, 35), (5, 35)]:
        rays = test_rays(tasks)
        assert rays.shape == (count, tasks)
        assert bool((rays > 0).all()) and torch.allclose(rays.sum(1), torch.ones(count, dtype=torch.float64))
    assert test_rays(2, 7).shape == (7, 2)


def test_ray_sampler_is_reproducible_and_resumes() -> None:
    a, b = RaySampler(3, 0.2, seed=5), RaySampler(3, 0.2, seed=5)
    first = [a.sample() for _ in range(4)]
    assert all(torch.equal(x, b.sample()) for x in first)
    state = copy.deepcopy(a.state_dict())
    after = [a.sample() for _ in range(3)]
    c = RaySampler(3, 0.2, seed=99)
    c.load_state_dict(state)
    assert all(torch.equal(x, c.sample()) for x in after)
    tiny = RaySampler(2, 1e-3, seed=0)
    assert all(bool((tiny.sample() > 0).all()) for _ in range(50))


# --- exact resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["phn-ls", "phn-epo", "cosmos"])
def test_resume_is_exact(kind: str) -> None:
    def build() -> tuple[nn.Module, PHN | COSMOS, torch.optim.Optimizer, Callable[[Tensor], Tensor]]:
        if kind == "cosmos":
            net, learner = make_cosmos(penalty=2.0)
            return (
                net,
                learner,
                torch.optim.Adam(net.parameters(), lr=1e-2),
                lambda r: concave(net(NO_INPUT, r)[0]),
            )
        hypernetwork, phn = make_phn(kind[4:], hidden_dim=8)
        fn = lambda r: concave(hypernetwork.call_target(r))  # noqa: E731
        return hypernetwork, phn, torch.optim.Adam(hypernetwork.parameters(), lr=1e-2), fn

    net, learner, optimizer, losses = build()
    train(learner, losses, optimizer, 5)
    saved = copy.deepcopy((net.state_dict(), optimizer.state_dict(), learner.state_dict()))
    train(learner, losses, optimizer, 5)

    net2, learner2, optimizer2, losses2 = build()
    train(learner2, losses2, optimizer2, 2)  # a different history, overwritten by the load
    net2.load_state_dict(saved[0])
    optimizer2.load_state_dict(saved[1])
    learner2.load_state_dict(saved[2])
    train(learner2, losses2, optimizer2, 5)
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
    assert learner.state_dict() == learner2.state_dict()


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RaySampler(1, 0.2), "at least|>= 2"),
        (lambda: RaySampler(2, -1.0), "finite and > 0"),
        (lambda: RaySampler(2, [0.1, 0.2, 0.3]), "3 entries, expected 1 or 2"),
        (lambda: ParetoHypernetwork(Point(), 2, hidden_dim=0), "hidden_dim"),
        (lambda: ParetoHypernetwork(Point(), 2, generate=lambda name: False), "no parameters"),
        (lambda: ParetoHypernetwork("net", 2), "nn.Module"),  # type: ignore[arg-type]
        (lambda: PHN(ParetoHypernetwork(Point(), 2), objective="mgda"), "objective"),  # type: ignore[arg-type]
        (lambda: PHN(nn.Linear(2, 2)), "ParetoHypernetwork"),  # type: ignore[arg-type]
        (lambda: PHN(ParetoHypernetwork(Point(), 2), objective="epo", epo_eps=-1.0), "eps"),
        (lambda: COSMOS(2, penalty=float("nan")), "penalty"),
        (lambda: COSMOS(2, alpha=0.0), "finite and > 0"),
        (lambda: test_rays(3, 26), "Das–Dennis"),
    ],
)
def test_constructor_errors(build: Callable[[], object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_step_errors() -> None:
    hypernetwork, phn = make_phn("ls", hidden_dim=4)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        hypernetwork(torch.ones(3))
    with pytest.raises(ValueError, match=r"losses must be a tensor of shape \(2,\)"):
        phn.backward(torch.ones(3), torch.tensor([0.5, 0.5]))
    with pytest.raises(NonFiniteError, match=r"task\(s\) \[1\] is NaN"):
        phn.backward(torch.tensor([1.0, float("nan")]), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        phn.backward(torch.ones(2), torch.tensor([-0.5, 1.5]))
    with pytest.raises(ValueError, match="PHN state must have keys"):
        phn.load_state_dict({"steps": 0})
    with pytest.raises(ValueError, match="COSMOS state must have keys"):
        COSMOS(2).load_state_dict({})
    with pytest.raises(ValueError, match="expected 2"):
        evaluate_front(lambda ray: torch.ones(3), test_rays(2, 3))
    with pytest.raises(ValueError, match="batch and a feature"):
        PreferenceInput(nn.Identity(), 2)(torch.ones(3), torch.tensor([0.5, 0.5]))


# --- the benchmark runners (phn-ls, phn-epo, cosmos) ------------------------------------------------


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])

    def forward(self, x: Tensor) -> list[Tensor]:
        z = self.encoder(x)
        return [head(z) for head in self.heads]


class Regression:
    def losses(self, outputs: list[Tensor], targets: Tensor) -> list[Tensor]:
        return [((o[:, 0] - targets[:, t]) ** 2).mean() for t, o in enumerate(outputs)]


@pytest.mark.parametrize("name", ["phn-ls", "phn-epo", "cosmos", "pamal"])
def test_runner_trains_predicts_and_resumes_exactly(name: str) -> None:
    from mtlopt.benchmarks.methods import OptimizerSettings, get_method

    def build():  # type: ignore[no-untyped-def]
        options = {"num-rays": 3} if name in ("cosmos", "pamal") else {"num-rays": 3, "hidden-dim": 8}
        runner = get_method(name)(options, num_tasks=2, seed=3)
        torch.manual_seed(0)
        runner.build(TwoHeads, OptimizerSettings("adam", lr=1e-3), total_steps=6, tasks=Regression())
        return runner

    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)) for _ in range(4)]
    runner = build()
    logged = runner.train_step(*data[0])
    assert logged["loss"].shape == (2,) and float(logged["ray"].sum()) == pytest.approx(1.0)
    saved = copy.deepcopy(runner.state_dict())
    for batch in data[1:]:
        runner.train_step(*batch)
    resumed = build()
    resumed.load_state_dict(saved)
    for batch in data[1:]:
        resumed.train_step(*batch)
    for p, q in zip(runner.modules()[0].parameters(), resumed.modules()[0].parameters()):
        assert torch.equal(p, q)
    with torch.no_grad():
        members = runner.predict_members(data[0][0])
    assert len(members) == 3 and [o.shape for o in members[0]] == [(16, 1), (16, 1)]
    assert runner.describe()["rays"] == test_rays(2, 3).tolist()


def test_cosmos_runner_widens_the_first_layer() -> None:
    from mtlopt.benchmarks.methods.set_learners import widen_first_layer

    model = widen_first_layer(TwoHeads(), 2)
    assert model.encoder[0].in_features == 6
    conv = widen_first_layer(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1)), 3)
    assert conv[0].in_channels == 4 and conv[0].padding == (1, 1)
    with pytest.raises(ValueError, match="first layer is an nn.Linear or nn.Conv2d"):
        widen_first_layer(nn.Sequential(nn.Tanh()), 2)


# --- PaMaL ---------------------------------------------------------------------------------------------


def make_pamal(seed: int = 0, **options: object) -> tuple[WeightEnsemble, PaMaL]:
    """Two toy members (points x), independently initialized near the origin."""
    torch.manual_seed(seed)
    members = [Point() for _ in range(2)]
    for member in members:
        with torch.no_grad():
            member.x.normal_(0.0, 0.1)
    ensemble = WeightEnsemble(members)
    return ensemble, PaMaL(ensemble, seed=seed, **options)  # type: ignore[arg-type]


def train_pamal(
    ensemble: WeightEnsemble,
    pamal: PaMaL,
    problem: Callable[[Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
) -> None:
    for _ in range(steps):
        rays = pamal.sample_rays()
        pamal.backward(torch.stack([problem(ensemble.call_target(ray)) for ray in rays]), rays)
        optimizer.step()
        optimizer.zero_grad()


def pamal_front_ratio(
    ensemble: WeightEnsemble, problem: Callable[[Tensor], Tensor], reference: list[float]
) -> float:
    return front_ratio(lambda ray: problem(ensemble.call_target(ray)), problem, reference)


@pytest.mark.parametrize(("problem", "reference"), [(concave, [1.0, 1.0]), (convex, [4.0, 4.0])])
def test_pamal_front_hv(problem: Callable[[Tensor], Tensor], reference: list[float]) -> None:
    """The segment between the two members is the toy's Pareto set (x = t·u): PaMaL finds its ends, on
    the concave front too (each vertex is trained on its own task: no scalarization has to reach the
    front's inside)."""
    ensemble, pamal = make_pamal(penalty=1.0)
    train_pamal(ensemble, pamal, problem, torch.optim.Adam(ensemble.parameters(), lr=3e-2), 300)
    assert pamal_front_ratio(ensemble, problem, reference) >= 0.98


def test_pamal_official_window_order_collapses_the_front() -> None:
    """The official trainer's sort penalizes a task's loss falling as its weight grows (the front's
    expected order): on the convex toy it pulls the two members together, far below the default's
    front (a check that the two orders differ where it matters, not a recommendation)."""
    ensemble, pamal = make_pamal(penalty=1.0, ordering="official")
    train_pamal(ensemble, pamal, convex, torch.optim.Adam(ensemble.parameters(), lr=3e-2), 300)
    assert pamal_front_ratio(ensemble, convex, [4.0, 4.0]) < 0.9
    assert (
        float((ensemble.member(0)["x"] - ensemble.member(1)["x"]).detach().norm()) < 0.5
    )  # vs 2 at the optimum


class SmallNet(nn.Module):
    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(3, 5), nn.BatchNorm1d(5) if norm else nn.Identity(), nn.Tanh(), nn.Linear(5, 2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def test_pamal_vertex_is_the_member_exactly_and_the_inside_is_the_convex_combination() -> None:
    torch.manual_seed(0)
    models = [SmallNet() for _ in range(3)]
    originals = copy.deepcopy(models)
    ensemble = WeightEnsemble(models)
    pamal = PaMaL(ensemble, window=2, seed=1)
    x = torch.randn(7, 3)
    for i in range(3):  # before training: the members are the models given
        assert torch.equal(ensemble.call_target(torch.eye(3)[i], x), originals[i](x))
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=1e-2)
    for _ in range(3):
        rays = pamal.sample_rays()
        outs = [ensemble.call_target(r, x) for r in rays]
        pamal.backward(
            torch.stack([torch.cat([o.pow(2).mean(0), o.sum(1).pow(2).mean(0, keepdim=True)]) for o in outs]),
            rays,
        )
        optimizer.step()
        optimizer.zero_grad()
    for i in range(3):  # after: the vertex e_i is member i's own network, bit for bit
        alone = SmallNet()
        alone.load_state_dict({name: value.detach() for name, value in ensemble.member(i).items()})
        assert torch.equal(ensemble.call_target(torch.eye(3, dtype=torch.float64)[i], x), alone(x))
    ray = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    combined = ensemble(ray)
    for name in ensemble.names:
        expected = sum(float(ray[i]) * ensemble.member(i)[name] for i in range(3))
        torch.testing.assert_close(combined[name], expected, rtol=1e-6, atol=1e-7)
    assert {n.split(".")[0] for n, _ in ensemble.named_parameters()} == {"members"}


def test_pamal_shared_parameters_are_one_tensor_for_every_ray() -> None:
    torch.manual_seed(0)
    models = [SmallNet() for _ in range(2)]
    ensemble = WeightEnsemble(models, ensemble=lambda name: name.startswith("layers.0"))
    assert ensemble.names == ["layers.0.weight", "layers.0.bias"]
    assert ensemble.shared_names == ["layers.3.weight", "layers.3.bias"]
    assert ensemble.shared["layers__3__weight"] is models[0].layers[3].weight
    assert ensemble(torch.tensor([0.4, 0.6]))["layers.3.weight"] is models[0].layers[3].weight


def regularizer_by_hand(
    losses: list[list[float]], rays: list[list[float]], temperature: float, descending: bool
) -> float:
    total = 0.0
    for t in range(len(losses[0])):
        order = sorted(range(len(rays)), key=lambda w: rays[w][t], reverse=descending)
        values = [losses[w][t] for w in order]
        terms = [math.exp(temperature * max(0.0, values[j + 1] - values[j])) for j in range(len(values) - 1)]
        total += math.log(sum(terms) / len(terms))
    return total


@pytest.mark.parametrize("ordering", ["monotone", "official"])
def test_pamal_regularizer_and_gradient_match_the_formula(ordering: str) -> None:
    ensemble, pamal = make_pamal(window=3, penalty=2.5, temperature=1.7, ordering=ordering)
    rays = torch.tensor([[0.7, 0.3], [0.1, 0.9], [0.4, 0.6]], dtype=torch.float64)
    losses = torch.stack([concave(ensemble.call_target(r)) for r in rays])
    expected = regularizer_by_hand(losses.tolist(), rays.tolist(), 1.7, descending=ordering == "official")
    assert float(pamal.regularizer(losses, rays).detach()) == pytest.approx(expected, rel=1e-12)
    result = pamal.backward(losses, rays)
    assert result.diagnostics["regularizer"] == pytest.approx(expected, rel=1e-12)
    scalarized = float((losses.detach() * rays).sum())
    assert float(result.loss) == pytest.approx(scalarized + 2.5 * expected, rel=1e-12)
    assert torch.equal(result.weights, rays) and float(result.weights.sum()) == pytest.approx(3.0)  # W
    # the .grad written is that of J through the members (autograd of an independent J)
    got = [p.grad.clone() for p in ensemble.parameters()]
    ensemble.zero_grad()
    again = torch.stack([concave(ensemble.call_target(r)) for r in rays])
    J = (again * rays).sum()
    for t, descending in [(0, ordering == "official"), (1, ordering == "official")]:
        order = sorted(range(3), key=lambda w: float(rays[w, t]), reverse=descending)
        values = again[order, t]
        J = J + 2.5 * torch.exp(1.7 * torch.relu(values[1:] - values[:-1])).mean().log()
    J.backward()
    for g, p in zip(got, ensemble.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-12, atol=1e-14)


def test_pamal_regularizer_is_zero_on_a_monotone_window_and_the_cap_drops_it() -> None:
    _, pamal = make_pamal(window=3)
    rays = torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    monotone = torch.tensor(
        [[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]], dtype=torch.float64
    )  # more weight, less loss
    assert float(pamal.regularizer(monotone, rays)) == 0.0
    _, official = make_pamal(window=3, ordering="official")
    assert float(official.regularizer(monotone, rays)) > 0.0  # the official sort penalizes that order
    reversed_ = monotone.flip(0)
    assert float(official.regularizer(reversed_, rays)) == 0.0
    _, capped = make_pamal(window=3, penalty=100.0, penalty_cap=True)
    loss, reg = capped.loss(reversed_, rays)
    assert float(reg) > 0.0 and float(loss) == pytest.approx(float((reversed_ * rays).sum()))
    _, one = make_pamal(window=1)
    ray = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    assert float(one.loss(torch.tensor([[1.0, 2.0]], dtype=torch.float64), ray)[0]) == pytest.approx(1.7)


def test_pamal_resume_is_exact() -> None:
    def build() -> tuple[WeightEnsemble, PaMaL, torch.optim.Optimizer]:
        ensemble, pamal = make_pamal(window=2, penalty=1.0)
        return ensemble, pamal, torch.optim.Adam(ensemble.parameters(), lr=1e-2)

    ensemble, pamal, optimizer = build()
    train_pamal(ensemble, pamal, concave, optimizer, 4)
    saved = copy.deepcopy((ensemble.state_dict(), optimizer.state_dict(), pamal.state_dict()))
    train_pamal(ensemble, pamal, concave, optimizer, 5)

    ensemble2, pamal2, optimizer2 = build()
    train_pamal(ensemble2, pamal2, concave, optimizer2, 2)  # a different history, overwritten by the load
    ensemble2.load_state_dict(saved[0])
    optimizer2.load_state_dict(saved[1])
    pamal2.load_state_dict(saved[2])
    train_pamal(ensemble2, pamal2, concave, optimizer2, 5)
    for p, q in zip(ensemble.parameters(), ensemble2.parameters(), strict=True):
        assert torch.equal(p, q)
    assert pamal.state_dict() == pamal2.state_dict() and pamal.steps == 9


def test_recalibrate_batchnorm_estimates_the_statistics_of_the_ray() -> None:
    torch.manual_seed(0)
    models = [SmallNet(norm=True) for _ in range(2)]
    ensemble = WeightEnsemble(models)
    norm = ensemble.target.layers[1]
    batches = [torch.randn(6, 3) for _ in range(3)]
    ensemble.target.eval()
    assert recalibrate_batchnorm(ensemble, torch.tensor([0.0, 1.0]), batches) == 1
    weight, bias = ensemble.member(1)["layers.0.weight"], ensemble.member(1)["layers.0.bias"]
    with torch.no_grad():
        features = [torch.nn.functional.linear(b, weight, bias) for b in batches]
    torch.testing.assert_close(norm.running_mean, torch.stack([f.mean(0) for f in features]).mean(0))
    torch.testing.assert_close(norm.running_var, torch.stack([f.var(0) for f in features]).mean(0))
    assert norm.momentum == 0.1 and not ensemble.target.training and int(norm.num_batches_tracked) == 3


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: WeightEnsemble([Point()]), ">= 2 nn.Module"),
        (lambda: WeightEnsemble([Point(), "net"]), ">= 2 nn.Module"),  # type: ignore[list-item]
        (lambda: WeightEnsemble([Point(), SmallNet()]), "share one architecture"),
        (lambda: WeightEnsemble([SmallNet(), SmallNet().double()]), "member 1's parameter 'layers.0.weight'"),
        (lambda: WeightEnsemble([Point(), Point()], ensemble=lambda name: False), "no parameters"),
        (
            lambda: PaMaL(WeightEnsemble([Point(), Point()]), num_tasks=3),
            "one ensemble member per task: the ensemble has 2 members for 3",
        ),
        (lambda: PaMaL(nn.Linear(2, 2)), "WeightEnsemble"),  # type: ignore[arg-type]
        (lambda: PaMaL(WeightEnsemble([Point(), Point()]), window=0), "window"),
        (lambda: PaMaL(WeightEnsemble([Point(), Point()]), penalty=-1.0), "penalty"),
        (lambda: PaMaL(WeightEnsemble([Point(), Point()]), temperature=0.0), "temperature"),
        (lambda: PaMaL(WeightEnsemble([Point(), Point()]), ordering="sorted"), "ordering"),  # type: ignore[arg-type]
        (lambda: PaMaL(WeightEnsemble([Point(), Point()]), alpha=0.0), "finite and > 0"),
    ],
)
def test_pamal_constructor_errors(build: Callable[[], object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_pamal_step_errors() -> None:
    ensemble, pamal = make_pamal(window=2)
    rays = pamal.sample_rays()
    with pytest.raises(ValueError, match=r"on the simplex .*\[0\.5, 0\.6\] \(sum 1\.1"):
        ensemble.call_target(torch.tensor([0.5, 0.6], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(2,\) \(one weight per member\)"):
        ensemble(torch.ones(3) / 3)
    with pytest.raises(ValueError, match="on the simplex"):
        ensemble(torch.tensor([1.5, -0.5]))
    with pytest.raises(ValueError, match=r"losses must be a tensor of shape \(2, 2\)"):
        pamal.backward(torch.ones(2), rays)
    with pytest.raises(ValueError, match=r"rays must have shape \(2, 2\)"):
        pamal.backward(torch.ones(2, 2), rays[0])
    with pytest.raises(ValueError, match="on the simplex"):
        pamal.backward(torch.ones(2, 2), torch.tensor([[0.5, 0.5], [0.9, 0.9]]))
    with pytest.raises(NonFiniteError, match=r"task\(s\) \[1\] is NaN"):
        pamal.backward(torch.tensor([[1.0, 1.0], [1.0, float("nan")]]), rays)
    with pytest.raises(ValueError, match="PaMaL state must have keys"):
        pamal.load_state_dict({"steps": 0})
    with pytest.raises(ValueError, match="member index"):
        ensemble.member(2)
