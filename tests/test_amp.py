"""Mixed precision: the solvers read unscaled gradients, skipped steps on overflow, every method trains."""

from __future__ import annotations

import json

import pytest
import torch

import mtlopt
from ddp_cases import Net, batches
from mtlopt.benchmarks.cli import main

SMALL = ["--benchmark", "multimnist", "--max-sources", "400", "--threads", "1", "--quiet", "--batch-size", "64"]  # fmt: skip


@pytest.mark.parametrize("mode", ["shared", "features"])
def test_solvers_see_unscaled_gradients(mode):
    """With a GradScaler (scale 2^16) the Gramian and the weights equal those of an unscaled step, and the
    written gradients are the scaled ones, which scaler.step() unscales."""
    x, y = batches()[0]
    results, grads = [], []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**16)):
        model = Net()
        losses, z = model.losses(x, y)
        kwargs = {"shared_params": model.encoder} if mode == "shared" else {"features": z}
        results.append(mtlopt.backward(losses, mtlopt.MGDA(normalization="l2"), scaler=scaler, **kwargs))
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(results[1].gramian, results[0].gramian, rtol=1e-10, atol=0)
    torch.testing.assert_close(results[1].weights, results[0].weights, rtol=1e-10, atol=1e-12)
    for scaled, plain in zip(grads[1], grads[0]):
        torch.testing.assert_close(scaled, plain * 2.0**16, rtol=1e-10, atol=1e-12)


def test_overflow_makes_the_scaler_skip_the_step():
    model = Net().float()
    x, y = (t.float() for t in batches()[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=3e38)  # float32 overflows at once
    before = [p.detach().clone() for p in model.parameters()]
    losses, _ = model.losses(x, y)
    result = mtlopt.backward(losses, mtlopt.MGDA(), shared_params=model.encoder, scaler=scaler)
    scaler.step(optimizer)
    scaler.update()
    assert result.diagnostics.get("skipped") and scaler.get_scale() < 3e38
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("amp", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])  # fp16 on CPU: ~1 min
def test_every_method_trains_without_nan_under_autocast(tmp_path, amp):
    methods = (
        "ew,stl,mgda,mgda-ub,grid,uw,gradnorm,pcgrad,alternating,mao,"
        "ls-sweep[num-models=2],mtgd[num-models=2],pmtl[num-models=2],epo[num-models=2]"
    )
    out = tmp_path / amp
    assert (
        main(
            [
                "compare",
                *SMALL,
                "--methods",
                methods,
                "--amp",
                amp,
                "--seeds",
                "1",
                "--epochs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert f"mixed precision {amp}" in (out / "summary.md").read_text()
    paths = list((out / "runs").glob("*/seed0/result.json"))
    ran = {path.parent.parent.name.split("_")[0] for path in paths}  # grid: one run per grid point
    assert ran == {item.split("[")[0] for item in methods.split(",")}
    left_out: dict[str, int] = {}
    for path in paths:
        result = json.loads(path.read_text())
        assert result["environment"]["amp"] == amp and result["identity"]["amp"] == amp
        members = result["final"].get("test_members") or [result["final"]["test"]]
        for member in members:
            for values in member.values():
                assert all(v == v and abs(v) < float("inf") for v in values.values()), (path, values)
        for record in result["history"]:  # a step the scaler skipped is left out of the epoch's means
            for key, values in record["train"].items():
                assert all(v == v and abs(v) < float("inf") for v in values), (path, key, values)
            left_out.update(record.get("train_steps_left_out", {}))
    if amp == "fp16":  # fp16's first steps overflow at GradScaler's initial scale: the case is exercised
        assert "weights" in left_out


def test_gradnorm_under_a_grad_scaler_takes_the_unscaled_update():
    """GradNorm reads its Gramian through the shared per-task step: scaled losses, unscaled Gramian, so its
    weights, its own update of w and the model's update equal those of the fp32 run without a scaler."""
    runs = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**12)):
        model = Net()
        gradnorm = mtlopt.GradNorm(3, model.encoder[2].parameters(), alpha=1.5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        weights = []
        for x, y in batches():
            optimizer.zero_grad()
            losses, _ = model.losses(x, y)
            weights.append(mtlopt.backward(losses, gradnorm, scaler=scaler).weights)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
        runs.append(
            (torch.stack(weights), gradnorm.weights.clone(), [p.detach().clone() for p in model.parameters()])
        )
    (w0, g0, p0), (w1, g1, p1) = runs
    torch.testing.assert_close(w1, w0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-12)
    assert not torch.equal(g0, torch.ones(3, dtype=torch.float64))
    for a, b in zip(p1, p0):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradnorm_skips_an_overflowing_step_without_updating_its_weights():
    model = Net().float()
    x, y = (t.float() for t in batches()[0])
    gradnorm = mtlopt.GradNorm(3, model.encoder[2].parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=3e38)
    losses, _ = model.losses(x, y)
    result = mtlopt.backward(losses, gradnorm, scaler=scaler)
    assert result.diagnostics.get("skipped") and gradnorm.step_count == 0
    assert gradnorm.weights.tolist() == [1.0, 1.0, 1.0]


def test_backward_inside_float16_autocast_keeps_the_jacobian_products_in_their_dtype():
    """Called inside an fp16 autocast region, J Jᵀ of a GradScaler-scaled (finite) Jacobian must not
    be an fp16 matmul: it overflowed and every step was skipped as non-finite (seen before the fix)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 64))
    heads = [torch.nn.Parameter(torch.randn(64)) for _ in range(2)]
    x = torch.randn(32, 64)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    with torch.autocast("cpu", dtype=torch.float16):
        z = x @ w
        losses = [((z @ h).float() ** 2).mean() for h in heads]
        result = mtlopt.backward(losses, mtlopt.MGDA(), shared_params=[w], scaler=scaler)
    assert "skipped" not in result.diagnostics, result.diagnostics
    with torch.autocast("cpu", dtype=torch.float16):  # the same step, backward outside the region
        z = x @ w
        again = [((z @ h).float() ** 2).mean() for h in heads]
    reference = mtlopt.backward(again, mtlopt.MGDA(), shared_params=[w], scaler=scaler)
    torch.testing.assert_close(result.weights, reference.weights, rtol=1e-6, atol=1e-9)
    assert torch.isfinite(result.weights).all() and abs(float(result.weights.sum()) - 1.0) < 1e-9
    assert w.grad is not None and torch.isfinite(w.grad).all()
