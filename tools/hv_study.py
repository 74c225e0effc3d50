"""The MTGD convergence-speed study of a `mtlopt compare` directory of set methods (issue 19).

    .venv/bin/python tools/hv_study.py RUNS_DIR --out docs/results/mtgd-study/mtr [--order LABELS]

Reads every run of RUNS_DIR (`mtlopt compare --out RUNS_DIR`), rewrites its summary (the report's
hypervolume table: HV at the best-validation epoch and at the last, epochs to 95% of the best final
mean HV), and writes into --out:

- ``study.md``: per method the HV at the best-validation epoch and the last (mean ± std over seeds),
  the epochs its mean curve needs to reach 95% of the best method's final mean HV, the same per seed
  (each seed's own curve against that target: median and how many seeds reach it), and the ratio of
  the best `mtgd` variant's epochs to the next-best other method's (the paper's "nearly two times
  faster" is a ratio of about 0.5);
- ``curves.json``: each run's test and validation HV per epoch (the study's raw numbers; the run
  files themselves are not committed: 28-ray methods write megabytes per run);
- ``hypervolume.png``, and unless ``--no-summary`` ``summary.md``, ``summary.csv`` and the summary's
  plots: copied from RUNS_DIR after summarizing.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

from mtlopt.benchmarks.records import hv_objective, hv_reference, hypervolume_curve, load_runs, members_of
from mtlopt.benchmarks.report import HV_TARGET, summarize
from mtlopt.hypervolume import hypervolume


def first_reaching(epochs: list[int], curve: list[float], target: float) -> int | None:
    return next((e for e, value in zip(epochs, curve) if value >= target > 0), None)


def study(directory: Path, order: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    hv = summarize(directory, order or None)["hypervolume"]
    runs = load_runs(directory)
    rows = {label: row for label, row in hv.items() if "curve" in row}
    sets = [row for row in rows.values() if row["set"]] or list(rows.values())
    target = HV_TARGET * max(row["last"][0] for row in sets)  # as the report's column
    curves: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: (r["label"], r["seed"])):
        reference = hv_reference(run)
        assert reference is not None
        curves.setdefault(run["label"], {})[str(run["seed"])] = {
            "epochs": [record["epoch"] for record in run["history"]],
            "test": hypervolume_curve(run, "test", reference),
            "val": hypervolume_curve(run, "val", reference),
            "points": len(members_of(run["history"][-1], "test")),
        }
    for label, row in rows.items():
        per_seed = [first_reaching(c["epochs"], c["test"], target) for c in curves[label].values()]
        reached = [e for e in per_seed if e is not None]
        row["seed_epochs"] = per_seed
        row["seed_median"] = statistics.median(reached) if reached else None
        # speed apart from level: the first epoch within 5% of the method's own best mean HV
        row["to_own"] = first_reaching(row["epochs"], row["curve"], HV_TARGET * max(row["curve"]))
    reference = next(iter(rows.values()))["reference"]
    result = {"target": target, "rows": rows, "reference": reference}
    result["equal_points"] = equal_points(runs, rows, reference)
    return result, curves


def equal_points(runs: list[dict[str, Any]], rows: dict[str, Any], reference: list[float]) -> dict[str, Any]:
    """Two tasks: the last-epoch test HV of each set method with more points than the smallest set, on
    the P of its rays nearest the interior grid ((i + ½)/P, 1 − (i + ½)/P) (P: the smallest set's
    points), so that sets of different sizes are compared at one count; mean ± std over seeds."""
    sizes = [row["points"] for row in rows.values() if row["set"]]
    if not sizes or any(len(run["tasks"]) != 2 for run in runs):
        return {}
    count = min(sizes)
    grid = [((i + 0.5) / count, 1.0 - (i + 0.5) / count) for i in range(count)]
    out: dict[str, Any] = {"points": count, "rows": {}}
    for label, row in rows.items():
        if not row["set"] or row["points"] <= count:
            continue
        values = []
        for run in (r for r in runs if r["label"] == label):
            rays = run.get("rays")
            if not rays:
                break
            nearest = sorted({min(range(len(rays)), key=lambda j: math.dist(rays[j], g)) for g in grid})
            members = members_of(run["history"][-1], "test")
            objective = hv_objective(run)
            points = [[members[j][t][objective] for t in run["tasks"]] for j in nearest]
            values.append(hypervolume(points, reference))
        else:
            if values:
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                out["rows"][label] = (statistics.mean(values), spread, len(values))
    return out


def _cell(mean_std: tuple[float, float]) -> str:
    return f"{mean_std[0]:.4f} ± {mean_std[1]:.4f}"


def markdown(result: dict[str, Any], title: str, command: str) -> str:
    rows, target = result["rows"], result["target"]
    lines = [
        f"# {title}",
        "",
        f"Generated by `{command}`. Reference point {tuple(result['reference'])}; target: "
        f"{HV_TARGET:.0%} of the best final (last-epoch) mean test HV of the set methods = **{target:.4f}** "
        "(`ew` and `stl` are single models: one point each). `epochs to "
        "target`: the first epoch at which the method's mean test HV over seeds reaches it; `per seed`: "
        "each seed's own curve against the same target (median epoch; seeds that reach it); `to own "
        f"{HV_TARGET:.0%}`: the first epoch at which the mean curve reaches {HV_TARGET:.0%} of its own "
        "best mean HV (how fast a method gets near its own plateau, whatever its level).",
        "",
        f"| method | points | seeds | HV, best val epoch ↑ | HV, last epoch ↑ | epochs to target ↓ | per seed: median (reached) | to own {HV_TARGET:.0%} ↓ | ms / step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in sorted(rows.items(), key=lambda kv: -kv[1]["last"][0]):
        reached = sum(e is not None for e in row["seed_epochs"])
        median = "–" if row["seed_median"] is None else f"{row['seed_median']:g}"
        epochs = "–" if row["to_target"] is None else str(row["to_target"])
        lines.append(
            f"| `{label}` | {row['points']} | {row['seeds']} | {_cell(row['best'])} | {_cell(row['last'])} | "
            f"{epochs} | {median} ({reached}/{row['seeds']}) | {row['to_own']} | {row['time_ms']:.1f} |"
        )
    mtgd = {k: r for k, r in rows.items() if k.startswith("mtgd") and r["to_target"] is not None}
    others = {
        k: r
        for k, r in rows.items()
        if not k.startswith("mtgd") and k != "stl" and r["to_target"] is not None
    }
    lines.append("")
    if mtgd and others:
        best = min(mtgd, key=lambda k: mtgd[k]["to_target"])
        rival = min(others, key=lambda k: others[k]["to_target"])
        ratio = mtgd[best]["to_target"] / others[rival]["to_target"]
        lines.append(
            f"Convergence speed: the fastest `mtgd` variant, `{best}`, needs {mtgd[best]['to_target']} "
            f"epochs; the fastest other set method, `{rival}`, {others[rival]['to_target']}: ratio "
            f"**{ratio:.2f}** (the paper's claim, nearly two times faster, is a ratio near 0.5; `stl` is "
            "left out: it is not a set learner)."
        )
    elif others and any(k.startswith("mtgd") for k in rows):
        rival = min(others, key=lambda k: others[k]["to_target"])
        last = max(max(row["epochs"]) for row in rows.values())
        lines.append(
            f"Convergence speed: no `mtgd` variant's mean curve reaches the target within {last} epochs; "
            f"the fastest other set method, `{rival}`, reaches it at epoch {others[rival]['to_target']}: "
            f"ratio **> {last / others[rival]['to_target']:.2f}** (the paper's claim, nearly two times "
            "faster, is a ratio near 0.5)."
        )
    else:
        reaching = ", ".join(f"`{k}`" for k in (*mtgd, *others)) or "none"
        lines.append(
            f"Convergence speed: set methods reaching the target: {reaching}; no `mtgd` / other ratio."
        )
    plain, moved = rows.get("ls-sweep"), {k: r for k, r in rows.items() if k.startswith("mtgd")}
    if plain and moved:  # transfer's effect on speed: each mtgd variant against the same sweep without it
        lines += [
            "",
            "Transfer against no transfer (`ls-sweep`: the same members, scalarizations and optimizer, "
            f"no exchange), epochs to {HV_TARGET:.0%} of each one's own best mean HV: `ls-sweep` "
            f"{plain['to_own']}; "
            + ", ".join(
                f"`{k}` {r['to_own']} ({r['to_own'] / plain['to_own']:.2f}×)" for k, r in moved.items()
            )
            + ".",
        ]
    equal = result.get("equal_points") or {}
    if equal.get("rows"):
        P = equal["points"]
        lines += [
            "",
            f"At equal points (the sets above hold 1 to {max(r['points'] for r in rows.values())} "
            f"points, and more points cover more volume): last-epoch test HV of each larger set on its "
            f"{P} rays nearest the interior grid (i + ½)/{P} (the preferences of "
            f"`ls-sweep[preferences=interior]`), mean ± std over seeds:",
            "",
            f"| method | HV, {P} of its rays, last epoch ↑ | seeds |",
            "|---|---|---|",
        ]
        for label, (mean, std, n) in sorted(equal["rows"].items(), key=lambda kv: -kv[1][0]):
            lines.append(f"| `{label}` | {mean:.4f} ± {std:.4f} | {n} |")
    lines += ["", "![hypervolume per epoch](hypervolume.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="a `mtlopt compare --out` directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="Hypervolume convergence")
    parser.add_argument("--order", default="", help="labels first, comma-separated")
    parser.add_argument(
        "--no-summary",
        action="store_true",
        help="copy only hypervolume.png, not the summary and its plots (RUNS_DIR is committed itself)",
    )
    args = parser.parse_args()
    order = [label for label in args.order.split(",") if label]
    result, curves = study(args.runs, order)
    args.out.mkdir(parents=True, exist_ok=True)
    command = f"python tools/hv_study.py {args.runs} --out {args.out}"
    (args.out / "study.md").write_text(markdown(result, args.title, command) + "\n")
    (args.out / "curves.json").write_text(json.dumps(curves, separators=(",", ":")) + "\n")
    names = ["hypervolume.png"]
    if not args.no_summary:  # the summary with every plot it shows
        names += ["summary.md", "summary.csv", *(p.name for p in sorted(args.runs.glob("*.png")))]
    for name in dict.fromkeys(names):
        shutil.copy2(args.runs / name, args.out / name)
    print(f"wrote {args.out / 'study.md'}")


if __name__ == "__main__":
    main()
