"""AlternatingSteps: equalities with hand-written SGD, invariances, grouping, inactive heads, resume."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import Tensor, nn

import mtlopt


class Net(nn.Module):
    def __init__(self, num_tasks: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(num_tasks))
        self.double()


def data(num_tasks: int = 4, seed: int = 1, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(
        n, num_tasks, generator=g, dtype=torch.float64
    )


def task_loss(model: Net, x, y, t: int, scale: float = 1.0):
    return scale * (model.heads[t](model.encoder(x)).squeeze(1) - y[:, t]).pow(2).mean()


def closure_for(model, x, y, scales=None):
    def closure(group):
        return [task_loss(model, x, y, t, (scales or {}).get(t, 1.0)) for t in group]

    return closure


def sgd(lr=0.1):
    return functools.partial(torch.optim.SGD, lr=lr)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_one_group_with_sgd_is_one_step_on_the_summed_loss():
    model, reference = Net(), Net()
    x, y = data()
    steps = mtlopt.AlternatingSteps(model.encoder, model.heads, sgd(), group_size=4)
    assert steps.groups == [[0, 1, 2, 3]]
    steps.step(closure_for(model, x, y))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    sum(task_loss(reference, x, y, t) for t in range(4)).backward()
    optimizer.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


@pytest.mark.parametrize("state", ["per-group", "shared"])
def test_k_groups_with_sgd_are_k_sequential_steps_done_by_hand(state):
    model, reference = Net(), Net()
    x, y = data()
    steps = mtlopt.AlternatingSteps(model.encoder, model.heads, sgd(), state=state)
    for _ in range(3):
        steps.step(closure_for(model, x, y))
        for t in range(4):  # by hand: fresh forward, gradient of task t, θ ← θ − lr·g
            grads = torch.autograd.grad(
                task_loss(reference, x, y, t), list(reference.parameters()), allow_unused=True
            )
            with torch.no_grad():
                for p, g in zip(reference.parameters(), grads):
                    if g is not None:
                        p -= 0.1 * g
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def run(state, scales, steps_count=20, group_size=None, seed=0):
    model = Net()
    x, y = data()
    steps = mtlopt.AlternatingSteps(
        model.encoder,
        model.heads,
        functools.partial(torch.optim.Adam, lr=1e-2),
        state=state,
        group_size=group_size,
        seed=seed,
    )
    for _ in range(steps_count):
        steps.step(closure_for(model, x, y, scales))
    return params(model)


def test_per_group_adam_is_invariant_to_rescaling_one_group_loss():
    base = run("per-group", {})
    scaled = run("per-group", {2: 1000.0})
    for a, b in zip(base, scaled):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # The shared optimizer (IUS) mixes the groups' gradients in one state: rescaling changes the run.
    base_shared, scaled_shared = run("shared", {}), run("shared", {2: 1000.0})
    assert max((a - b).abs().max().item() for a, b in zip(base_shared, scaled_shared)) > 1e-3


@pytest.mark.parametrize("state", ["per-group", "shared"])
def test_heads_outside_the_active_group_do_not_move(state):
    model = Net()
    x, y = data()
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    steps = mtlopt.AlternatingSteps(model.encoder, model.heads, optimizer, state=state)
    steps.step(closure_for(model, x, y))  # every head now has momentum
    snapshot = [params(head) for head in model.heads]
    checked = []

    def closure(group):
        # Called before each group's sub-step: heads of later groups must be as they were.
        (t,) = group
        for later in range(t, 4):
            for a, b in zip(model.heads[later].parameters(), snapshot[later]):
                assert torch.equal(a, b), f"head {later} moved during the sub-step of an earlier group"
        checked.append(t)
        return [task_loss(model, x, y, t)]

    steps.step(closure)
    assert checked == [0, 1, 2, 3]


def test_per_group_state_covers_only_shared_parameters_and_own_heads():
    model = Net(num_tasks=6)
    x, y = data(num_tasks=6)
    steps = mtlopt.AlternatingSteps(
        model.encoder, model.heads, functools.partial(torch.optim.Adam, lr=1e-2), group_size=2, seed=3
    )
    steps.step(closure_for(model, x, y))
    shared = {id(p) for p in model.encoder.parameters()}
    for group, optimizer in zip(steps.groups, steps.optimizers):
        own = shared | {id(p) for t in group for p in model.heads[t].parameters()}
        managed = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert managed == own
        assert {id(p) for p in optimizer.state} == own


def test_random_grouping_is_a_partition_reproducible_from_the_seed():
    model = Net(num_tasks=10)
    make = functools.partial(mtlopt.AlternatingSteps, model.encoder, model.heads, sgd(), group_size=3)
    groups = make(seed=7).groups
    assert [len(g) for g in groups] == [3, 3, 3, 1]
    assert sorted(t for g in groups for t in g) == list(range(10))
    assert make(seed=7).groups == groups
    assert any(make(seed=s).groups != groups for s in range(8, 12))


def test_regrouping_each_epoch_keeps_every_parameters_optimizer_state_and_learning_rate():
    model = Net(num_tasks=6)
    x, y = data(num_tasks=6)
    steps = mtlopt.AlternatingSteps(
        model.encoder,
        model.heads,
        functools.partial(torch.optim.Adam, lr=1e-2),
        group_size=2,
        regroup="epoch",
        seed=1,
    )
    steps.step(closure_for(model, x, y))
    head_state = {
        t: steps.optimizers[k].state[model.heads[t].weight]["exp_avg"].clone()
        for k, g in enumerate(steps.groups)
        for t in g
    }
    first = steps.groups
    for optimizer in steps.optimizers:  # e.g. the trainer's lr decay at the start of an epoch
        optimizer.param_groups[0]["lr"] = 1e-4
    steps.new_epoch()
    assert steps.groups != first and steps.grouping_history == [first, steps.groups]
    assert [opt.param_groups[0]["lr"] for opt in steps.optimizers] == [1e-4] * 3  # new optimizers keep it
    for k, group in enumerate(steps.groups):
        for t in group:
            assert torch.equal(steps.optimizers[k].state[model.heads[t].weight]["exp_avg"], head_state[t])


def test_the_process_group_is_looked_up_at_each_step(monkeypatch):
    """Built before torch.distributed is initialized, the steps still synchronize once it is."""
    import mtlopt.alternating as alternating

    model = Net(num_tasks=2)
    x, y = data(num_tasks=2)
    steps = mtlopt.AlternatingSteps(model.encoder, model.heads, sgd())
    group, seen = object(), []
    monkeypatch.setattr(alternating, "resolve_group", lambda sync: group if sync == "auto" else None)
    monkeypatch.setattr(alternating, "all_reduce_mean_", lambda tensors, g: seen.append(g))
    monkeypatch.setattr("mtlopt.distributed.any_rank", lambda flag, g, device: flag)  # no real group
    steps.step(closure_for(model, x, y))
    assert seen == [group, group]  # one all-reduce per group's sub-step, over the group found now


def test_a_nan_gradient_raises_before_the_step_and_names_the_group():
    model = Net(num_tasks=2)
    x, y = data(num_tasks=2)
    steps = mtlopt.AlternatingSteps(model.encoder, model.heads, sgd())
    before = params(model)

    def closure(group):
        if group == [1]:  # a finite loss (0) whose gradient is NaN (0 · ∞)
            return (model.heads[1].bias - model.heads[1].bias.detach()).abs().sqrt().sum()
        return [task_loss(model, x, y, t) for t in group]

    with pytest.raises(mtlopt.NonFiniteError, match=r"gradient of the group of tasks \[1\] contains NaN"):
        steps.step(closure)
    after = params(model)
    assert not torch.equal(before[0], after[0])  # group [0] stepped first
    assert torch.equal(before[-1], after[-1]) and all(torch.isfinite(p).all() for p in after)


@pytest.mark.parametrize("state", ["per-group", "shared"])
def test_state_dict_resumes_exactly(state):
    x, y = data(num_tasks=6)

    def make(model):
        return mtlopt.AlternatingSteps(
            model.encoder,
            model.heads,
            functools.partial(torch.optim.Adam, lr=1e-2),
            state=state,
            group_size=2,
            regroup="epoch",
            order="shuffled",
            seed=5,
        )

    model = Net(num_tasks=6)
    steps = make(model)
    for epoch in range(4):
        if epoch:
            steps.new_epoch()
        for _ in range(3):
            steps.step(closure_for(model, x, y))
        if epoch == 1:
            saved_model, saved_steps = copy.deepcopy(model.state_dict()), copy.deepcopy(steps.state_dict())
    resumed_model = Net(num_tasks=6, seed=99)
    resumed_model.load_state_dict(saved_model)
    resumed = make(resumed_model)
    resumed.load_state_dict(saved_steps)
    for _epoch in range(2, 4):
        resumed.new_epoch()
        for _ in range(3):
            resumed.step(closure_for(resumed_model, x, y))
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    assert resumed.covered_distance == pytest.approx(steps.covered_distance, rel=1e-12)
    assert resumed.grouping_history == steps.grouping_history


def test_covered_distance_sums_the_shared_parameter_moves():
    model = Net()
    x, y = data()
    by_hand = copy.deepcopy(model)
    expected = 0.0
    for t in range(4):  # the same four SGD sub-steps by hand, summing ‖Δθ_shared‖₂
        shared, head = list(by_hand.encoder.parameters()), list(by_hand.heads[t].parameters())
        grads = torch.autograd.grad(task_loss(by_hand, x, y, t), shared + head)
        expected += torch.cat([(0.1 * g).reshape(-1) for g in grads[: len(shared)]]).norm().item()
        with torch.no_grad():
            for p, g in zip(shared + head, grads):
                p -= 0.1 * g
    steps = mtlopt.AlternatingSteps(model.encoder, model.heads, sgd())
    result = steps.step(closure_for(model, x, y))
    assert result.distance == pytest.approx(expected, rel=1e-12)
    assert steps.covered_distance == result.distance
    assert result.order == [[0], [1], [2], [3]] and len(result.group_losses) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"state": "separate"}, "state must be one of"),
        ({"group_size": 0}, "group_size must be >= 1"),
        ({"regroup": "epoch"}, "regroup='epoch' needs a random grouping"),
        ({"order": "random"}, "order must be one of"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    model = Net()
    with pytest.raises(ValueError, match=message):
        mtlopt.AlternatingSteps(model.encoder, model.heads, sgd(), **kwargs)


def test_bad_closures_are_reported():
    model = Net()
    x, y = data()
    steps = mtlopt.AlternatingSteps(model.encoder, model.heads, sgd())
    with pytest.raises(ValueError, match=r"scalar losses for group \[0\].*shape \(16,\)"):
        steps.step(lambda group: [model.heads[group[0]](model.encoder(x)).squeeze(1)])
    with pytest.raises(mtlopt.NonFiniteError, match=r"group of tasks \[0\] is nan"):
        steps.step(lambda group: [task_loss(model, x, y, group[0]) * float("nan")])
    with pytest.raises(ValueError, match="appears twice"):
        mtlopt.AlternatingSteps(model.encoder, [model.heads[0], model.heads[0]], sgd())


# --- issue 16: closure contract, rescaling claim, covered distance -----------------------------------


@pytest.mark.parametrize("as_mapping", [False, True])
def test_a_closure_returning_every_tasks_loss_is_refused_before_any_step(as_mapping):
    model = Net()
    x, y = data()
    steps = mtlopt.AlternatingSteps(model.encoder, model.heads, sgd())
    before = params(model)

    def every_task(group):  # the forward computes every head: natural, and wrong here
        losses = [task_loss(model, x, y, t) for t in range(4)]
        return {f"task{t}": loss for t, loss in enumerate(losses)} if as_mapping else losses

    with pytest.raises(
        ValueError,
        match=r"^the closure returned 4 losses \(one per task of the model\) for the group of tasks \[0\]: "
        r"return its 1 task losses, in the group's order, or their sum as one scalar$",
    ):
        steps.step(every_task)
    assert all(torch.equal(a, b) for a, b in zip(before, params(model)))  # nothing moved


def test_a_closure_must_return_each_task_of_a_larger_group_or_their_sum():
    model = Net()
    x, y = data()
    steps = mtlopt.AlternatingSteps(model.encoder, model.heads, sgd(), group_size=2, seed=0)
    with pytest.raises(
        ValueError, match=r"returned 1 losses for the group of tasks \[\d, \d\]: return its 2"
    ):
        steps.step(lambda group: [task_loss(model, x, y, group[0])])
    summed = Net()
    steps_summed = mtlopt.AlternatingSteps(summed.encoder, summed.heads, sgd(), group_size=2, seed=0)
    steps.step(closure_for(model, x, y))
    steps_summed.step(lambda group: sum(task_loss(summed, x, y, t) for t in group))  # one scalar: the sum
    for a, b in zip(model.parameters(), summed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


def relative_change(a: list[Tensor], b: list[Tensor]) -> float:
    return float(
        torch.cat([(p - q).reshape(-1) for p, q in zip(a, b)]).norm()
        / torch.cat([p.reshape(-1) for p in a]).norm()
    )


def test_per_group_adam_is_not_invariant_to_rescaling_one_task_inside_a_group():
    """The docstring's claim: invariance to a per-task rescaling holds with one task per group only."""
    alone = relative_change(run("per-group", {}), run("per-group", {2: 1000.0}))
    base, scaled = run("per-group", {}, group_size=2), run("per-group", {2: 1000.0}, group_size=2)
    in_pairs = relative_change(base, scaled)
    print(
        f"relative parameter change, task 2's loss x1000: one task per group {alone:.2e}, pairs {in_pairs:.2e}"
    )
    assert alone < 1e-6
    assert in_pairs > 1e-3


