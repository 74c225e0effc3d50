"""Shared parameters no loss reaches (an unused layer, a branch not taken, a custom Function that gives
no gradient): exact MGDA, PCGrad, MAO and ``mtlopt.jacobian`` agree on the batched and loop paths with a
plain per-task ``torch.autograd.grad(..., allow_unused=True)`` loop; an unreached parameter has zero
rows in the Jacobian, keeps ``.grad`` None, is not stepped by MAO and is reported in the diagnostics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import mtlopt
from reference import reference_min_norm

K = 3


class NoGradient(torch.autograd.Function):
    """Adds ``0 * p.sum()`` in the forward and gives ``p`` no gradient: autograd reaches p's node, but
    ``torch.autograd.grad`` returns None for it (as for a quantizer's scale)."""

    @staticmethod
    def forward(ctx, x: Tensor, p: Tensor) -> Tensor:  # type: ignore[override]
        return x + 0 * p.sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


class MLPEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 10)
        self.unused = nn.Linear(10, 4)  # an auxiliary layer the forward never calls
        self.second = nn.Linear(10, 8)
        self.scale = nn.Parameter(torch.ones(5))  # reached by the graph, given no gradient

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.first(x))
        return NoGradient.apply(torch.tanh(self.second(h)), self.scale)


class ConvEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 8)
        self.leftover_fc = nn.Linear(8, 4)  # a backbone's classifier the MTL model does not use

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc(F.relu(self.conv(x)).flatten(1)))


ENCODERS = {"mlp": (MLPEncoder, (6,)), "conv": (ConvEncoder, (1, 6, 6))}
UNREACHED = {
    "mlp": ["scale", "unused.weight", "unused.bias"],
    "conv": ["leftover_fc.weight", "leftover_fc.bias"],
}


class Model(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = ENCODERS[kind][0]()
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(K))
        self.double()

    def losses(self, x: Tensor, y: Tensor) -> list[Tensor]:
        z = self.encoder(x)
        return [(head(z).squeeze(1) - y[:, t]).pow(2).mean() for t, head in enumerate(self.heads)]


def data(kind: str) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, *ENCODERS[kind][1], generator=g, dtype=torch.float64)
    return x, torch.randn(8, K, generator=g, dtype=torch.float64)


def per_task(losses: list[Tensor], params: list[Tensor]) -> list[tuple[Tensor | None, ...]]:
    """The independent computation: one plain autograd.grad call per task."""
    return [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) for loss in losses]


def flat_jacobian(rows: list[tuple[Tensor | None, ...]], params: list[Tensor]) -> Tensor:
    return torch.stack(
        [
            torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(row, params)])
            for row in rows
        ]
    )


@pytest.mark.parametrize("kind", list(ENCODERS))
@pytest.mark.parametrize("method", ["auto", "batched", "loop"])
def test_jacobian_has_zero_rows_for_unreached_parameters(kind, method):
    model = Model(kind)
    x, y = data(kind)
    losses = model.losses(x, y)
    params = list(model.encoder.parameters())
    expected = flat_jacobian(per_task(losses, params), params)
    J = mtlopt.jacobian(losses, params, method=method)
    assert J.shape == (K, sum(p.numel() for p in params))
    torch.testing.assert_close(J, expected, rtol=1e-12, atol=1e-14)


def expected_weights(name: str, G: Tensor) -> Tensor:
    if name == "mgda":
        return torch.from_numpy(reference_min_norm(G.numpy())[0])
    return mtlopt.PCGrad(order="fixed")(G, torch.zeros(K, dtype=torch.float64))


@pytest.mark.parametrize("kind", list(ENCODERS))
@pytest.mark.parametrize("name", ["mgda", "pcgrad"])
@pytest.mark.parametrize("method", ["auto", "batched", "loop"])
def test_gramian_methods_write_the_per_task_combination_and_leave_unreached_grads_alone(kind, name, method):
    model = Model(kind)
    x, y = data(kind)
    losses = model.losses(x, y)
    named = [(n, p) for n, p in model.encoder.named_parameters()]
    shared = [p for _, p in named]
    rows = per_task(losses, shared)
    J = flat_jacobian(rows, shared)
    w = expected_weights(name, J @ J.T)
    head_grads = [
        torch.autograd.grad(sum(losses), list(h.parameters()), retain_graph=True) for h in model.heads
    ]
    weighting = mtlopt.MGDA() if name == "mgda" else mtlopt.PCGrad(order="fixed")

    result = mtlopt.backward(losses, weighting, shared_params=model.encoder, method=method)

    torch.testing.assert_close(result.weights, w, rtol=0, atol=1e-7)
    assert result.diagnostics["unreached_shared_params"] == UNREACHED[kind]
    for i, (param_name, p) in enumerate(named):
        if all(row[i] is None for row in rows):
            assert p.grad is None, f"{param_name}: no loss reaches it, yet .grad was written"
            continue
        expected = sum(
            result.weights[t].item() * (rows[t][i] if rows[t][i] is not None else 0) for t in range(K)
        )
        torch.testing.assert_close(p.grad, expected, rtol=1e-10, atol=1e-13)
    for head, grads in zip(model.heads, head_grads):  # heads: ∇L_t, unweighted
        for p, g in zip(head.parameters(), grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-13)


