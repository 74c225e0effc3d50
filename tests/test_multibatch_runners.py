"""The benchmark runners of the methods that read several batches per step (modo, sdmgrad): the trainer
draws the extra batches the method declares (``batches_per_step``), each from a pass of its own over
the training set, and the runner's state resumes exactly."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from torch.nn import functional as F

from mtlopt.benchmarks import trainer
from mtlopt.benchmarks.cli import main
from mtlopt.benchmarks.methods import METHODS, OptimizerSettings, get_method
from mtlopt.benchmarks.models import SenerLeNet


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
    torch.manual_seed(0)
    runner.build(SenerLeNet, OptimizerSettings("sgd", lr=0.05), total_steps=12, tasks=TwoDigits())
    return runner


def train(runner, data, start: int, stop: int):
    n = runner.batches_per_step
    return [runner.train_step_with_extra(*data[s], data[s + 1 : s + n]) for s in range(start, stop)]


@pytest.mark.parametrize(
    ("name", "options", "count"),
    [("modo", {}, 2), ("modo", {"batches": 3}, 3), ("sdmgrad", {}, 3), ("sdmgrad", {"objectives": 1}, 3)],
)
def test_the_runners_declare_their_batches_and_resume_exactly(name, options, count):
    assert name in METHODS
    data = batches(12)
    runner = make_runner(name, options)
    assert runner.batches_per_step == count
    train(runner, data, 0, 3)
    saved = copy.deepcopy(runner.state_dict())
    logged = train(runner, data, 3, 6)
    assert all(torch.isfinite(v).all() for entry in logged for v in entry.values())
    resumed = make_runner(name, options)
    resumed.load_state_dict(saved)
    again = train(resumed, data, 3, 6)
    for a, b in zip(runner.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for first, second in zip(logged, again, strict=True):
        assert torch.equal(first["weights"], second["weights"])
    with pytest.raises(ValueError, match=r"reads \d independent batches per step"):
        runner.train_step(*data[0])  # without its extra batches


def counted_draws(monkeypatch) -> list[torch.Tensor]:
    """The index of every training batch the trainer draws (wrapping the benchmark's data)."""
    draws: list[torch.Tensor] = []
    real = trainer.get_benchmark

    def counting(name):
        benchmark = real(name)

        def load(protocol, options):
            data = benchmark.load(protocol, options)  # may be a cached object: patched, then restored
            batch = type(data).batch.__get__(data)

            def counted(split, index, device):
                if split == "train":
                    draws.append(index.clone())
                return batch(split, index, device)

            monkeypatch.setattr(data, "batch", counted)
            return data

        return dataclasses.replace(benchmark, load=load)

    monkeypatch.setattr(trainer, "get_benchmark", counting)
    return draws


def test_a_two_step_run_of_modo_draws_its_extra_batches_from_passes_of_their_own(tmp_path, monkeypatch):
    draws = counted_draws(monkeypatch)
    small = [
        "--benchmark",
        "multimnist",
        "--max-sources",
        "1000",
        "--threads",
        "1",
        "--quiet",
    ]  # test_cli.py's data (one cache)
    args = ["train", *small, "--batch-size", "512", "--epochs", "1"]  # 2 steps
    assert main([*args, "--method", "modo", "--batches", "3", "--out", str(tmp_path / "modo")]) == 0
    result = json.loads((tmp_path / "modo" / "result.json").read_text())
    assert result["time_per_step_ms"]["steps"] == 2
    assert len(draws) == 6  # 2 steps × 3 batches
    passes = [torch.cat([draws[3 * s + p] for s in range(2)]) for p in range(3)]
    size = passes[0].numel()
    for order in passes:  # each pass covers the training set once, in an order of its own
        assert torch.equal(order.sort().values, torch.arange(size))
    assert not torch.equal(passes[0], passes[1]) and not torch.equal(passes[1], passes[2])
    # the step's own batches are those of any method's run (EW's): the extra passes leave that order alone
    own = torch.randperm(size, generator=torch.Generator().manual_seed(trainer._epoch_seed(0, 0)))
    assert torch.equal(passes[0], own)


def test_the_speed_rows_run_a_step_on_the_batch_taken_again_as_the_extra_ones():
    from mtlopt.benchmarks import speed

    config = speed.SpeedConfig(
        models=("lenet",),
        tasks={"lenet": (2,)},
        batch_sizes={"lenet": (4,)},
        methods=("ew", "modo", "sdmgrad"),
        peers=(),
        repeats=1,
        min_rounds=1,
        steps=1,
        warmup=1,
        budget=1.0,
        memory=False,
        solver_tasks=(),
    )
    rows = speed.run_speed(config, log=lambda line: None).configs[0].rows
    for name in ("modo", "sdmgrad"):
        assert rows[name].status == "ok" and rows[name].ratio is not None, (name, rows[name].note)


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_both_train_one_epoch_without_nan_under_autocast(tmp_path, amp):
    """As tests/test_amp_gradient_methods.py for the other Gramian methods (slow: a CLI compare)."""
    from test_amp import SMALL

    out = tmp_path / amp
    methods = "modo,modo[batches=3],sdmgrad,sdmgrad[objectives=1]"
    args = [
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
    assert main(args) == 0
    paths = list((out / "runs").glob("*/seed0/result.json"))
    assert len(paths) == 4
    for path in paths:
        result = json.loads(path.read_text())
        assert result["environment"]["amp"] == amp
        for values in result["final"]["test"].values():
            assert all(v == v and abs(v) < float("inf") for v in values.values()), (path, values)
        for record in result["history"]:
            for key, values in record["train"].items():
                assert all(v == v and abs(v) < float("inf") for v in values), (path, key, values)
