"""The speed suite's acceptance targets (the issues' numbers), judged from a ``mtlopt speed`` report.

    mtlopt speed --budget 120 --out docs/benchmarks/speed
    .venv/bin/python tools/speed_targets.py docs/benchmarks/speed

reads ``OUT/speed.json``, judges every target (the measured value, whether it is met, and when not, why,
from the forward and backward shares measured in the same run), and writes the targets into
``OUT/speed.json`` and as the "Targets" section of ``OUT/speed.md``. The targets are the project's, not
the library's: they live here, outside the installed package.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from mtlopt.benchmarks.speed import METHODS, ConfigResult, SpeedReport, load_report, markdown, report_json

ANCHOR_SMALL = ("lenet", 2, 256)  # two-task LeNet, batch 256
ANCHOR_LARGE = ("lenet", 40, 64)  # 40-task small CNN, batch 64
LOSS_METHODS = ("dwa", "rlw", "gls", "si", "imtl-l", "stch")  # issue 18: ≤ 1.05× EW at K = 2 and 40


def _find(report: SpeedReport, key: tuple[str, int, int]) -> ConfigResult | None:
    return next((c for c in report.configs if (c.model, c.tasks, c.batch) == key), None)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _shares(config: ConfigResult) -> tuple[float, float] | None:
    forward = config.rows["forward-only"].ratio
    if forward is None:
        return None
    return forward, max(1.0 - forward, 0.0)


def evaluate_targets(report: SpeedReport) -> list[dict[str, str]]:
    """The acceptance targets, each with the measured value and whether it is met (and why not)."""
    targets: list[dict[str, str]] = []

    def add(target: str, anchor: str, value: float | None, limit: float, unit: str, why: str) -> None:
        if value is None:
            targets.append(
                {"target": target, "anchor": anchor, "measured": "not measured", "met": "—", "note": why}
            )
            return
        met = value <= limit
        shown = f"{value:.3g} {unit}".strip()
        targets.append(
            {
                "target": target,
                "anchor": anchor,
                "measured": shown,
                "met": "yes" if met else "**no**",
                "note": "" if met else why,
            }
        )

    forty = [row for row in report.solvers if row.tasks == 40 and row.solver.startswith("mtlopt")]
    if forty:
        row = forty[0]
        worst = max(max(row.excess), max(row.certified or [0.0]))
        median_ms = 1e3 * statistics.median(row.times)
        met = worst <= 1e-6 and median_ms <= 1.0
        targets.append(
            {
                "target": "min-norm solve at K = 40 (Gramian given): within 1e-6 of the optimum, ≤ 1 ms",
                "anchor": "official solver 0.3–1 s; TorchJD 6% and LibMTL 279% above the optimum",
                "measured": f"{median_ms:.3f} ms (median), certified excess ≤ {worst:.1e}",
                "met": "yes" if met else "**no**",
                "note": ""
                if met
                else "NumPy dispatch per active-set iteration (about 34 iterations at K = 40)",
            }
        )
    else:
        add("min-norm solve at K = 40", "", None, 0, "", "the solver table did not include K = 40")

    small, large = _find(report, ANCHOR_SMALL), _find(report, ANCHOR_LARGE)
    missing = "configuration not in this run (lenet K = {} batch {})"
    for config, limit, anchor, key in (
        (small, 1.03, "LibMTL MGDA-UB 1.0×", ANCHOR_SMALL),
        (large, 1.10, "LibMTL MGDA-UB 1.33×", ANCHOR_LARGE),
    ):
        value = config.rows["mgda-ub"].ratio if config and "mgda-ub" in config.rows else None
        why = (
            missing.format(key[1], key[2])
            if config is None
            else (
                "beyond EW's single backward pass: the hooks that collect each task's gradient "
                "w.r.t. Z, the K×K Gramian of those (K·B·D values) and the solve, one host "
                "synchronization; at this step size they are a few per cent"
            )
        )
        add(f"MGDA-UB step ≤ {limit:.2f}× EW at K = {key[1]}", anchor, value, limit, "× EW", why)

    value = small.rows["mgda"].ratio if small and "mgda" in small.rows else None
    why = missing.format(2, 256)
    if small is not None and (shares := _shares(small)):
        f, b = shares
        why = (
            f"exact MGDA needs one backward pass per task through the encoder; the forward is {f:.2f}× "
            f"and one backward {b:.2f}× an EW step (measured here), so two backward passes alone cost "
            f"{f + 2 * b:.2f}× EW"
        )
    add("exact MGDA step ≤ 1.3× EW at K = 2", "TorchJD/LibMTL 1.6–1.8×", value, 1.3, "× EW", why)

    if large is not None and "libmtl-mgda" in large.rows and large.rows["libmtl-mgda"].times:
        ratio = _median(large.pair_ratio("mgda", "libmtl-mgda"))
        ours_peak, their_peak = large.rows["mgda"].peak_bytes, large.rows["libmtl-mgda"].peak_bytes
        add(
            "exact MGDA step at K = 40 ≤ 0.75× LibMTL's time",
            "27–65× EW",
            ratio,
            0.75,
            "× LibMTL",
            "see the K = 40 rows",
        )
        if ours_peak is not None and their_peak is not None:
            add(
                "exact MGDA peak memory at K = 40 ≤ LibMTL's",
                "",
                ours_peak / their_peak,
                1.0,
                "× LibMTL",
                "the K×P Jacobian is held once by both; the rest is the retained graph",
            )
    else:
        add(
            "exact MGDA step at K = 40 ≤ 0.75× LibMTL's time",
            "27–65× EW",
            None,
            0.75,
            "",
            "LibMTL not measured at lenet K = 40 batch 64",
        )

    value = small.rows["mao"].ratio if small and "mao" in small.rows else None
    why = missing.format(2, 256)
    if small is not None and (shares := _shares(small)):
        f, b = shares
        why = (
            f"MAO needs each task's gradient of the shared parameters: K backward passes through the "
            f"encoder, {f + 2 * b:.2f}× EW for the passes alone at K = 2 (forward {f:.2f}×, backward {b:.2f}×)"
        )
    add("MAO step ≤ 1.3× EW at K = 2", "", value, 1.3, "× EW", why)

    value = small.rows["population"].ratio if small and "population" in small.rows else None
    why = missing.format(2, 256)
    if small is not None:
        vmapped = small.rows.get("population-vmap")
        why = (
            "5 models do 5× the arithmetic of one; on a CPU thread that work is serial, and vmap only "
            "batches the kernels"
            + (f" ({vmapped.ratio:.2f}× EW vmapped)" if vmapped is not None and vmapped.ratio else "")
            + "; the target needs an accelerator, where one batched kernel replaces five"
        )
    add("population of 5 LeNets ≤ 2.5× one LeNet step", "", value, 2.5, "× EW", why)

    for config, key in ((small, ANCHOR_SMALL), (large, ANCHOR_LARGE)):
        ratios = {
            name: config.rows[name].ratio if config and name in config.rows else None for name in LOSS_METHODS
        }
        measured = [name for name, ratio in ratios.items() if ratio is not None]
        target = f"loss-level methods ({', '.join(LOSS_METHODS)}) step ≤ 1.05× EW at K = {key[1]}"
        if not measured or config is None:
            add(target, "", None, 1.05, "", missing.format(key[1], key[2]))
            continue
        above = [name for name in measured if ratios[name] > 1.05]  # type: ignore[operator]
        shown = ", ".join(f"{name} {ratios[name]:.2f}" for name in measured)
        why = "; ".join(
            f"{name}: IQR {iqr[0]:.2f}–{iqr[1]:.2f} over {len(config.rows[name].ratios)} rounds"
            for name in above
            if (iqr := config.rows[name].ratio_iqr) is not None
        )
        alike = [  # rows whose step is EW's arithmetic: one forward, one backward, the optimizer step
            row.ratio
            for name, row in config.rows.items()
            if row.ratio is not None
            and (
                name in (*LOSS_METHODS, "famo-no-update")
                or (name in METHODS and METHODS[name].counterpart in LOSS_METHODS)
            )
        ]
        if above and len(alike) > 1:
            why += (
                f"; the {len(alike)} rows doing EW's arithmetic (one backward pass of weighted losses) "
                f"read {min(alike):.2f}–{max(alike):.2f}× EW in this configuration: the machine's load, "
                "which the paired timing of tools/speed_paired.py reduces"
            )
        targets.append(
            {
                "target": target,
                "anchor": "TorchJD/LibMTL rows beside them",
                "measured": f"{shown} × EW"
                + ("" if len(measured) == len(LOSS_METHODS) else " (not all measured)"),
                "met": "**no**" if above else "yes",
                "note": why,
            }
        )
    return targets


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the directory of a `mtlopt speed` report (speed.json, speed.md)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    report = load_report(out / "speed.json")
    report.targets = evaluate_targets(report)
    (out / "speed.json").write_text(json.dumps(report_json(report), indent=1) + "\n")
    (out / "speed.md").write_text(markdown(report))
    for target in report.targets:
        print(f"{target['met']:>6}  {target['target']}: {target['measured']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
