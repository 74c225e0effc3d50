"""Comparison reports: ``summary.md``, ``summary.csv`` and plots from a directory of result files.

Per-task tables for single-model methods, with three epoch selections (the last epoch, the epoch of the
best validation score, the mean of the last 10 epochs, or of all of them in shorter runs), Δm% vs ``stl`` (Nash-MTL/FAMO convention, lower
is better) and Δp% vs ``ew`` (LibMTL convention, higher is better). Every method also gets a hypervolume
when the benchmark defines a reference point (a single model is one point).

Failed runs (``"status": "failed"`` in their ``result.json``, e.g. a diverged loss) are listed with their
reason in a "Failed runs" section and counted in the seeds column; a method whose every seed failed gets
a row of ``failed`` cells, and ``summary.csv`` a ``failed_runs`` row.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import delta_m, delta_p
from .plots import (
    file_label,
    plot_balance,
    plot_front,
    plot_hypervolume,
    plot_learning_curves,
    plot_task_pair,
)
from .records import (
    hv_objective,
    hv_reference,
    hypervolume_curve,
    is_set,
    load_failed,
    load_runs,
    members_of,
    metric_pairs,
    sample_std,
    selected_test,
)

__all__ = [  # the reading helpers and the plots live in records.py and plots.py; importable from here too
    "PUBLISHED",
    "PUBLISHED_HV",
    "SELECTIONS",
    "hv_objective",
    "hv_reference",
    "hypervolume_curve",
    "is_set",
    "load_failed",
    "load_runs",
    "members_of",
    "metric_pairs",
    "plot_front",
    "plot_hypervolume",
    "selected_test",
    "summarize",
    "weight_sum_cell",
]

SELECTIONS = {
    "final": "last epoch",
    "best_val": "best validation epoch",
    "last10": "mean of the last 10 epochs",
}

# Δm% vs STL on QM9 (lower is better) as the papers report them: Navon et al. 2022 (Nash-MTL) Table 1,
# FAMO's table as benchmarks.md quotes it, and one third-party rerun (NTKMTL, slower lr decay).
_QM9_PUBLISHED = (
    "Δm% vs STL, lower is better, Nash-MTL paper Table 1: LS 177.6, SI 77.8, RLW 203.8, DWA 175.3, "
    "MGDA 120.5, CAGrad 112.8, IMTL-G 77.2, Nash-MTL 62.0; FAMO 58.5 (FAMO paper); a third-party rerun "
    "(NTKMTL paper): LS 179.8, SI 39.7, RLW 222.6, DWA 173.0, UW 58.4, MGDA 101.4, PCGrad 118.6, "
    "CAGrad 102.4, Nash-MTL 72.9, FAMO 38.9, FairGrad 57.0. None published for GLS, IMTL-L, IMTL, STCH, "
    "UPGrad, DualProj, ConFIG, GradVac, GradDrop or Aligned-MTL on QM9 (as Δm%; the gradients there are "
    "taken w.r.t. the shared parameters)."
)

# Published numbers to print beside ours, by (benchmark, protocol).
PUBLISHED = {
    ("multimnist", "sener"): (
        "Sener & Koltun (2018), full MultiMNIST, test accuracy % left / right: single task 97.23 / 95.90; "
        "uniform scaling 96.46 / 94.99; uncertainty 96.47 / 95.29; GradNorm 96.27 / 94.84; "
        "MGDA-UB 97.26 / 95.90 (100 epochs, lr chosen per method from a grid). Our MNIST source may be "
        "the 5,000-digit subset: see the data line above."
    ),
    ("qm9", "cpu"): (
        "Published QM9 results (full data, 300 epochs, MPNN dim 64 on complete graphs with RDKit features): "
        + _QM9_PUBLISHED
        + " This CPU subset protocol is far smaller (see the data line); compare directions, not values."
    ),
    ("qm9", "published"): ("Published QM9 results: " + _QM9_PUBLISHED),
}

# Hypervolume of sets of models (test cross-entropy per task, reference (2, 2), epoch of the best
# validation hypervolume, the public `pmtl` pickles, mean of 10 seeds; benchmarks.md §1).
PUBLISHED_HV = {
    "multimnist": "EPO 2.95, COSMOS 2.95, PHN-EPO 2.82, PHN-LS 2.79, MOO-SVGD 2.67; COSMOS-code rerun: single-task models 2.88, Pareto MTL 2.91",
    "multifashion": "EPO 2.31, COSMOS 2.31, PHN-EPO 2.16, PHN-LS 2.14, MOO-SVGD 2.02; COSMOS-code rerun: single-task models 2.21, Pareto MTL 2.26",
    "multifashion+mnist": "EPO 2.86, COSMOS 2.82, PHN-EPO 2.74, PHN-LS 2.67, MOO-SVGD 2.54; COSMOS-code rerun: single-task models 2.78, Pareto MTL 2.75",
}


# --- the summary --------------------------------------------------------------------------------------


def summarize(directory: str | Path, labels: list[str] | None = None) -> dict[str, Any]:
    """Write summary.md, summary.csv and the plots for the runs in ``directory``; returns the summary."""
    directory = Path(directory)
    runs, failed = load_runs(directory), load_failed(directory)
    if not runs and not failed:
        raise FileNotFoundError(f"no finished runs under {directory / 'runs'}")
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_label[run["label"]].append(run)
    failed_by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in failed:
        failed_by_label[run["label"]].append(run)
    every = set(by_label) | set(failed_by_label)
    order = [label for label in (labels or []) if label in every] + sorted(every - set(labels or []))
    first_run = runs[0] if runs else failed[0]
    tasks, metrics = first_run["tasks"], metric_pairs(first_run)
    sample = {label: (by_label.get(label) or failed_by_label[label])[0] for label in order}
    single_rows = [label for label in order if not is_set(sample[label])]  # rows, failed ones included
    finished = [label for label in order if label in by_label]
    singles = [label for label in single_rows if label in by_label]  # with numbers
    table = {label: _aggregate(by_label[label], tasks, metrics) for label in singles}
    stl = next((label for label in singles if by_label[label][0]["method"] == "stl"), None)
    ew = next((label for label in singles if by_label[label][0]["method"] == "ew"), None)
    for label in singles:
        for selection in SELECTIONS:
            cells = table[label][selection]["cells"]
            table[label][selection]["delta_m"] = (
                _delta("m", cells, table[stl][selection]["cells"], metrics) if stl else None
            )
            table[label][selection]["delta_p"] = (
                _delta("p", cells, table[ew][selection]["cells"], metrics) if ew else None
            )
    hv = _hypervolume_table(finished, by_label)
    if hv:  # every label in the table's order; a label with no finished run is marked failed
        hv = {label: hv.get(label, {"failed": len(failed_by_label[label])}) for label in order}
    _write_csv(directory / "summary.csv", table, singles, by_label, hv, order, failed_by_label)
    _write_markdown(
        directory / "summary.md",
        table,
        single_rows,
        by_label,
        tasks,
        metrics,
        stl,
        ew,
        hv,
        order,
        failed_by_label,
    )
    if singles:
        plot_learning_curves(directory, singles, by_label, tasks, metrics)
        if len(tasks) == 2:
            plot_task_pair(directory, singles, by_label, tasks, metrics)
    if finished:
        plot_balance(directory, finished, by_label, tasks)
    if hv and finished:
        plot_hypervolume(directory, finished, by_label)
        plot_front(directory, finished, by_label, tasks)
    return {
        "labels": order,
        "table": table,
        "stl": stl,
        "ew": ew,
        "hypervolume": hv,
        "failed": {label: [run["seed"] for run in runs] for label, runs in failed_by_label.items()},
    }


def _aggregate(runs: list[dict[str, Any]], tasks, metrics) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for selection in SELECTIONS:
        chosen = [selected_test(run, selection) for run in runs]
        cells = {}
        for task, metric, _ in metrics:
            values = [c[task][metric] for c in chosen]
            cells[(task, metric)] = (statistics.fmean(values), sample_std(values), len(values))
        out[selection] = {"cells": cells}
    steps = [run["time_per_step_ms"]["median"] for run in runs]
    out["time_ms"] = (statistics.fmean(steps), sample_std(steps))
    out["seeds"] = sorted(run["seed"] for run in runs)
    return out


def _mean_std(mean: float, std: float, seeds: int, digits: int) -> str:
    """``mean ± std``; a single seed has no spread, so no ``± 0`` (the seeds column says how many)."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if seeds > 1 else f"{mean:.{digits}f}"


