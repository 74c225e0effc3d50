"""The benchmark runners of the loss-level methods (dwa, rlw, gls, si, imtl-l, famo, stch): their loop
hooks (epoch boundaries, FAMO's post-step update) and exact resume from a mid-epoch checkpoint."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

import mtlopt
from mtlopt.benchmarks.methods import METHODS, OptimizerSettings, get_method
from mtlopt.benchmarks.models import SenerLeNet

NAMES = ["dwa", "rlw", "gls", "si", "imtl-l", "famo", "stch"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MTLOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


class TwoDigits:
    task_types = ("classification", "classification")

    def task_loss(self, task, output, targets):
        return F.cross_entropy(output, targets[:, task])

    def losses(self, outputs, targets):
        return [self.task_loss(t, o, targets) for t, o in enumerate(outputs)]


def batches(count: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8, 2), generator=g)) for _ in range(count)]  # fmt: skip


def make_runner(name: str, options: dict | None = None):
    runner = get_method(name)(options or {}, num_tasks=2, seed=3)
    runner.steps_per_epoch = 2
    torch.manual_seed(0)
    runner.build(SenerLeNet, OptimizerSettings("sgd", lr=0.05), total_steps=12, tasks=TwoDigits())
    return runner


OPTIONS = {"stch": {"warmup-epochs": 0}}  # the nadir epoch is epoch 0: STCH proper from epoch 1


def train(runner, data, start: int, stop: int):
    """Steps start..stop-1, two per epoch, calling the epoch hook as the trainer does."""
    logged = []
    for step in range(start, stop):
        if step % 2 == 0:
            runner.on_epoch_start(step // 2)
        logged.append(runner.train_step(*data[step]))
    return logged


def test_every_loss_method_is_registered():
    assert set(NAMES) <= set(METHODS)


@pytest.mark.parametrize("name", NAMES)
def test_runner_state_resumes_exactly_from_a_mid_epoch_checkpoint(name):
    """DWA's epoch sums and history, FAMO's logits and Adam moments, RLW's generator, STCH's nadir
    point, IMTL-L's scales: the continuation after a mid-epoch checkpoint is bitwise the same."""
    data = batches(10)
    runner = make_runner(name, OPTIONS.get(name))
    train(runner, data, 0, 5)  # epoch 2, one step in
    saved = copy.deepcopy(runner.state_dict())
    logged = train(runner, data, 5, 10)
    assert all(torch.isfinite(v).all() for entry in logged for v in entry.values())
    resumed = make_runner(name, OPTIONS.get(name))
    resumed.load_state_dict(saved)
    again = train(resumed, data, 5, 10)
    for a, b in zip(runner.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for first, second in zip(logged, again, strict=True):
        assert torch.equal(first["weights"], second["weights"])


def test_dwa_runner_closes_each_epoch_once_and_weighs_from_epoch_two():
    data = batches(8)
    runner = make_runner("dwa")
    logged = train(runner, data, 0, 8)
    assert runner._weighting.epoch == 3
    weights = torch.stack([entry["weights"] for entry in logged])
    assert torch.equal(weights[:4], torch.ones(4, 2, dtype=torch.float64))
    assert not torch.equal(weights[4:], torch.ones(4, 2, dtype=torch.float64))
    torch.testing.assert_close(weights.sum(1), torch.full((8,), 2.0, dtype=torch.float64))
    runner.on_epoch_start(3)  # called again for an epoch already started: nothing changes
    assert runner._weighting.epoch == 3


def test_famo_runner_updates_its_logits_after_every_step():
    data = batches(3)
    runner = make_runner("famo")
    famo = runner._weighting
    assert isinstance(famo, mtlopt.FAMO)
    before = famo.logits.detach().clone()
    train(runner, data, 0, 3)
    assert famo.state_dict()["previous"] is None  # every step's update was made
    assert not torch.equal(before, famo.logits.detach())
    assert famo.state_dict()["optimizer"]["state"][0]["step"] == 3


def test_imtl_l_runner_trains_its_scales_without_weight_decay():
    runner = make_runner("imtl-l")
    scales = runner._weighting.scales
    assert any(p is scales for p in runner.optimizer.param_groups[1]["params"])
    assert runner.optimizer.param_groups[1]["weight_decay"] == 0.0
    train(runner, batches(2), 0, 2)
    assert not torch.equal(scales.detach(), torch.zeros(2))


@pytest.mark.parametrize("amp", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])  # fp16 on CPU: ~1 min
def test_every_loss_method_trains_one_epoch_under_mixed_precision(tmp_path, amp):
    """bf16 autocast, and fp16 autocast with a GradScaler (FAMO's update reads the float16 losses)."""
    import json
    import math

    from mtlopt.benchmarks.cli import main

    small = ["--benchmark", "multimnist", "--max-sources", "1000", "--threads", "1", "--quiet", "--batch-size", "64"]  # fmt: skip
    out = tmp_path / amp
    args = ["compare", *small, "--methods", ",".join(NAMES), "--amp", amp, "--seeds", "1", "--epochs", "1"]
    assert main([*args, "--warmup-epochs", "0", "--out", str(out)]) == 0
    for name in NAMES:
        result = json.loads((out / "runs" / name / "seed0" / "result.json").read_text())
        assert result["environment"]["amp"] == amp
        for values in result["final"]["test"].values():
            assert all(math.isfinite(v) for v in values.values()), (name, values)