def mao(model: Model) -> mtlopt.MAO:
    groups = [{"params": model.encoder.parameters(), "shared": True}, {"params": model.heads.parameters()}]
    return mtlopt.MAO(groups, num_tasks=K, lr=1e-2, weight_decay=0.1)


@pytest.mark.parametrize("kind", list(ENCODERS))
@pytest.mark.parametrize("method", ["auto", "batched", "loop"])
def test_mao_steps_as_with_per_task_gradients_and_skips_unreached_parameters(kind, method):
    model = Model(kind)
    reference = copy.deepcopy(model)
    optimizer, reference_optimizer = mao(model), mao(reference)
    x, y = data(kind)
    for _ in range(2):
        optimizer.zero_grad()
        optimizer.backward(model.losses(x, y), method=method)
        optimizer.step()
        # Independent: per-task gradients of the parameters autograd reaches, .grad of the heads.
        reference_optimizer.zero_grad()
        losses = reference.losses(x, y)
        shared = list(reference.encoder.parameters())
        rows = per_task(losses, shared)
        given = {
            p: torch.stack([g if g is not None else torch.zeros_like(p) for g in (row[i] for row in rows)])
            for i, p in enumerate(shared)
            if any(row[i] is not None for row in rows)
        }
        reference_optimizer.set_task_gradients(given)
        sum(losses).backward(inputs=list(reference.heads.parameters()))
        reference_optimizer.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14, msg=name)
    unreached = {f"encoder.{n}" for n in UNREACHED[kind]}
    for name, p in model.named_parameters():
        assert (p not in optimizer.state or not optimizer.state[p]) == (name in unreached), name


def test_no_reached_shared_parameter_is_refused_by_name():
    model = Model("mlp")
    x, y = data("mlp")
    losses = model.losses(x, y)
    with pytest.raises(ValueError, match=r"no loss reaches shared_params \(weight, bias\)"):
        mtlopt.backward(losses, mtlopt.MGDA(), shared_params=model.encoder.unused)


# --- two processes: a branch one rank's batch takes and the other's does not ---------------------


class BranchEncoder(nn.Module):
    """An MLP whose ``branch`` runs only for the samples flagged in ``mask`` (and not at all without)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 8)
        self.branch = nn.Linear(6, 8)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        z = torch.tanh(self.first(x))
        if bool(mask.any()):
            z = z + mask[:, None] * torch.tanh(self.branch(x))
        return z


def branch_step(rank: int, world: int) -> dict[str, Tensor]:
    """One MGDA step and one MAO step on this rank's half of the batch (the whole batch when world is 1)."""
    g = torch.Generator().manual_seed(2)
    x, y = (
        torch.randn(8, 6, generator=g, dtype=torch.float64),
        torch.randn(8, K, generator=g, dtype=torch.float64),
    )
    mask = torch.arange(8) < 2  # the branch's samples are all in rank 0's half
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)
    out = {}
    for name in ("mgda", "mao"):
        torch.manual_seed(0)
        encoder, heads = BranchEncoder().double(), nn.ModuleList(nn.Linear(8, 1) for _ in range(K)).double()
        z = encoder(x[part], mask[part])
        losses = [(h(z).squeeze(1) - y[part, t]).pow(2).mean() for t, h in enumerate(heads)]
        if name == "mgda":
            mtlopt.backward(losses, mtlopt.MGDA(), shared_params=encoder)
            values = {
                n: p.grad if p.grad is not None else torch.full_like(p, float("nan"))
                for n, p in encoder.named_parameters()
            }
        else:
            groups = [{"params": encoder.parameters(), "shared": True}, {"params": heads.parameters()}]
            optimizer = mtlopt.MAO(groups, num_tasks=K, lr=1e-2, weight_decay=0.1)
            optimizer.backward(losses)
            optimizer.step()
            values = dict(encoder.named_parameters())
        out.update({f"{name}.{n}": v.detach().clone() for n, v in values.items()})
    return out


def branch_worker(rank: int, world: int, port: int, folder: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(branch_step(rank, world), f"{folder}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.cpu_only(reason="gloo DDP: processes on the CPU over loopback")
def test_a_branch_taken_on_one_rank_gives_every_rank_the_one_process_update(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(branch_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = branch_step(0, 1)
    for name, value in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"the ranks differ in {name}"
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-10, atol=1e-12, msg=name)