def _delta(kind: str, method, baseline, metrics) -> float | None:
    """Δm% (``kind="m"``, vs STL, lower is better) or Δp% (``"p"``, vs EW, higher is better) of the
    seed means, through :func:`metrics.delta_m` / :func:`metrics.delta_p`.

    ``method`` and ``baseline`` map (task, metric) to (mean, std, seeds); ``metrics`` lists (task, metric,
    "higher"|"lower") as the result files record the benchmark's :class:`~.suite.Metric` flags. The
    relative changes are of the means over seeds (not means of per-seed changes). None where the delta is
    undefined: a baseline value 0 or not finite, or a method value not finite.
    """
    higher: dict[str, bool] = {}
    values: dict[str, dict[str, float]] = defaultdict(dict)
    base: dict[str, dict[str, float]] = defaultdict(dict)
    for task, metric, direction in metrics:
        key = f"{task}/{metric}"  # one key per (task, metric): directions may differ between tasks
        higher[key] = direction == "higher"
        values[task][key], base[task][key] = method[(task, metric)][0], baseline[(task, metric)][0]
    flat_values = {k: v for task in values.values() for k, v in task.items()}
    flat_base = {k: v for task in base.values() for k, v in task.items()}
    if not all(math.isfinite(b) and b != 0 for b in flat_base.values()):
        return None
    if not all(math.isfinite(v) for v in flat_values.values()):
        return None
    if kind == "m":
        return delta_m(flat_values, flat_base, higher)
    return delta_p(values, base, higher)


