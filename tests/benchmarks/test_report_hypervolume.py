"""The hypervolume table's convergence speed: epochs to 95% of the best final mean HV (hand-built
curves), and the front plot with its reference box."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from run_files import run_settings

from mtlopt.benchmarks.report import summarize

# test HV per epoch of each seed; one member (x, x) per epoch, so HV = (2 - x)^2 with reference (2, 2)
CURVES = {
    "fast": ([0.5, 0.9, 1.0, 1.0], [0.5, 0.9, 0.96, 1.0]),  # mean 0.5, 0.9, 0.98, 1.0: epoch 3
    "slow": ([0.1, 0.3, 0.6, 0.94], [0.1, 0.3, 0.6, 0.98]),  # mean reaches 0.96 at epoch 4
    "never": ([0.1, 0.2, 0.3, 0.5], [0.1, 0.2, 0.3, 0.5]),
}


def _member(hv: float) -> dict[str, dict[str, float]]:
    x = 2.0 - math.sqrt(hv)
    return {"left": {"cross_entropy": x}, "right": {"cross_entropy": x}}


def _write(root: Path) -> None:
    for method, seeds in CURVES.items():
        for seed, curve in enumerate(seeds):
            history = [
                {
                    "epoch": e + 1,
                    "lr": 0.1,
                    "train": {},
                    **{f"{split}_members": [_member(hv), _member(hv / 4)] for split in ("val", "test")},
                }
                for e, hv in enumerate(curve)
            ]
            result = {
                "tasks": ["left", "right"],
                "metrics": {"cross_entropy": "lower"},
                "hypervolume_reference": [2.0, 2.0],
                "history": history,
                **run_settings(method, seed, 4, 1.0),
            }
            path = root / "runs" / method / f"seed{seed}" / "result.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(result))


def _write_single(root: Path, curve: list[float]) -> None:
    """A single-model run (one point per epoch, as ``stl`` or ``ew`` write it), two seeds alike."""
    for seed in (0, 1):
        history = [
            {"epoch": e + 1, "lr": 0.1, "train": {}, "val": _member(hv), "test": _member(hv)}
            for e, hv in enumerate(curve)
        ]
        path = root / "runs" / "single" / f"seed{seed}" / "result.json"
        path.parent.mkdir(parents=True)
        result = json.loads((root / "runs" / "fast" / "seed0" / "result.json").read_text())
        result.update(method="single", seed=seed, history=history)
        result.update(
            final={"test": history[-1]["test"]}, best_val={"test": history[-1]["test"], "selection": "last"}
        )
        path.write_text(json.dumps(result))


def test_epochs_to_95_percent_of_the_best_final_hypervolume(tmp_path):
    _write(tmp_path)
    _write_single(tmp_path, [0.5, 1.0, 3.0, 4.0])  # a better single model does not set the target
    hv = summarize(tmp_path)["hypervolume"]
    assert hv["fast"]["last"][0] == 1.0  # the best final mean HV of a set: the target is 0.95
    expected = {"fast": 3, "slow": 4, "never": None, "single": 2}
    assert {label: row["to_target"] for label, row in hv.items()} == expected
    rows = {r["label"]: r["mean"] for r in csv.DictReader(open(tmp_path / "summary.csv")) if r["metric"] == "epochs_to_95pct_hv"}  # fmt: skip
    assert rows == {"fast": "3", "slow": "4", "never": "", "single": "2"}
    table = (tmp_path / "summary.md").read_text()
    assert "epochs to 95% ↓" in table
    assert (
        "| `never` | 2 | 1 | 2 |" in table
        and table.split("| `never` |")[1].split("\n")[0].count("| – |") == 1
    )
    assert (tmp_path / "front.png").stat().st_size > 10_000  # drawn with its reference box


def test_the_convergence_study_tool(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import hv_study  # tools/hv_study.py

    for label in ("mtgd", "ls-sweep"):  # mtgd never reaches the target, ls-sweep at epoch 3
        (tmp_path / "runs" / label).mkdir(parents=True)
    _write(tmp_path / "src")
    for src, dst in (("never", "mtgd"), ("fast", "ls-sweep")):
        for seed in (0, 1):
            result = json.loads((tmp_path / "src" / "runs" / src / f"seed{seed}" / "result.json").read_text())
            result["method"] = dst.split("[")[0]
            (tmp_path / "runs" / dst / f"seed{seed}").mkdir()
            (tmp_path / "runs" / dst / f"seed{seed}" / "result.json").write_text(json.dumps(result))
    result, curves = hv_study.study(tmp_path, [])
    assert result["target"] == 0.95
    assert result["rows"]["ls-sweep"]["seed_epochs"] == [3, 3] and result["rows"]["mtgd"]["seed_epochs"] == [
        None,
        None,
    ]
    assert result["rows"]["mtgd"]["to_own"] == 4  # 0.5 is its best: 95% of it first at epoch 4
    assert curves["mtgd"]["1"]["test"] == pytest.approx(CURVES["never"][1])
    text = hv_study.markdown(result, "t", "cmd")
    assert "ratio **> 1.33**" in text  # 4 epochs / ls-sweep's 3
    assert "`mtgd` 4 (1.33×)" in text  # its own plateau, against ls-sweep's 3


def test_the_study_compares_larger_sets_at_equal_points(tmp_path):
    """A 4-ray set beside 2-point sets: its HV on the 2 rays nearest (¼, ¾) and (¾, ¼), by hand."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import hv_study  # tools/hv_study.py

    _write(tmp_path)
    points = [(0.2, 1.8), (0.5, 1.0), (1.0, 0.5), (1.8, 0.2)]  # rays (0.9, 0.1), (0.7, 0.3), ...
    members = [{"left": {"cross_entropy": a}, "right": {"cross_entropy": b}} for a, b in points]
    for seed in (0, 1):
        source = tmp_path / "runs" / "fast" / f"seed{seed}" / "result.json"
        result = json.loads(source.read_text())
        result.update(label="wide", method="wide", rays=[[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.1, 0.9]])
        for record in result["history"]:
            record["val_members"] = record["test_members"] = members
        path = tmp_path / "runs" / "wide" / f"seed{seed}" / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(result))
    result, _ = hv_study.study(tmp_path, [])
    equal = result["equal_points"]
    # the rays nearest (0.75, 0.25) and (0.25, 0.75): (0.7, 0.3) and (0.3, 0.7), points (0.5, 1) and (1, 0.5)
    by_hand = 1.5 * 1.0 + 1.0 * 0.5  # the box of (0.5, 1) plus the strip (1, 0.5) adds below it
    assert equal["points"] == 2 and set(equal["rows"]) == {"wide"}
    assert equal["rows"]["wide"][0] == pytest.approx(by_hand) and equal["rows"]["wide"][2] == 2
    assert "| `wide` | 2.0000 ± 0.0000 | 2 |" in hv_study.markdown(result, "t", "cmd")
