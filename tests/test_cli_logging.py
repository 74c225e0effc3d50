"""Logging where users look (issue 20, item 4): every training step's task weights and losses in
``DIR/steps.npz``, consistent with the epoch means of ``history`` and kept across an interruption and an
extension without duplicates; TensorBoard scalars with ``--tensorboard`` (read back with TensorBoard's
EventAccumulator, skipped when the package is missing), resumed without duplicated points, and a
one-line error when the package is missing."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlopt.benchmarks.cli import main
from mtlopt.benchmarks.trainer import read_steps

# 200 source images per split, batch 64: 4 steps per epoch.
TINY = ["--benchmark", "multimnist", "--max-sources", "200", "--threads", "1", "--quiet", "--batch-size", "64"]  # fmt: skip
STEPS = 4


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MTLOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def no_plots(monkeypatch):
    """Skip the figures (most of a summary's time); these tests read the event files only."""
    import mtlopt.benchmarks.plots as plots
    import mtlopt.benchmarks.report as report

    for name in ("plot_learning_curves", "plot_task_pair", "plot_balance", "plot_hypervolume", "plot_front"):
        monkeypatch.setattr(report, name, lambda *args, **kwargs: None, raising=False)
        monkeypatch.setattr(plots, name, lambda *args, **kwargs: None, raising=False)


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every tag's (step, value) points as TensorBoard shows them (purged points dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def check_means(out: Path, history: list[dict]) -> dict[str, np.ndarray]:
    """Each epoch's mean of the per-step rows (NaN rows left out) is the history's value."""
    columns = read_steps(out / "steps.npz")
    for record in history:
        rows = columns["epoch"] == record["epoch"]
        assert list(columns["step"][rows]) == list(range(1, STEPS + 1))
        for key, mean in record["train"].items():
            values = columns[key][rows].astype(np.float64)
            skipped = int((~np.isfinite(values).all(axis=1)).sum())
            assert skipped == record.get("train_steps_left_out", {}).get(key, 0), key
            np.testing.assert_allclose(np.nanmean(values, axis=0), mean, rtol=1e-12, atol=0)
    return columns


def interrupted_then_extended(out: Path, args: list[str]) -> None:
    """A 2-epoch run, extended to 3 epochs; then that extension is undone as by an interruption after
    epoch 3's rows and scalars were written but before its checkpoint (the epoch-2 checkpoint back, no
    result.json), and run again."""
    assert main([*args, "--epochs", "2", "--out", str(out)]) == 0
    shutil.copy(out / "checkpoint.pt", out.parent / "checkpoint-2.pt")
    assert main([*args, "--epochs", "3", "--out", str(out)]) == 0
    shutil.copy(out.parent / "checkpoint-2.pt", out / "checkpoint.pt")
    (out / "result.json").unlink()
    assert read_steps(out)["epoch"].max() == 3  # the rows of the epoch that the checkpoint lacks
    assert main([*args, "--epochs", "3", "--out", str(out)]) == 0


def test_per_step_record_equals_the_history_and_an_uninterrupted_run(tmp_path):
    args = ["train", *TINY, "--method", "mgda-ub"]
    assert main([*args, "--epochs", "3", "--out", str(tmp_path / "reference")]) == 0
    out = tmp_path / "run"
    interrupted_then_extended(out, args)
    result = json.loads((out / "result.json").read_text())
    columns = check_means(out, result["history"])
    assert result["steps"] == {
        "file": "steps.npz",
        "rows": 3 * STEPS,
        "steps_per_epoch": STEPS,
        "epochs": [1, 3],
        "columns": {"loss": [2], "weights": [2], "weight_sum": [1]},
    }
    assert list(columns["epoch"]) == [e for e in (1, 2, 3) for _ in range(STEPS)]  # no duplicated rows
    reference = read_steps(tmp_path / "reference")
    assert set(columns) == set(reference)
    for key in set(columns) - {"seconds"}:  # every step's weights and losses as in the uninterrupted run
        np.testing.assert_array_equal(columns[key], reference[key], err_msg=key)
    np.testing.assert_allclose(columns["weight_sum"], 1.0, rtol=1e-12)
    assert (columns["seconds"] > 0).all()


def test_steps_the_grad_scaler_skipped_are_nan_and_left_out_of_the_means(tmp_path, monkeypatch):
    # scales 2^40 and 2^30 overflow fp16 activations' gradients (the scaler skips those steps and
    # divides the scale by 2^10), 2^20 does not: the first two steps are skipped, the later ones train
    scaler = functools.partial(
        torch.amp.GradScaler, init_scale=2.0**40, backoff_factor=2.0**-10, growth_interval=10_000
    )
    monkeypatch.setattr(torch.amp, "GradScaler", scaler)
    out = tmp_path / "fp16"
    args = ["train", *TINY, "--method", "mgda", "--amp", "fp16", "--epochs", "2", "--out", str(out)]
    assert main(args) == 0
    history = json.loads((out / "result.json").read_text())["history"]
    skipped = history[0]["train_steps_left_out"]["weights"]
    assert skipped == 2, skipped
    assert "train_steps_left_out" not in history[1]  # the scale found, no step of epoch 2 skipped
    columns = check_means(out, history)
    assert np.isfinite(columns["loss"]).all()


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_scalars_per_epoch_and_step_without_duplicates_after_resuming(tmp_path):
    args = ["train", *TINY, "--method", "mgda-ub", "--tensorboard", "--tensorboard-steps"]
    out = tmp_path / "run"
    interrupted_then_extended(out, args)
    result = json.loads((out / "result.json").read_text())
    assert result["tensorboard"] == str(out / "tensorboard")
    epochs = scalars(out / "tensorboard")
    for task in ("left", "right"):
        for tag in (f"train/loss/{task}", f"train/weights/{task}", f"test/{task}/accuracy"):
            assert [step for step, _ in epochs[tag]] == [1, 2, 3], tag  # the purged epoch 3 once
    for record in result["history"]:
        e = record["epoch"]
        for i, task in enumerate(("left", "right")):
            assert epochs[f"train/weights/{task}"][e - 1][1] == pytest.approx(record["train"]["weights"][i])
            assert epochs[f"val/{task}/cross_entropy"][e - 1][1] == pytest.approx(
                record["val"][task]["cross_entropy"]
            )
        assert epochs["train/weight_sum"][e - 1][1] == pytest.approx(1.0)
        assert epochs["lr"][e - 1][1] == pytest.approx(record["lr"])
    steps = scalars(out / "tensorboard" / "steps")
    columns = read_steps(out)
    for i, task in enumerate(("left", "right")):
        assert [step for step, _ in steps[f"step/weights/{task}"]] == list(range(1, 3 * STEPS + 1))
        np.testing.assert_allclose(
            [value for _, value in steps[f"step/weights/{task}"]], columns["weights"][:, i], rtol=1e-6
        )


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_for_compare_and_pareto_runs(tmp_path, no_plots):
    out, board = tmp_path / "cmp", tmp_path / "board"
    common = [*TINY, "--epochs", "1"]
    assert main(["compare", *common, "--methods", "ew,mgda", "--seeds", "1", "--out", str(out)]) == 0
    assert not (board / "ew").exists()
    # asked again with --tensorboard DIR: the finished runs are not trained again, their curves are written
    argv = ["compare", *common, "--methods", "ew,mgda", "--seeds", "1", "--out", str(out)]
    assert main([*argv, "--tensorboard", str(board)]) == 0
    for method in ("ew", "mgda"):
        logged = scalars(board / method / "seed0")
        assert [step for step, _ in logged["train/weights/left"]] == [1], method
    assert main([*argv, "--tensorboard", str(board)]) == 0  # logged already: no second event file
    assert len(list((board / "ew" / "seed0").glob("events.out.tfevents.*"))) == 1
    pareto = tmp_path / "pareto"
    argv = ["pareto", *common, "--method", "ls-sweep", "--num-models", "2", "--out", str(pareto)]
    assert main([*argv, "--tensorboard"]) == 0
    result = json.loads((pareto / "result.json").read_text())
    logged = scalars(pareto / "tensorboard")
    assert logged["test/hypervolume"] == [(1, pytest.approx(result["history"][0]["test_hypervolume"]))]
    member = result["history"][0]["test_members"][1]["right"]["cross_entropy"]
    assert logged["test_members/member1/right/cross_entropy"] == [(1, pytest.approx(member))]


def test_tensorboard_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    out = tmp_path / "run"
    assert main(["train", *TINY, "--method", "ew", "--epochs", "1", "--out", str(out), "--tensorboard"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mtlopt: error")]
    assert len(lines) == 1
    assert "--tensorboard needs tensorboard" in lines[0] and 'pip install "mtlopt[tensorboard]"' in lines[0]
    assert not (out / "result.json").exists() and not (out / "steps.npz").exists()


def test_tensorboard_steps_needs_tensorboard(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--method", "ew", "--out", str(out), "--tensorboard-steps"]) == 2
    assert "--tensorboard-steps logs into the --tensorboard directory" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.cpu_only("two gloo processes on the CPU")
@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed")
def test_under_torchrun_rank_0_alone_writes_the_event_files_and_the_steps(tmp_path):
    env = dict(os.environ, MTLOPT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out = tmp_path / "two"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ["-m", "mtlopt", "train", *TINY, "--method", "mgda-ub", "--epochs", "2", "--tensorboard"]
    run = subprocess.run(
        [sys.executable, *launcher, *args, "--tensorboard-steps", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert len(list((out / "tensorboard" / "steps").glob("events.out.tfevents.*"))) == 1
    result = json.loads((out / "result.json").read_text())
    assert result["environment"]["processes"] == 2
    check_means(out, result["history"])
    assert [step for step, _ in scalars(out / "tensorboard")["train/weights/left"]] == [1, 2]