def _short_run_note(run: dict[str, Any]) -> str | None:
    """The trainer's warning when the runs are too short for their numbers to mean anything."""
    from .trainer import short_run_warning

    try:
        return short_run_warning(run["benchmark"], run["protocol"], int(run["training"]["epochs"]))
    except (KeyError, ValueError, TypeError):  # a benchmark or protocol this version does not know
        return None


def _contributing(members, tasks, objective: str, reference) -> int:
    """How many of the points add volume: non-dominated and strictly inside the reference box."""
    from mtlopt.hypervolume import non_dominated

    points = np.array([[m[t][objective] for t in tasks] for m in members], dtype=np.float64)
    inside = np.all(points < np.asarray(reference, dtype=np.float64), axis=1)
    return int((non_dominated(points) & inside).sum())


def _hypervolume_table(order, by_label) -> dict[str, dict[str, Any]]:
    """Per label: test hypervolume at the best-validation-HV epoch and at the last epoch (mean, std)."""
    out = {}
    for label in order:
        runs = by_label[label]
        reference = hv_reference(runs[0])
        if reference is None:
            return {}
        best, last, points, counted, curves = [], [], [], [], []
        for run in runs:
            val, test = hypervolume_curve(run, "val", reference), hypervolume_curve(run, "test", reference)
            curves.append(test)
            epoch = max(range(len(val)), key=val.__getitem__)
            best.append(test[epoch])
            last.append(test[-1])
            chosen = members_of(run["history"][epoch], "test")
            points.append(len(chosen))
            counted.append(_contributing(chosen, run["tasks"], hv_objective(run), reference))
        out[label] = {
            "best": (statistics.fmean(best), sample_std(best)),
            "last": (statistics.fmean(last), sample_std(last)),
            "points": max(points),
            "contributing": statistics.fmean(counted),
            "seeds": len(runs),
            "reference": reference,
            "time_ms": statistics.fmean(run["time_per_step_ms"]["median"] for run in runs),
            "epochs": [record["epoch"] for record in runs[0]["history"]],
            "curve": [statistics.fmean(v) for v in zip(*curves)],  # mean test HV per epoch
            "set": is_set(runs[0]),
        }
    _add_epochs_to_target(out)
    return out


HV_TARGET = 0.95  # the convergence-speed target: this fraction of the best method's final hypervolume


def _add_epochs_to_target(hv: dict[str, dict[str, Any]]) -> None:
    """Per label, the first epoch at which its mean test HV over seeds reaches ``HV_TARGET`` times the
    best final (last-epoch) mean HV of the set methods (of every label if there is none; Bai et al.
    2024's convergence speed), or None."""
    rows = [row for row in hv.values() if "curve" in row]
    if not rows:
        return
    sets = [row for row in rows if row["set"]] or rows
    target = HV_TARGET * max(row["last"][0] for row in sets)
    for row in rows:
        reached = [e for e, value in zip(row["epochs"], row["curve"]) if value >= target > 0]
        row["to_target"] = reached[0] if reached else None


