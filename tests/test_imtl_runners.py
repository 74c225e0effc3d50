"""The benchmark runners of IMTL-G and IMTL (``imtl-g``, ``imtl``): where their gradients are taken,
the learned scales in the optimizer, exact resume, and one epoch under bf16 / fp16 + GradScaler."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import mtlopt
from mtlopt.benchmarks.cli import main
from mtlopt.benchmarks.methods import METHODS, OptimizerSettings, get_method
from mtlopt.benchmarks.models import SenerLeNet
from test_loss_runners import TwoDigits, batches, train

SMALL = ["--benchmark", "multimnist", "--max-sources", "400", "--threads", "1", "--quiet", "--batch-size", "64"]  # fmt: skip


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MTLOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def make_runner(name: str, options: dict | None = None):
    runner = get_method(name)(options or {}, num_tasks=2, seed=3)
    runner.steps_per_epoch = 2
    torch.manual_seed(0)
    runner.build(SenerLeNet, OptimizerSettings("sgd", lr=0.05), total_steps=12, tasks=TwoDigits())
    return runner


def test_both_runners_are_registered_with_features_by_default():
    assert {"imtl-g", "imtl"} <= set(METHODS)
    for name, cls in (("imtl-g", mtlopt.IMTLG), ("imtl", mtlopt.IMTL)):
        runner = make_runner(name)
        assert isinstance(runner._weighting, cls)
        z = torch.zeros(1)
        assert runner.backward_kwargs(z)["features"] is z
        shared = make_runner(name, {"gradients": "shared", "feature-batch": "sum", "solve": "gramian"})
        assert shared.backward_kwargs(z) == {"shared_params": shared.model.encoder}
        assert shared._weighting.feature_batch == "sum" and shared._weighting.solve == "gramian"


@pytest.mark.parametrize("name", ["imtl-g", "imtl"])
@pytest.mark.parametrize("on", ["features", "shared"])
def test_runner_state_resumes_exactly_from_a_mid_epoch_checkpoint(name, on):
    data = batches(6)
    runner = make_runner(name, {"gradients": on})
    train(runner, data, 0, 3)
    saved = copy.deepcopy(runner.state_dict())
    logged = train(runner, data, 3, 6)
    assert all(torch.isfinite(v).all() for entry in logged for v in entry.values())
    for entry in logged:
        assert float(entry["weights"].sum()) == pytest.approx(1.0)
    resumed = make_runner(name, {"gradients": on})
    resumed.load_state_dict(saved)
    again = train(resumed, data, 3, 6)
    for a, b in zip(runner.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for first, second in zip(logged, again, strict=True):
        assert torch.equal(first["weights"], second["weights"])


def test_imtl_runner_trains_its_scales_without_weight_decay():
    runner = make_runner("imtl")
    scales = runner._weighting.scales
    assert any(p is scales for p in runner.optimizer.param_groups[1]["params"])
    assert runner.optimizer.param_groups[1]["weight_decay"] == 0.0
    train(runner, batches(2), 0, 2)
    assert not torch.equal(scales.detach(), torch.zeros(2))


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_both_train_one_epoch_under_mixed_precision(tmp_path, amp):
    """bf16 autocast, and fp16 autocast with a GradScaler (the Gramian is unscaled before IMTL-G)."""
    out = tmp_path / amp
    methods = "imtl-g,imtl,imtl-g[gradients=shared]"
    args = ["compare", *SMALL, "--methods", methods, "--amp", amp, "--seeds", "1", "--epochs", "1"]
    assert main([*args, "--out", str(out)]) == 0
    paths = sorted((out / "runs").glob("*/seed0/result.json"))
    assert len(paths) == 3
    for path in paths:
        result = json.loads(path.read_text())
        assert result["environment"]["amp"] == amp
        for values in result["final"]["test"].values():
            assert all(math.isfinite(v) for v in values.values()), (path, values)