class BatchNormNet(Net):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh())
        for p in self.encoder[1].parameters():  # BN's affine parameters away from their init
            nn.init.normal_(p)
        self.double()


@pytest.mark.parametrize("choice", ["no-batchnorm", "all", "tensors"])
def test_covered_distance_leaves_out_batchnorm_parameters_as_the_authors(choice):
    model = BatchNormNet()
    x, y = data()
    linear = list(model.encoder[0].parameters())
    counted = {"no-batchnorm": linear, "all": list(model.encoder.parameters()), "tensors": linear[:1]}[choice]
    before = params(model)
    before_counted = [p.detach().clone() for p in counted]
    kwargs = (
        {}
        if choice == "no-batchnorm"
        else {"distance_parameters": linear[:1] if choice == "tensors" else choice}
    )
    steps = mtlopt.AlternatingSteps(model.encoder, model.heads, sgd(), group_size=4, **kwargs)  # one sub-step
    result = steps.step(closure_for(model, x, y))
    expected = (
        torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(counted, before_counted)]).norm().item()
    )
    assert result.distance == pytest.approx(expected, rel=1e-12)
    bn_moved = sum((p - b).norm() for p, b in zip(params(model)[2:4], before[2:4]))
    assert float(bn_moved) > 0  # BN's affine parameters did move: leaving them out changes the number


def test_distance_parameters_must_be_shared_parameters():
    model = Net()
    with pytest.raises(
        ValueError, match=r"distance_parameters must be one of 'no-batchnorm', 'all'; got 'bn'"
    ):
        mtlopt.AlternatingSteps(model.encoder, model.heads, sgd(), distance_parameters="bn")
    with pytest.raises(ValueError, match=r"distance_parameters\[0\] is not one of the shared parameters"):
        mtlopt.AlternatingSteps(
            model.encoder, model.heads, sgd(), distance_parameters=list(model.heads[0].parameters())
        )
