"""method="lean": the Gramian of the shared parameters layer by layer, without the K×P Jacobian — the same
Gramian, weights and .grad as the held Jacobian (float64, to 1e-10), on convolutions (stride, padding,
dilation), linear maps with and without bias, a bare matrix product, a tied weight, a grouped convolution
and layers some task does not reach."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mtlopt
from mtlopt import lean_gramian
from mtlopt.benchmarks.models.vision import CifarResNet18
from mtlopt.gradients import Jacobian
from mtlopt.lean_gramian import LeanJacobian

pytestmark = pytest.mark.filterwarnings("ignore:the gradient of task")


class Mixed(nn.Module):
    """Layers of every handled form, and forms left to rows (a tied weight, a grouped convolution)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)  # N > D: rows
        self.c2 = nn.Conv2d(4, 16, 3, stride=2, padding=1)  # factored
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)  # rows (groups != 1)
        self.c3 = nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2)  # factored
        self.fc1 = nn.Linear(32 * 2 * 2, 200)  # addmm with bias: factored
        self.fc2 = nn.Linear(200, 300, bias=False)  # mm with the transposed weight: factored
        self.W = nn.Parameter(torch.randn(300, 50) / 20)  # x @ W: factored
        self.tied = nn.Linear(50, 50)  # used twice: rows

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = F.relu(self.c2(h))
        h = F.relu(self.grouped(h))
        h = F.relu(self.c3(h)).flatten(1)
        h = F.relu(self.fc2(F.relu(self.fc1(h)))) @ self.W
        return self.tied(F.relu(self.tied(h)))


def _losses(z, heads):
    return [head(z).pow(2).mean() for head in heads]


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("chunks", [1, 2, 3, 5])
def test_the_lean_gramian_and_combination_equal_the_held_jacobians(float64, chunks):
    torch.manual_seed(0)
    enc, heads = Mixed(), nn.ModuleList(nn.Linear(50, 1) for _ in range(5))
    losses = _losses(enc(torch.randn(2, 3, 8, 8)), heads)
    shared = list(enc.parameters())
    lean = LeanJacobian.compute(losses, shared, chunks=chunks)
    assert lean.chunks == chunks
    names = [name for name, _ in enc.named_parameters()]
    factored = {names[i] for i in lean.factored_inputs}
    assert factored == {"c2.weight", "c3.weight", "fc1.weight", "fc2.weight", "W"}
    full = Jacobian.compute(losses, shared, method="loop")
    G = full.gramian()
    torch.testing.assert_close(lean.gramian(), G, rtol=1e-12, atol=1e-14 * float(G.abs().max()))
    for group in ([1], [5, 7], [0, 2, 9]):
        torch.testing.assert_close(lean.gramian_of(group), full.gramian_of(group), rtol=1e-12, atol=1e-14)
    w = torch.rand(5)
    for a, b in zip(lean.combine(w), full.combine(w), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    each = [torch.rand(5) for _ in shared]
    for a, b in zip(lean.combine_each(each), full.combine_each(each), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunks", [1, 2])
def test_a_task_that_does_not_reach_a_factored_layer_has_zero_rows_there(float64, chunks):
    torch.manual_seed(1)
    a, b = nn.Linear(40, 8), nn.Linear(40, 8)
    x = torch.randn(3, 40)
    ha, hb = a(x), b(x)
    losses = [ha.pow(2).sum(), (ha * hb).sum(), a.bias.pow(2).sum()]  # task 2 reaches no weight
    unused = nn.Linear(2, 2)
    shared = [a.weight, b.weight, a.bias, unused.weight]
    lean = LeanJacobian.compute(losses, shared, chunks=chunks)
    assert sorted(lean.factored_inputs) == [0, 1]
    full = Jacobian.compute(losses, shared, method="loop")
    torch.testing.assert_close(lean.gramian(), full.gramian(), rtol=1e-12, atol=1e-12)
    assert lean.reached == full.reached == [True, True, True, False]
    w = torch.tensor([0.2, 0.3, 0.5])
    for a, b in zip(lean.combine(w), full.combine(w), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("batch", "chunks"), [(1, 1), (2, 2), (3, 3), (4, 4), (9, 4)])
def test_chunks_default_to_output_gradients_no_larger_than_the_rows(batch, chunks):
    """Two Linear(100, 100): the rows are the biases (200 numbers a task), the output gradients are
    2 · batch · 100: ceil(batch) chunks, at most 4."""
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 100))
    losses = _losses(enc(torch.randn(batch, 100)), [nn.Linear(100, 1) for _ in range(6)])
    lean = LeanJacobian.compute(losses, list(enc.parameters()))
    assert sorted(lean.factored_inputs) == ([0, 2] if batch < 100 else [])
    assert lean.chunks == chunks
    with pytest.raises(ValueError, match="chunks must be an int >= 1 or None, got 0"):
        LeanJacobian.compute(losses, list(enc.parameters()), chunks=0)


