"""report.py's Δm / Δp are metrics.delta_m / delta_p of the seed means, with the benchmark's directions."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
from run_files import run_settings

from mtlopt.benchmarks.data.dense import DENSE_METRICS
from mtlopt.benchmarks.metrics import delta_m, delta_p
from mtlopt.benchmarks.report import SELECTIONS, summarize
from mtlopt.benchmarks.suite import CLASSIFICATION_METRICS


def _direction(metric) -> str:
    return "higher" if metric.higher_is_better else "lower"


def _value(method: str, seed: int, epoch: int, task: str, metric: str) -> float:
    """A deterministic, seed-dependent value (seeds differ enough that a mean of per-seed ratios is not
    the ratio of the means)."""
    base, spread = {"stl": (1.0, 0.5), "ew": (1.3, 0.1), "mgda": (0.7, 0.9)}[method]
    salt = sum(map(ord, task + metric)) % 7
    return base ** (1.0 + salt) * (1.0 + spread * seed) * (1.0 + 0.01 * epoch)


def _write_runs(root: Path, task_metrics: dict, old_format: bool, zero: tuple | None = None) -> None:
    """runs/<method>/seed<k>/result.json as the trainer writes them (directions from ``Metric``)."""
    shared = {m.name: _direction(m) for ms in task_metrics.values() for m in ms}
    for method in ("stl", "ew", "mgda"):
        for seed in (0, 1):
            history = []
            for epoch in range(1, 13):
                test = {
                    task: {m.name: _value(method, seed, epoch, task, m.name) for m in ms}
                    for task, ms in task_metrics.items()
                }
                if zero and method == zero[0]:
                    test[zero[1]][zero[2]] = 0.0
                history.append({"epoch": epoch, "lr": 0.1, "train": {}, "val": test, "test": test})
            result = {
                "tasks": list(task_metrics),
                "metrics": shared,
                "history": history,
                "final": {"test": history[-1]["test"]},
                "best_val": {"test": history[4 + seed]["test"], "selection": "epoch with the best val"},
                **run_settings(method, seed, 12, 1.0 + seed),
            }
            if not old_format:  # files written before task_metrics existed have only `metrics`
                result["task_metrics"] = {
                    task: {m.name: _direction(m) for m in ms} for task, ms in task_metrics.items()
                }
            path = root / "runs" / method / f"seed{seed}" / "result.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(result))


def _seed_means(root: Path, method: str, selection: str, task_metrics: dict) -> dict:
    """task → metric → mean over seeds of the selected test value, read back from the result files."""
    runs = [json.loads(p.read_text()) for p in sorted((root / "runs" / method).glob("seed*/result.json"))]

    def selected(run, task, metric):
        if selection == "last10":
            return statistics.fmean(r["test"][task][metric] for r in run["history"][-10:])
        return run[selection]["test"][task][metric]

    return {
        task: {m.name: statistics.fmean(selected(run, task, m.name) for run in runs) for m in ms}
        for task, ms in task_metrics.items()
    }


CASES = {
    # NYUv2's tasks: different metrics per task, both directions.
    "dense": ({task: DENSE_METRICS[task] for task in ("segmentation", "depth", "normal")}, False),
    # MultiFashion's: accuracy ↑ and cross-entropy ↓ on two tasks; an old file without task_metrics.
    "classification, old file": ({"left": CLASSIFICATION_METRICS, "right": CLASSIFICATION_METRICS}, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_summary_deltas_are_metrics_delta_m_and_delta_p(tmp_path, case):
    task_metrics, old_format = CASES[case]
    _write_runs(tmp_path, task_metrics, old_format)
    summary = summarize(tmp_path)
    assert summary["stl"] == "stl" and summary["ew"] == "ew"
    higher = {m.name: m.higher_is_better for ms in task_metrics.values() for m in ms}
    rows = {
        (row["label"], row["selection"], row["metric"]): row["mean"]
        for row in csv.DictReader(open(tmp_path / "summary.csv"))
    }
    markdown = (tmp_path / "summary.md").read_text()
    checked = 0
    for label in ("stl", "ew", "mgda"):
        for selection in SELECTIONS:
            method = _seed_means(tmp_path, label, selection, task_metrics)
            stl = _seed_means(tmp_path, "stl", selection, task_metrics)
            ew = _seed_means(tmp_path, "ew", selection, task_metrics)
            flat = lambda table: {f"{t}/{m}": v for t, ms in table.items() for m, v in ms.items()}  # noqa: E731
            flat_higher = {f"{t}/{m.name}": m.higher_is_better for t, ms in task_metrics.items() for m in ms}
            expected_m = delta_m(flat(method), flat(stl), flat_higher)
            expected_p = delta_p(method, ew, higher)
            cell = summary["table"][label][selection]
            assert cell["delta_m"] == pytest.approx(expected_m, rel=1e-12, abs=1e-12)
            assert cell["delta_p"] == pytest.approx(expected_p, rel=1e-12, abs=1e-12)
            assert rows[(label, selection, "delta_m_vs_stl")] == f"{expected_m:.6g}"
            assert rows[(label, selection, "delta_p_vs_ew")] == f"{expected_p:.6g}"
            assert f"| {expected_m:+.2f} | {expected_p:+.2f} |" in markdown
            checked += 1
    assert checked == 9
    # Not a vacuous comparison: mgda is off the baselines, reversing every direction changes its Δm, and
    # so does averaging per-seed Δm instead of taking Δm of the seed means.
    mgda = summary["table"]["mgda"]["final"]["delta_m"]
    assert abs(mgda) > 1
    method = flat(_seed_means(tmp_path, "mgda", "final", task_metrics))
    stl = flat(_seed_means(tmp_path, "stl", "final", task_metrics))
    assert not math.isclose(delta_m(method, stl, {k: not v for k, v in flat_higher.items()}), mgda)
    last = lambda name, seed: {  # noqa: E731
        f"{t}/{m.name}": _value(name, seed, 12, t, m.name) for t, ms in task_metrics.items() for m in ms
    }
    per_seed = [delta_m(last("mgda", seed), last("stl", seed), flat_higher) for seed in (0, 1)]
    assert not math.isclose(statistics.fmean(per_seed), mgda, rel_tol=1e-3)


def test_a_zero_baseline_value_gives_n_a(tmp_path):
    task_metrics = {"left": CLASSIFICATION_METRICS, "right": CLASSIFICATION_METRICS}
    _write_runs(tmp_path, task_metrics, old_format=False, zero=("stl", "right", "accuracy"))
    summary = summarize(tmp_path)
    for selection in SELECTIONS:
        assert summary["table"]["mgda"][selection]["delta_m"] is None  # metrics.delta_m refuses it
        assert summary["table"]["mgda"][selection]["delta_p"] is not None  # the EW baseline is non-zero
    assert "n/a" in (tmp_path / "summary.md").read_text()