def _write_csv(path: Path, table, singles, by_label, hv, order=(), failed_by_label=None) -> None:
    failed_by_label = failed_by_label or {}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "method", "options", "selection", "task", "metric", "mean", "std", "seeds"])
        for label in singles:
            run = by_label[label][0]
            options = json.dumps(run["options"], sort_keys=True)
            for selection in SELECTIONS:
                for (task, metric), (mean, std, n) in table[label][selection]["cells"].items():
                    writer.writerow(
                        [
                            label,
                            run["method"],
                            options,
                            selection,
                            task,
                            metric,
                            f"{mean:.6g}",
                            f"{std:.6g}",
                            n,
                        ]
                    )
                for key, name in (("delta_m", "delta_m_vs_stl"), ("delta_p", "delta_p_vs_ew")):
                    value = table[label][selection][key]
                    if value is not None:
                        writer.writerow(
                            [label, run["method"], options, selection, "all", name, f"{value:.6g}", "", ""]
                        )
            mean, std = table[label]["time_ms"]
            writer.writerow(
                [
                    label,
                    run["method"],
                    options,
                    "all",
                    "all",
                    "time_per_step_ms",
                    f"{mean:.6g}",
                    f"{std:.6g}",
                    len(by_label[label]),
                ]
            )
        for label, row in hv.items():
            if "failed" in row:  # no finished run: its failed_runs row below says so
                continue
            run = by_label[label][0]
            options = json.dumps(run["options"], sort_keys=True)
            for selection, key in (("best_val_hypervolume", "best"), ("final", "last")):
                mean, std = row[key]
                writer.writerow(
                    [
                        label,
                        run["method"],
                        options,
                        selection,
                        "all",
                        "test_hypervolume",
                        f"{mean:.6g}",
                        f"{std:.6g}",
                        row["seeds"],
                    ]
                )
            reached = "" if row.get("to_target") is None else row["to_target"]
            writer.writerow(
                [
                    label,
                    run["method"],
                    options,
                    "mean_curve",
                    "all",
                    "epochs_to_95pct_hv",
                    reached,
                    "",
                    row["seeds"],
                ]
            )
        for label in order:  # mean: the failed runs; seeds: every run of the label, failed or not
            failures = failed_by_label.get(label, [])
            if failures:
                run = failures[0]
                options = json.dumps(run.get("options", {}), sort_keys=True)
                total = len(failures) + len(by_label.get(label, []))
                writer.writerow(
                    [label, run["method"], options, "all", "all", "failed_runs", len(failures), "", total]
                )