def _resnet_step(method: str, weighting_factory, seed: int = 0):
    torch.manual_seed(seed)
    enc = CifarResNet18()
    heads = nn.ModuleList(nn.Linear(512, 2) for _ in range(4))
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 4))
    z = enc(x)
    losses = [F.cross_entropy(head(z), y[:, t]) for t, head in enumerate(heads)]
    result = mtlopt.backward(losses, weighting_factory(), shared_params=enc, method=method)
    grads = [p.grad.clone() for p in [*enc.parameters(), *heads.parameters()]]
    return result, grads


@pytest.mark.parametrize(
    "factory",
    [mtlopt.MGDA, mtlopt.UPGrad, lambda: mtlopt.GradVac(seed=3, groups="layer")],
    ids=["mgda", "upgrad", "gradvac-layer"],
)
def test_backward_lean_equals_the_held_jacobian_on_resnet18(float64, factory):
    held, held_grads = _resnet_step("loop", factory)
    lean, lean_grads = _resnet_step("lean", factory)
    assert lean.diagnostics["lean_gramian"]["factored_params"]  # the deep convolutions
    assert "lean_gramian" not in held.diagnostics
    torch.testing.assert_close(lean.gramian, held.gramian, rtol=1e-10, atol=0)
    torch.testing.assert_close(lean.weights, held.weights, rtol=1e-10, atol=1e-12)
    for a, b in zip(lean_grads, held_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert a.grad_fn is None  # nothing of the graph (a layer's saved input) reaches .grad


def test_auto_takes_the_lean_path_when_the_jacobian_would_not_fit(float64, monkeypatch):
    monkeypatch.setattr(lean_gramian, "_free_bytes", lambda device: 1000)
    auto, auto_grads = _resnet_step("auto", mtlopt.MGDA)
    assert "lean_gramian" in auto.diagnostics
    monkeypatch.setattr(lean_gramian, "_free_bytes", lambda device: None)
    held, held_grads = _resnet_step("auto", mtlopt.MGDA)
    assert "lean_gramian" not in held.diagnostics
    torch.testing.assert_close(auto.weights, held.weights, rtol=1e-10, atol=1e-12)
    for a, b in zip(auto_grads, held_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_lean_with_features_is_auto_and_methods_needing_the_jacobian_refuse_it():
    torch.manual_seed(0)
    enc, heads = nn.Linear(6, 5), nn.ModuleList(nn.Linear(5, 1) for _ in range(3))
    x = torch.randn(4, 6)

    def losses():
        z = enc(x)
        return z, _losses(z, heads)

    z, ls = losses()
    lean = mtlopt.backward(ls, mtlopt.MGDA(), features=z, method="lean")
    z, ls = losses()
    auto = mtlopt.backward(ls, mtlopt.MGDA(), features=z)
    torch.testing.assert_close(lean.weights, auto.weights)
    z, ls = losses()
    with pytest.raises(ValueError, match="ExcessMTL reads the per-task gradients themselves"):
        mtlopt.backward(ls, mtlopt.ExcessMTL(), shared_params=enc, method="lean")
    with pytest.raises(
        ValueError, match="unknown method 'thin'; expected one of 'auto', 'batched', 'loop', 'lean'"
    ):
        mtlopt.backward(ls, mtlopt.MGDA(), shared_params=enc, method="thin")  # type: ignore[arg-type]


def test_jacobian_fits_compares_the_jacobian_with_the_free_memory(monkeypatch):
    params = [torch.zeros(250, dtype=torch.float32)]  # 1000 bytes per task
    monkeypatch.setattr(lean_gramian, "_free_bytes", lambda device: 10_000)
    assert lean_gramian.jacobian_fits(5, params)
    assert not lean_gramian.jacobian_fits(6, params)
    assert (
        lean_gramian._free_bytes(torch.device("cpu")) is None
        or lean_gramian._free_bytes(torch.device("cpu")) > 0
    )


@pytest.mark.cpu_only(reason="gloo DDP: processes on the CPU over loopback")
def test_under_two_ranks_of_unequal_batches_lean_is_the_held_jacobians_step(tmp_path):
    """Ranks of 3 and 5 rows: the lean Gramian, weights and .grad equal the held Jacobian's (both
    averaged over the ranks); "auto" takes the lean path on both ranks when one lacks the memory.
    (The equivalence with one process on the global batch: tests/test_distributed.py, lean-*.)"""
    import torch.multiprocessing as mp

    import ddp_cases

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(ddp_cases.lean_unequal_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"unequal{r}.pt", weights_only=True) for r in range(2)]
    for out in ranks:
        assert not out["loop"]["lean"] and out["lean"]["lean"] and out["auto"]["lean"]
        for how in ("lean", "auto"):
            for key in ("gramian", "weights", "grads"):
                torch.testing.assert_close(out[how][key], out["loop"][key], rtol=1e-10, atol=1e-13)
    for key in ("gramian", "weights", "grads"):
        assert torch.equal(ranks[0]["lean"][key], ranks[1]["lean"][key])


@pytest.mark.parametrize(
    ("factory", "batches"),
    [
        (lambda: mtlopt.MoDo(0.5, 0.1), 2),
        (lambda: mtlopt.MoDo(0.5, 0.1, batches=3, head_batches="all", head_weighting="weighted"), 3),
        (lambda: mtlopt.SDMGrad(head_batches="all", reduction="sum"), 3),
        (lambda: mtlopt.SDMGrad(objectives=2, seed=1), 3),
    ],
    ids=["modo", "modo-3", "sdmgrad", "sdmgrad-os"],
)
def test_the_cross_gramian_of_two_batches_is_lean_too(float64, factory, batches):
    """MoDo and SDMGrad read J_i J_jᵀ of two batches: the lean path factors the weights both batches
    can factor and gives the held path's weights and .grad."""

    def step(method):
        torch.manual_seed(0)
        enc, heads = Mixed(), nn.ModuleList(nn.Linear(50, 1) for _ in range(4))
        sizes = [2, 3, 2][:batches]  # batches of other sizes: other N per layer
        all_losses = [_losses(enc(torch.randn(n, 3, 8, 8)), heads) for n in sizes]
        result = mtlopt.backward(
            all_losses[0], factory(), shared_params=enc, extra_losses=all_losses[1:], method=method
        )
        return result, [p.grad.clone() for p in [*enc.parameters(), *heads.parameters()]]

    held, held_grads = step("loop")
    lean, lean_grads = step("lean")
    assert lean.diagnostics["lean_gramian"]["factored_params"]
    torch.testing.assert_close(lean.gramian, held.gramian, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(lean.weights, held.weights, rtol=1e-10, atol=1e-12)
    for a, b in zip(lean_grads, held_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16-scaler"])
def test_under_autocast_the_lean_products_are_in_the_weights_dtype(dtype):
    """Autocast gives half-precision output gradients and layer inputs; the lean path multiplies them
    in the weights' float32 (as the held Jacobian's rows are), so a GradScaler's 2^16 does not
    overflow and the Gramian is the held path's up to the half-precision inputs."""

    def step(method, scale=2.0**8):
        torch.manual_seed(0)
        enc, heads = Mixed(), nn.ModuleList(nn.Linear(50, 1) for _ in range(3))
        scaler = torch.amp.GradScaler("cpu", init_scale=scale) if dtype == torch.float16 else None
        with torch.autocast("cpu", dtype=dtype):
            losses = [loss.float() for loss in _losses(enc(torch.randn(2, 3, 8, 8)), heads)]
        return mtlopt.backward(losses, mtlopt.MGDA(), shared_params=enc, method=method, scaler=scaler)

    lean, held = step("lean"), step("loop")
    factored = set(lean.diagnostics["lean_gramian"]["factored_params"])
    assert factored == {"c2.weight", "c3.weight", "fc1.weight", "fc2.weight", "W"}  # through autocast's casts
    if dtype == torch.float16:  # a scale at which float16 output gradients overflow: both skip the step
        assert step("lean", 2.0**40).diagnostics["skipped"] == step("loop", 2.0**40).diagnostics["skipped"]
    assert "skipped" not in lean.diagnostics and bool(torch.isfinite(lean.gramian).all())
    torch.testing.assert_close(
        lean.gramian, held.gramian, rtol=5e-2, atol=5e-2 * float(held.gramian.abs().max())
    )


class OtherForms(nn.Module):
    """A reflect-padded convolution, a Linear on a (B, T, D) sequence, one on a transposed (strided)
    one, a channels-last input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.seq = nn.Linear(24, 40)
        self.strided = nn.Linear(40, 30, bias=False)

    def forward(self, x):
        h = F.relu(self.conv(x.contiguous(memory_format=torch.channels_last)))  # (B, 8, 3, 3)
        h = h.flatten(2).transpose(1, 2).reshape(x.shape[0], 3, 24)  # (B, T=3, 24)
        h = F.relu(self.seq(h))  # (B, 3, 40)
        return self.strided(h.transpose(1, 2).transpose(1, 2)).mean(dim=1)  # (B, 30)


def test_other_layer_forms_are_factored_or_left_to_rows_and_stay_exact(float64):
    torch.manual_seed(2)
    enc, heads = OtherForms(), nn.ModuleList(nn.Linear(30, 1) for _ in range(4))
    losses = _losses(enc(torch.randn(2, 3, 3, 3)), heads)
    shared = list(enc.parameters())
    lean = LeanJacobian.compute(losses, shared, chunks=2)
    assert lean.factored_inputs == [0, 2, 4]  # conv (N = 18 < D = 27), seq (N = 6 < 24), strided (6 < 40)
    full = Jacobian.compute(losses, shared, method="loop")
    torch.testing.assert_close(lean.gramian(), full.gramian(), rtol=1e-12, atol=1e-14)
    w = torch.rand(4)
    for a, b in zip(lean.combine(w), full.combine(w), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
