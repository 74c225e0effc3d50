"""The command line's ordinary failures are one line each and lose nothing (issue 16, items 11-13):
a diverged run, an unusable ``--out``, a damaged checkpoint or result file, a bad numeric option."""

from __future__ import annotations

import builtins
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtlopt.benchmarks.cli import main

# 200 source images per split, batch 64: 4 steps per epoch, well under a second once the data is built.
TINY = ["--benchmark", "multimnist", "--max-sources", "200", "--threads", "1", "--quiet", "--batch-size", "64", "--epochs", "1"]  # fmt: skip
GRID_DIVERGES = "grid[task-weights=1e6,1e6]"  # at the default lr 0.05 the loss is NaN at step 3


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MTLOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def no_plots(monkeypatch):
    """Skip the figures where a test reads only the tables (drawing them is most of a summary's time)."""
    import mtlopt.benchmarks.report as report

    for name in ("plot_learning_curves", "plot_task_pair", "plot_balance", "plot_hypervolume", "plot_front"):
        monkeypatch.setattr(report, name, lambda *args, **kwargs: None)


def one_error_line(err: str) -> str:
    """stderr holds exactly one line, an ``mtlopt: error:`` one, and no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("mtlopt: error: "), lines
    return lines[0]


# --- item 11: divergence -------------------------------------------------------------------------------


def test_a_diverged_run_is_one_line_with_method_seed_epoch_step_and_a_hint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--method", "ew", "--lr", "1e6", "--seed", "1", "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "ew seed 1 diverged at epoch 1, step " in line and " of 4: " in line, line
    assert "non-finite loss for task 'left'" in line and "try a lower --lr (this run: 1e+06)" in line
    result = json.loads((out / "result.json").read_text())  # nothing is lost: the failure is recorded
    assert result["status"] == "failed" and result["label"] == "ew" and result["seed"] == 1
    failure = result["failure"]
    assert failure["kind"] == "diverged" and failure["epoch"] == 1 and 1 <= failure["step"] <= 4
    assert failure["steps_per_epoch"] == 4 and "non-finite loss" in failure["reason"]
    # Running it again reports the recorded failure (and how to retry) instead of training again.
    assert main(["train", *TINY, "--method", "ew", "--lr", "1e6", "--seed", "1", "--out", str(out)]) == 1
    again = one_error_line(capsys.readouterr().err)
    assert "ew seed 1 diverged at epoch 1" in again and f"recorded in {out / 'result.json'}" in again


def test_the_installed_command_prints_no_traceback_when_a_run_diverges(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    completed = subprocess.run(
        [sys.executable, "-m", "mtlopt", "train", *TINY, "--method", "ew", "--lr", "1e6", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )  # fmt: skip
    assert completed.returncode == 1, completed.stderr
    assert "ew seed 0 diverged at epoch 1, step" in one_error_line(completed.stderr)


def test_compare_records_a_diverged_method_and_goes_on_with_the_others(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--methods", f"{GRID_DIVERGES},ew,stl", "--seeds", "1", "--out", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("mtlopt: error:")]
    assert len(errors) == 2, err  # the diverged run, then the count at the end
    assert (
        f"{GRID_DIVERGES} seed 0 diverged at epoch 1" in errors[0]
        and "going on with the other runs" in errors[0]
    )
    assert "1 of 3 runs failed" in errors[1]
    failed = json.loads((out / "runs" / "grid_task-weights=1e6_1e6" / "seed0" / "result.json").read_text())
    assert failed["status"] == "failed" and "non-finite loss" in failed["failure"]["reason"]
    for name in ("ew", "stl"):  # the methods after it ran
        assert json.loads((out / "runs" / name / "seed0" / "result.json").read_text())["status"] == "finished"
    summary = (out / "summary.md").read_text()
    assert "## Failed runs" in summary and f"- `{GRID_DIVERGES}` seed 0: diverged at epoch 1, step" in summary
    tables = [part.split("\n## ")[0] for part in summary.split("## Epoch")[1:]]
    assert len(tables) == 3
    for table in tables:
        rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| `")}
        assert list(rows) == [f"| `{GRID_DIVERGES}`", "| `ew`", "| `stl`"]  # the order given to compare
        assert (
            rows[f"| `{GRID_DIVERGES}`"].count("| failed") >= 4
            and "0 (+1 failed)" in rows[f"| `{GRID_DIVERGES}`"]
        )
        assert "failed" not in rows["| `ew`"] and "failed" not in rows["| `stl`"]
        assert "+0.00" in rows["| `stl`"]  # Δm% vs stl still computed for the finished runs
    rows = list(csv.reader((out / "summary.csv").open()))
    assert [GRID_DIVERGES, "grid", '{"task-weights": [1000000.0, 1000000.0]}', "all", "all", "failed_runs", "1", "", "1"] in rows  # fmt: skip
    assert any(row[0] == "ew" and row[5] == "accuracy" for row in rows)
    # summarize reads the directory as it is; a second compare skips the finished runs and reports the failed one
    capsys.readouterr()
    assert main(["summarize", str(out), "--order", f"ew,{GRID_DIVERGES}"]) == 0
    assert "## Failed runs" in (out / "summary.md").read_text()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("already finished, skipping") == 2
    assert f"recorded in {out / 'runs' / 'grid_task-weights=1e6_1e6' / 'seed0' / 'result.json'}" in err


def test_a_method_with_some_seeds_failed_counts_them_and_averages_the_others(tmp_path, capsys, no_plots):
    out = tmp_path / "cmp"
    assert main(["compare", *TINY, "--methods", "ew", "--seeds", "2", "--out", str(out)]) == 0
    seed0, seed1 = (out / "runs" / "ew" / f"seed{seed}" / "result.json" for seed in (0, 1))
    result = json.loads(seed1.read_text())  # made as the trainer writes a run that diverged in epoch 1
    for key in ("final", "best_val", "time_per_step_ms", "train_seconds", "wall_seconds_this_session"):
        del result[key]
    result.update(status="failed", history=[], produces_set=False)
    result["failure"] = {"kind": "diverged", "reason": "non-finite loss", "epoch": 1, "step": 2, "steps_per_epoch": 4, "hint": "try a lower --lr"}  # fmt: skip
    seed1.write_text(json.dumps(result))
    capsys.readouterr()
    assert main(["summarize", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "- `ew` seed 1: diverged at epoch 1, step 2 of 4: non-finite loss; try a lower --lr" in summary
    row = next(line for line in summary.split("## Epoch")[1].splitlines() if line.startswith("| `ew`"))
    assert row.startswith("| `ew` | 1 (+1 failed) | ") and "failed |" not in row.split("(+1 failed)")[1]
    assert re.search(r"\| `ew` \| 1 \| [01] \| 1 \(\+1 failed\) \| ", summary)  # the hypervolume table
    # every run failed: still a summary, with every row marked
    seed0.write_text(seed1.read_text().replace('"seed": 1', '"seed": 0'))
    assert main(["summarize", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "2 run(s) failed" in summary and summary.count("| `ew` | 0 (+2 failed) | 1 | failed | failed") == 3
    assert "## Hypervolume" not in summary


# --- item 12: output folders, damaged checkpoints and result files -------------------------------------


def test_an_out_below_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    assert main(["train", *TINY, "--method", "ew", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--out {out}: {tmp_path / 'file'} is a file, not a directory; choose another --out" in line


def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    for command in (["train", *TINY, "--method", "ew"], ["compare", *TINY, "--methods", "ew"]):
        assert main([*command, "--out", str(out)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"--out {out} is a file, not a directory; choose another --out or delete that file" in line
    assert out.read_text() == "keep me"


def test_speed_checks_its_out_before_measuring(tmp_path, capsys):
    out = tmp_path / "speed.md"
    out.write_text("x")
    args = ["speed", "--out", str(out), "--models", "mlp", "--tasks", "2", "--methods", "ew", "--peers", "none", "--repeats", "1", "--min-rounds", "1", "--steps", "1", "--warmup", "1", "--solver-tasks", "none", "--no-memory"]  # fmt: skip
    assert main(args) == 2
    assert f"--out {out} is a file, not a directory" in one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root writes into read-only directories; test_an_unwritable_out_is_one_line_simulated covers it",
)
def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main(["train", *TINY, "--method", "ew", "--out", str(out)]) == 2
    finally:
        out.chmod(0o700)
    assert f"--out {out} is not writable" in one_error_line(capsys.readouterr().err)


def _refuse_writes_below(monkeypatch, folder: Path) -> None:
    """Simulate a read-only ``folder`` (tests run as root here): open() for writing below it raises."""
    real_open = builtins.open

    def guarded(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            if Path(file).resolve().is_relative_to(folder.resolve()):
                raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)


def test_an_unwritable_out_is_one_line_simulated(tmp_path, capsys, monkeypatch):
    out = tmp_path / "readonly"
    out.mkdir()
    _refuse_writes_below(monkeypatch, out)
    assert main(["train", *TINY, "--method", "ew", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert (
        f"--out {out} is not writable (Permission denied); choose another --out or make it writable" in line
    )
    assert not any(out.iterdir())


def test_summarize_into_an_unwritable_directory_is_one_line(tmp_path, capsys, monkeypatch, no_plots):
    out = tmp_path / "cmp"
    assert main(["compare", *TINY, "--methods", "ew", "--seeds", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    _refuse_writes_below(monkeypatch, out)
    assert main(["summarize", str(out)]) == 2
    assert "is not writable (Permission denied)" in one_error_line(capsys.readouterr().err)


def _truncated(path: Path) -> None:
    torch.save({"identity": {}, "epoch": 1, "runner": {"w": torch.randn(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: p.write_bytes(os.urandom(4096)), id="random-bytes"),
        pytest.param(_truncated, id="truncated"),
        pytest.param(lambda p: p.write_bytes(b"\x80\x02}q\x00."), id="a-plain-pickle"),
        pytest.param(lambda p: torch.save([1, 2, 3], p), id="another-torch-file"),
    ],
)
def test_a_damaged_checkpoint_is_one_line_naming_the_file_to_delete(tmp_path, capsys, damage):
    out = tmp_path / "run"
    out.mkdir()
    checkpoint = out / "checkpoint.pt"
    damage(checkpoint)
    assert main(["train", *TINY, "--method", "ew", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(checkpoint) in line and "delete it to start this run over from epoch 1" in line, line
    assert "weights_only" not in line and "Weights only" not in line


def test_a_checkpoint_of_another_layout_is_one_line(tmp_path, capsys):
    args = ["train", *TINY, "--method", "ew"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    state["runner"] = {"modules": []}  # e.g. written by another version of the code
    (tmp_path / "b").mkdir()
    torch.save(state, tmp_path / "b" / "checkpoint.pt")
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "b")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot resume from {tmp_path / 'b' / 'checkpoint.pt'}" in line and "delete it" in line


def test_a_damaged_result_file_is_one_line_naming_it(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text('{"format": 1, "ident')  # cut short
    assert main(["train", *TINY, "--method", "ew", "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{out / 'result.json'} cannot be read as a result file" in line and "delete it" in line
    cmp = tmp_path / "cmp"
    (cmp / "runs" / "ew" / "seed0").mkdir(parents=True)
    (cmp / "runs" / "ew" / "seed0" / "result.json").write_text("")
    assert main(["summarize", str(cmp)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{cmp / 'runs' / 'ew' / 'seed0' / 'result.json'} is not a readable result file" in line


# --- item 13: numeric options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--threads", "0", "an integer >= 1"),
        ("--threads", "-2", "an integer >= 1"),
        ("--threads", "two", "an integer >= 1"),
        ("--epochs", "0", "an integer >= 1"),
        ("--batch-size", "0", "an integer >= 1"),
        ("--lr", "0", "a number > 0"),
        ("--lr", "nan", "a number > 0"),
        ("--lr", "inf", "a number > 0"),
        ("--momentum", "1", "in [0, 1)"),
        ("--momentum", "-0.1", "in [0, 1)"),
        ("--weight-decay", "-1", "a number >= 0"),
        ("--weight-decay", "inf", "a number >= 0"),
        ("--lr-decay", "0", "in (0, 1]"),
        ("--lr-decay", "1.5", "in (0, 1]"),
        ("--lr-decay-every", "-1", "an integer >= 0"),
        ("--max-sources", "0", "an integer >= 1"),
        ("--weight-total", "inf", "a number > 0"),
        ("--sizes", "10,10", "three comma-separated counts >= 1"),
        ("--sizes", "10,0,10", "three comma-separated counts >= 1"),
    ],
)
def test_a_bad_numeric_option_is_refused_in_one_line(tmp_path, capsys, flag, value, expected):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--method", "ew", flag, value, "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"mtlopt: error: {flag} {value} is invalid: expected {expected}"), line
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare", "--benchmark", "multimnist", "--methods", "ew", "--seeds", "0"], "--seeds 0 is invalid"),
        (["speed", "--threads", "0"], "--threads 0 is invalid: expected an integer >= 1"),
        (["speed", "--budget", "nan"], "--budget nan is invalid: expected a number > 0"),
    ],
)
def test_other_commands_refuse_bad_numbers_in_one_line(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert message in one_error_line(capsys.readouterr().err)


def test_threads_zero_is_refused_by_the_trainer_too(tmp_path):
    from mtlopt.benchmarks.trainer import TrainConfig

    config = TrainConfig(benchmark="multimnist", method="ew", out=str(tmp_path), threads=0)
    with pytest.raises(ValueError, match=r"--threads 0 is invalid: expected an integer >= 1"):
        config.resolved()