def _write_markdown(
    path: Path, table, singles, by_label, tasks, metrics, stl, ew, hv, order, failed_by_label=None
) -> None:
    """``singles``: the single-model labels to list, those whose every run failed included (``failed``
    cells); ``failed_by_label``: the failed runs per label."""
    failed_by_label = failed_by_label or {}
    first = next((by_label[label][0] for label in order if by_label.get(label)), None)
    if first is None:  # every run failed
        first = failed_by_label[order[0]][0]
    env, training, data = first["environment"], first["training"], first["data"]
    sources = "; ".join(
        f"{key}: {value['name']} from {value['origin']}" for key, value in data.get("sources", {}).items()
    )
    seeds = sorted({run["seed"] for runs in by_label.values() for run in runs})
    deltas = []
    if stl:
        deltas.append(f"Δm% vs `{stl}` over every task and metric (lower is better)")
    if ew:
        deltas.append(f"Δp% vs `{ew}`, per task then over tasks (higher is better)")
    selection_note = next(
        (run["best_val"]["selection"] for runs in by_label.values() for run in runs if not is_set(run)), ""
    )
    lines = [
        f"# {first['benchmark']} ({first['protocol']} protocol)",
        "",
        f"- data: {sources}; sizes train/val/test {data.get('sizes')}; data seed {data.get('seed')}",
        f"- construction: {data.get('construction', '')}",
        f"- training: {training['epochs']} epochs, {training['optimizer']} lr {training['lr']}"
        + (f" (momentum {training['momentum']})" if training["optimizer"] == "sgd" else "")
        + (
            f", lr × {training['lr_decay']} every {training['lr_decay_every']} epochs"
            if training["lr_decay_every"]
            else ""
        )
        + f", batch {training['batch_size']}; seeds {seeds}",
        f"- environment: mtlopt {env['mtlopt']}, torch {env['torch']}, {env['device']}, {env['threads']} thread(s) per run"
        + (f", mixed precision {env['amp']}" if env.get("amp", "off") != "off" else ""),
        _weight_scale_line({**by_label, **{k: v for k, v in failed_by_label.items() if k not in by_label}}),
        "- test metrics, mean ± std over seeds" + ("; " + "; ".join(deltas) if deltas else ""),
        f"- best validation epoch: the {selection_note.removeprefix('epoch with the ')}"
        if selection_note
        else "",
        "",
    ]
    warning = _short_run_note(first)
    if warning:
        lines.insert(len(lines) - 1, f"- **{warning}**")
    lines += _failed_section(order, failed_by_label)
    if singles:
        header = ["method", "seeds", "Σw"] + [
            f"{task} {metric.replace('_', '-')} {'↑' if direction == 'higher' else '↓'}"
            for task, metric, direction in metrics
        ]
        averaged = sorted(
            {min(10, len(run["history"])) for label in singles for run in by_label.get(label, [])}
        )
        for selection, description in SELECTIONS.items():
            if selection == "last10" and averaged and averaged != [10]:  # runs shorter than 10 epochs
                n = "–".join(map(str, dict.fromkeys([averaged[0], averaged[-1]])))
                description = f"mean of the last {n} epoch{'s' if averaged != [1] else ''} (all the run has)"
            lines += [f"## Epoch: {description}", ""]
            cols = (
                header
                + (["Δm% ↓"] if stl else [])
                + (["Δp% ↑"] if ew else [])
                + ["ms / step"]
                + (["× EW"] if ew else [])
            )
            lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for label in singles:
                failures = len(failed_by_label.get(label, []))
                if label not in table:  # every run of it failed
                    cells = len(metrics) + bool(stl) + bool(ew) + 1 + bool(ew)
                    row = [f"`{label}`", _seeds_cell(0, failures), weight_sum_cell(failed_by_label[label])]
                    lines.append("| " + " | ".join(row + ["failed"] * cells) + " |")
                    continue
                row = [
                    f"`{label}`",
                    _seeds_cell(len(table[label]["seeds"]), failures),
                    weight_sum_cell(by_label[label]),
                ]
                for task, metric, _ in metrics:
                    mean, std, seeds = table[label][selection]["cells"][(task, metric)]
                    row.append(_mean_std(mean, std, seeds, 2 if metric == "accuracy" else 4))
                for key, present in (("delta_m", stl), ("delta_p", ew)):
                    if present:
                        value = table[label][selection][key]
                        row.append("n/a" if value is None else f"{value:+.2f}")
                mean_ms = table[label]["time_ms"][0]
                row.append(f"{mean_ms:.1f}")
                if ew:
                    row.append(f"{mean_ms / table[ew]['time_ms'][0]:.2f}")
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
        lines += [
            "ms / step: median wall time of one training step (forward, backward, optimizer step) per run, averaged "
            "over seeds; Δ is n/a when a baseline value is 0 or a value is not finite; runs are timed as they train, possibly beside another job, so ratios are indicative "
            "(the controlled, interleaved measurements are in docs/benchmarks/). `stl` trains one model per "
            "task, so its step is K model steps.",
            "",
            "![learning curves](learning_curves.png)",
            "",
        ]
        if len(tasks) == 2:
            lines += [f"![{tasks[0]} vs {tasks[1]}](task_pair.png)", ""]
    published = PUBLISHED.get((first["benchmark"], first["protocol"]))
    if published:
        lines += ["## Published numbers", "", published, ""]
    lines += _hypervolume_section(hv, first, failed_by_label)
    for label in order:
        if (path.parent / f"balance_{file_label(label)}.png").exists():
            lines += [f"![balance of {label}](balance_{file_label(label)}.png)", ""]
    path.write_text("\n".join(line for line in lines if line is not None))


def _seeds_cell(finished: int, failed: int) -> str:
    """The seeds column: the finished seeds the numbers are over, and the failed ones beside them."""
    return f"{finished} (+{failed} failed)" if failed else str(finished)


def _failed_section(order, failed_by_label) -> list[str]:
    """One line per failed run, with the reason its result.json records; nothing when none failed."""
    failed = [run for label in order for run in sorted(failed_by_label.get(label, []), key=_seed)]
    if not failed:
        return []
    lines = [
        "## Failed runs",
        "",
        f"{len(failed)} run(s) failed; their seeds are left out of the means below (the seeds column "
        "counts them) and a method with no finished seed shows `failed`. To retry one, delete its "
        "result.json and run the comparison again.",
        "",
    ]
    for run in failed:
        failure = run.get("failure") or {}
        where = (
            f"at epoch {failure['epoch']}, step {failure['step']} of {failure['steps_per_epoch']}"
            if "epoch" in failure and "step" in failure
            else ""
        )
        reason = "; ".join(str(part) for part in (failure.get("reason"), failure.get("hint")) if part)
        what = " ".join(part for part in (failure.get("kind", "failed"), where) if part)
        lines.append(f"- `{run['label']}` seed {run.get('seed')}: {what}: {reason or 'no reason recorded'}")
    return [*lines, ""]


