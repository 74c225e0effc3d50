"""Alternating steps on QM9: time per epoch against the number of task groups, beside the quality.

    .venv/bin/python tools/alternating_cost.py --out docs/benchmarks/alternating_qm9.md

Times one training step of the benchmark runners (`ew` and `alternating` with several group sizes) on
the same QM9 `cpu`-protocol batches, in interleaved rounds (the ratio to EW is taken per round, so
machine load affects both sides alike), with the thread count fixed and recorded; time per epoch is the
step time times the protocol's steps per epoch. The quality columns (Δm% vs STL, last epoch, mean over
seeds) are read from the committed comparison `docs/results/qm9-cpu/summary.csv`.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import platform
import statistics
import time
from pathlib import Path

import torch

import mtlopt
from mtlopt.benchmarks.interfaces import DataOptions
from mtlopt.benchmarks.methods import OptimizerSettings, get_method
from mtlopt.benchmarks.suite import get_benchmark

PROTOCOL = "cpu"


def quality(summary: Path) -> dict[str, tuple[float, int]]:
    """label → (Δm% vs STL at the last epoch, number of seeds) from a committed summary.csv."""
    out: dict[str, tuple[float, int]] = {}
    if not summary.is_file():
        return out
    seeds: dict[str, int] = {}
    with summary.open() as handle:
        for row in csv.DictReader(handle):
            if row["selection"] != "final":
                continue
            if row["metric"] == "mae" and row["seeds"]:
                seeds[row["label"]] = int(row["seeds"])
            if row["metric"] == "delta_m_vs_stl":
                out[row["label"]] = (float(row["mean"]), 0)
    return {label: (value, seeds.get(label, 0)) for label, (value, _) in out.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[11, 6, 4, 2, 1])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summary", default="docs/results/qm9-cpu/summary.csv")
    parser.add_argument("--out", help="write the Markdown report here (printed either way)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    benchmark = get_benchmark("qm9")
    defaults = benchmark.defaults[PROTOCOL]
    data = benchmark.load(PROTOCOL, DataOptions())
    K = len(data.task_names)
    steps_per_epoch = math.ceil(data.size("train") / defaults.batch_size)
    optimizer = OptimizerSettings(defaults.optimizer, defaults.lr)
    generator = torch.Generator().manual_seed(0)
    batches = [
        data.batch(
            "train", torch.randperm(data.size("train"), generator=generator)[: defaults.batch_size], "cpu"
        )
        for _ in range(args.steps)
    ]
    runners = {}
    variants = [("ew", "ew", {})] + [
        (f"alternating[group-size={g}]", "alternating", {"group-size": g}) for g in args.group_sizes
    ]
    for label, name, options in variants:
        torch.manual_seed(0)
        runner = get_method(name)(options, K, seed=0)
        runner.steps_per_epoch = steps_per_epoch
        runner.build(lambda: benchmark.model(PROTOCOL), optimizer, steps_per_epoch, data)
        runner.set_training(True)
        for x, targets in batches:  # warm-up
            runner.train_step(x, targets)
        runners[label] = runner
    times: dict[str, list[float]] = {label: [] for label in runners}
    ratios: dict[str, list[float]] = {label: [] for label in runners}
    labels = list(runners)
    for round_ in range(args.rounds):
        order = labels[round_ % len(labels) :] + labels[: round_ % len(labels)]
        if round_ % 2:
            order.reverse()
        medians = {}
        for label in order:
            taken = []
            for x, targets in batches:
                began = time.perf_counter()
                runners[label].train_step(x, targets)
                taken.append(time.perf_counter() - began)
            medians[label] = statistics.median(taken)
            times[label].append(medians[label])
        for label in labels:
            ratios[label].append(medians[label] / medians["ew"])
    scores = quality(Path(args.summary))
    rows = [
        "| method | groups | step / EW (median, IQR) | step (ms) | time per epoch (s) | Δm% vs STL (last epoch) |",
        "|---|---|---|---|---|---|",
    ]
    for label in labels:
        groups = 1 if label == "ew" else len(runners[label].alternating.groups)
        q = statistics.quantiles(ratios[label], n=4) if len(ratios[label]) > 1 else [ratios[label][0]] * 3
        step = statistics.median(times[label])
        score = scores.get(label)
        shown = f"{score[0]:+.1f} ({score[1]} seed{'s' if score[1] != 1 else ''})" if score else "not run"
        rows.append(
            f"| `{label}` | {groups} | {statistics.median(ratios[label]):.2f}× ({q[0]:.2f}–{q[2]:.2f}) | "
            f"{1e3 * step:.0f} | {step * steps_per_epoch:.1f} | {shown} |"
        )
    command = "python tools/alternating_cost.py" + (f" --out {args.out}" if args.out else "")
    report = "\n".join(
        [
            "# Alternating steps on QM9: cost against the number of groups",
            "",
            f"Generated by `{command}` on {datetime.date.today().isoformat()}: mtlopt {mtlopt.__version__}, "
            f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
            f"**{torch.get_num_threads()} thread(s)**, CPU.",
            "",
            f"QM9 `{PROTOCOL}` protocol ({K} tasks, MPNN, {defaults.optimizer} lr {defaults.lr}, batch "
            f"{defaults.batch_size}, {steps_per_epoch} steps per epoch). One step of `alternating` takes one "
            "optimizer step per group (a forward and a backward pass each), so its cost grows with the "
            f"number of groups ⌈{K}/group size⌉. {args.rounds} interleaved rounds of {args.steps} steps per "
            "method; ratios to EW per round. Δm%: `docs/results/qm9-cpu/summary.md` (lower is better).",
            "",
            *rows,
            "",
        ]
    )
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
