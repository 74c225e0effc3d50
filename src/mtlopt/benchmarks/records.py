"""Reading a comparison directory's result files: the runs, their points, hypervolumes and selections.

Shared by :mod:`.report` (the tables) and :mod:`.plots` (the figures).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def load_runs(directory: Path) -> list[dict[str, Any]]:
    """Every finished ``result.json`` below ``directory/runs`` (the failed ones: :func:`load_failed`)."""
    return [run for run in _load_all(Path(directory)) if not is_failed(run)]


def load_failed(directory: Path) -> list[dict[str, Any]]:
    """Every ``result.json`` below ``directory/runs`` that records a failed run (``"status": "failed"``,
    e.g. a diverged loss): its settings, the epochs it finished, and ``failure`` (reason, epoch, step)."""
    return [run for run in _load_all(Path(directory)) if is_failed(run)]


def is_failed(run: dict[str, Any]) -> bool:
    return run.get("status") == "failed"


def _load_all(directory: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted((directory / "runs").glob("*/seed*/result.json")):
        try:
            result = json.loads(path.read_text())
            if not isinstance(result, dict):
                raise ValueError("not a JSON object")
            result.setdefault("label", result["method"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(
                f"{path} is not a readable result file ({reason}); delete it (compare trains that run "
                "again) or move it away"
            ) from None
        runs.append(result)
    return runs


def members_of(record: dict[str, Any], split: str) -> list[dict[str, dict[str, float]]]:
    """The points of an epoch record: every member of a set method, or the single model."""
    return record[f"{split}_members"] if f"{split}_members" in record else [record[split]]


def is_set(run: dict[str, Any]) -> bool:
    """Whether the run trained a set of models (a failed run with no finished epoch says so itself)."""
    if run.get("history"):
        return "test_members" in run["history"][0]
    return bool(run.get("produces_set"))


def hv_reference(run: dict[str, Any]) -> list[float] | None:
    if run.get("hypervolume_reference"):
        return run["hypervolume_reference"]
    from .suite import BENCHMARKS

    benchmark = BENCHMARKS.get(run["benchmark"])
    return list(benchmark.hv_reference) if benchmark and benchmark.hv_reference else None


def hv_objective(run: dict[str, Any]) -> str:
    return "cross_entropy" if "cross_entropy" in run["metrics"] else next(iter(run["metrics"]))


def hypervolume_curve(run: dict[str, Any], split: str, reference: list[float]) -> list[float]:
    from mtlopt.hypervolume import hypervolume

    tasks, objective = run["tasks"], hv_objective(run)
    return [
        hypervolume([[m[t][objective] for t in tasks] for m in members_of(record, split)], reference)
        for record in run["history"]
    ]


def metric_pairs(run: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(task, metric, "higher"|"lower") for every reported metric of every task.

    The directions are the benchmark's :class:`~.suite.Metric` flags as the trainer records them in
    ``result.json``: per task in ``task_metrics``, or, in files written before it existed, ``metrics``
    (shared by every task).
    """
    if run.get("task_metrics"):
        return [
            (task, metric, direction)
            for task, ms in run["task_metrics"].items()
            for metric, direction in ms.items()
        ]
    return [
        (task, metric, direction) for task in run["tasks"] for metric, direction in run["metrics"].items()
    ]


def selected_test(run: dict[str, Any], selection: str) -> dict[str, dict[str, float]]:
    """A single-model run's test metrics under an epoch selection."""
    if selection in ("final", "best_val"):
        return run[selection]["test"]
    records = run["history"][-10:]
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for task, metric, _ in metric_pairs(run):
        out[task][metric] = statistics.fmean(r["test"][task][metric] for r in records)
    return out


def sample_std(values: list[float]) -> float:
    """The sample standard deviation over seeds; 0 for a single seed."""
    return statistics.stdev(values) if len(values) > 1 else 0.0