def _seed(run: dict[str, Any]) -> int:
    return int(run.get("seed", 0))


def weight_sum_cell(runs: list[dict[str, Any]]) -> str:
    """The method's total weight on the tasks: its convention, and the measured mean when it varies."""
    recorded = [run["weight_sum"] for run in runs if run.get("weight_sum")]
    if not recorded:
        return "–"
    convention = recorded[0]["convention"]
    total = recorded[0].get("weight_total")
    if total is not None:
        return f"{total:g} ({convention})"
    measured = [
        value for run in runs for record in run["history"] for value in record["train"].get("weight_sum", [])
    ]
    if convention == "data-dependent" and measured:
        return f"data-dependent (mean {statistics.fmean(measured):.3g})"
    return convention


def _weight_scale_line(by_label: dict[str, list[dict[str, Any]]]) -> str:
    def total(run: dict[str, Any]) -> float | None:
        return run.get("identity", {}).get("weight_total")

    totals = {total(run) for runs in by_label.values() for run in runs}
    if totals == {None}:
        return (
            "- weight scale: each method's own total weight on the tasks (Σw: 1, K, or data-dependent; "
            "see docs/conventions.md), so one lr gives some methods a larger step"
        )
    rescaled = ", ".join(f"{t:g}" for t in sorted(t for t in totals if t is not None))
    native = [label for label, runs in by_label.items() if all(total(run) is None for run in runs)]
    return (
        f"- weight scale: every shared update rescaled to total weight {rescaled} (--weight-total); Σw shows "
        "the total used and, in brackets, the method's own convention; methods whose update cannot be "
        "rescaled show their own"
        + (
            f"; trained without --weight-total: {', '.join(f'`{label}`' for label in native)}"
            if native
            else ""
        )
    )


def _hypervolume_section(hv, first, failed_by_label=None) -> list[str]:
    failed_by_label = failed_by_label or {}
    if not hv or all("failed" in row for row in hv.values()):
        return []
    reference = next(row for row in hv.values() if "failed" not in row)["reference"]
    lines = [
        "## Hypervolume",
        "",
        f"Test {hv_objective(first).replace('_', '-')} per task, reference point {tuple(reference)}, minimization; a single "
        "model is one point (`stl`: each task from its own model). `best val` is the epoch with the best "
        "validation hypervolume (the published protocol), per seed; mean ± std over seeds. `adding volume`: "
        "the points at that epoch that are non-dominated and inside the reference box (mean over seeds); "
        "the others add nothing. `epochs to 95%`: the first epoch at which the method's mean test HV over "
        f"seeds reaches {HV_TARGET:.0%} of the best final (last-epoch) mean HV of the set methods in this "
        "table (Bai et al. 2024's convergence speed; `–`: never within the run).",
        "",
        "| method | points | adding volume | seeds | HV, best val epoch ↑ | HV, last epoch ↑ | epochs to 95% ↓ | ms / step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row in hv.items():
        if "failed" in row:
            lines.append(
                f"| `{label}` | failed | failed | {_seeds_cell(0, row['failed'])} | failed | failed | failed | failed |"
            )
            continue
        seeds = _seeds_cell(row["seeds"], len(failed_by_label.get(label, [])))
        lines.append(
            f"| `{label}` | {row['points']} | {row['contributing']:.3g} | {seeds} | {_mean_std(row['best'][0], row['best'][1], row['seeds'], 4)} | "
            f"{_mean_std(row['last'][0], row['last'][1], row['seeds'], 4)} | "
            f"{'–' if row.get('to_target') is None else row['to_target']} | {row['time_ms']:.1f} |"
        )
    lines += ["", "![hypervolume per epoch](hypervolume.png)", ""]
    if len(first["tasks"]) == 2:  # plot_front draws two tasks only
        lines += ["![fronts](front.png)", ""]
    published = PUBLISHED_HV.get(first["benchmark"])
    if published and first["protocol"] == "pmtl":
        lines += [
            "Published (public `pmtl` pickles, 10 seeds, 100+ epochs, validation split of the training "
            f"composites): {published}. Differences here: composites built by mtlopt with the split by "
            "source image, fewer epochs and seeds (see above), and one optimizer for every method (the "
            "published EPO runs use SGD without momentum); numbers are comparable in kind, not to the last "
            "digit.",
            "",
        ]
    return lines
