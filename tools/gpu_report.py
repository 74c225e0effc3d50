"""The Python side of scripts/gpu_check.sh: the environment, the data, and the report of one GPU check.

    python tools/gpu_report.py setup --device cuda --work WORK [--data-root DIR] [--no-download]
                                     [--max-sources N] [--sizes A,B,C] [--no-data]
    python tools/gpu_report.py report --work WORK --out OUT [--mode gpu] [--budget 480] [--seconds S]

``setup`` writes ``WORK/env.json`` (the machine, the versions, the packages), ``WORK/methods.txt`` (the
benchmark registry's methods: "every method" of stage c) and, unless ``--no-data``,
builds the MultiFashion composites of stages c and d into mtlopt's cache (``WORK/data.json`` says
whether Fashion-MNIST was found): one process, one import of torch.

``report`` reads what the stages left in WORK (``stages/*.tsv`` and ``*.cmd``, ``logs/``, the pytest
JUnit files, ``speed-k*/speed.json``, ``amp-*/runs/*/seed*/result.json``, ``pareto-*/``), writes
``OUT/report.md`` and ``OUT/report.json`` and prints a summary. It needs only the standard library (torch
only to read a checkpoint of a run stopped at the deadline, when torch is importable). Its exit status is
1 when a stage failed (a time-out is reported, not counted as a failure), else 0.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

POPULATION_TARGET = 2.5  # a population of 5 in at most 2.5× one EW step (design brief, issue 21)
PACKAGES = (
    "numpy", "scipy", "pytest", "pytest-xdist", "hypothesis", "moocore", "quadprog", "mlxtend",
    "matplotlib", "scikit-learn", "tqdm", "pymoo", "torch_geometric", "torchjd",
)  # fmt: skip


# --- env ------------------------------------------------------------------------------------------------


def _run(command: list[str], cwd: str | None = None) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment(device: str, root: Path) -> dict[str, Any]:
    import torch

    import mtlopt

    info: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "requested_device": device,
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "devices": [],
        "mtlopt": mtlopt.__version__,
        "mtlopt_path": str(Path(mtlopt.__file__).parent),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["devices"].append(
                {
                    "name": props.name,
                    "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "multiprocessors": props.multi_processor_count,
                }
            )
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    info["nvidia_smi"] = _run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    )
    commit = _run(["git", "describe", "--always", "--dirty"], cwd=str(root))
    carried = root / "runs" / "gpu_carry" / "commit.txt"
    if commit is None and carried.is_file():
        commit = carried.read_text().strip() + " (from runs/gpu_carry/commit.txt)"
    info["commit"] = commit
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    info["packages"] = packages
    return info


# --- data -----------------------------------------------------------------------------------------------


def build_data(args: argparse.Namespace) -> dict[str, Any]:
    """Build (into the cache) the MultiFashion composites that stages c and d read: ``sener`` as the
    compare command loads it (no --sizes) and ``pmtl`` with --sizes."""
    from mtlopt.benchmarks.data.sources import DataUnavailable
    from mtlopt.benchmarks.interfaces import DataOptions
    from mtlopt.benchmarks.suite import get_benchmark

    sizes: tuple[int, int, int] | None = None
    if args.sizes:
        train, val, test = (int(s) for s in args.sizes.split(","))
        sizes = (train, val, test)
    report: dict[str, Any] = {"available": False, "protocols": {}}
    benchmark = get_benchmark("multifashion")
    for protocol in ("sener", "pmtl"):
        began = time.perf_counter()
        options = DataOptions(
            data_root=args.data_root,
            download=not args.no_download,
            max_sources=args.max_sources,
            sizes=sizes if protocol == "pmtl" else None,
        )
        try:
            data = benchmark.load(protocol, options)
        except DataUnavailable as error:
            report["error"] = str(error)
            return report
        report["protocols"][protocol] = {
            "sizes": {split: data.size(split) for split in ("train", "val", "test")},
            "seconds": round(time.perf_counter() - began, 2),
        }
    report["available"] = True
    return report


# --- report: reading the stages ----------------------------------------------------------------------------


def read_stages(work: Path) -> list[dict[str, Any]]:
    stages = []
    for path in sorted((work / "stages").glob("*.tsv")):
        name, status, rc, seconds, limit, note = (path.read_text().rstrip("\n").split("\t") + [""] * 6)[:6]
        command = path.with_suffix(".cmd")
        stages.append(
            {
                "name": name,
                "status": status,
                "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                "seconds": int(seconds or 0),
                "limit": int(limit or 0),
                "note": note,
                "command": command.read_text().strip() if command.is_file() else "",
            }
        )
    return stages


def _option(command: str, name: str) -> str | None:
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, word in enumerate(words[:-1]):
        if word == name:
            return words[i + 1]
    return None


_LOG_RESULT = re.compile(
    r"^(?:\[gw\d+\] \[\s*\d+%\] (?P<a>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (?P<ida>\S+)"
    r"|(?P<idb>\S+::\S+) (?P<b>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS))"
)
_SUMMARY = re.compile(r"^=+ (.*\d+ \w+.*) in [\d.]+s")


def read_tests(work: Path, part: str) -> dict[str, Any] | None:
    """Counts, failures and skip reasons of one pytest stage (the JUnit file, else the -v log)."""
    junit, log = work / f"tests-{part}.xml", work / "logs" / f"tests-{part}.log"
    result: dict[str, Any] = {
        "passed": 0,
        "failed": 0,
        "errors": 0,
        "skipped": 0,
        "failures": [],
        "skips": {},
    }
    if junit.is_file():
        try:
            root = ET.parse(junit).getroot()
        except ET.ParseError:
            root = None
        if root is not None:
            for case in root.iter("testcase"):
                test = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
                child = next(iter(case), None)
                tag = child.tag if child is not None else None
                if tag in ("failure", "error"):
                    assert child is not None
                    result["failed" if tag == "failure" else "errors"] += 1
                    message = (child.get("message") or child.text or "").strip().splitlines()
                    result["failures"].append(f"{test}: {message[0][:200] if message else tag}")
                elif tag == "skipped":
                    assert child is not None
                    result["skipped"] += 1
                    reason = (child.get("message") or "").strip()
                    reason = "CPU only (cpu_only marker)" if reason.startswith("CPU only") else reason[:120]
                    result["skips"][reason] = result["skips"].get(reason, 0) + 1
                else:
                    result["passed"] += 1
            result["source"] = "junit"
            return result
    if not log.is_file():
        return None
    outcomes: dict[str, str] = {}
    summary = None
    for line in log.read_text(errors="replace").splitlines():
        match = _LOG_RESULT.match(line)
        if match:
            outcomes[match.group("ida") or match.group("idb")] = match.group("a") or match.group("b")
        found = _SUMMARY.match(line)
        if found:
            summary = found.group(1)
    for test, outcome in outcomes.items():
        if outcome in ("PASSED", "XFAIL", "XPASS"):
            result["passed"] += 1
        elif outcome == "SKIPPED":
            result["skipped"] += 1
        else:
            result["failed" if outcome == "FAILED" else "errors"] += 1
            result["failures"].append(test)
    result["source"] = "log" + (f" ({summary})" if summary else " (the run was stopped: no summary)")
    return result


def read_speed(work: Path) -> list[dict[str, Any]]:
    """One entry per configuration of every speed stage: each method's step time and ratio to EW."""
    configs = []
    for path in sorted(work.glob("speed-k*/speed.json"), key=lambda p: int(p.parent.name[7:] or 0)):
        data = json.loads(path.read_text())
        env = data.get("environment", {})
        for config in data.get("configs", []):
            rows = {}
            for name, row in config["rows"].items():
                ratios, times = row.get("ratios") or [], row.get("times") or []
                iqr = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) >= 2 else None
                rows[name] = {
                    "status": row.get("status"),
                    "note": row.get("note", ""),
                    "step_ms": 1e3 * statistics.median(times) if times else None,
                    "ratio": statistics.median(ratios) if ratios else None,
                    "ratio_iqr": [iqr[0], iqr[2]] if iqr else None,
                    "peak_mib": row["peak_bytes"] / 2**20 if row.get("peak_bytes") else None,
                    "memory_ratio": row.get("memory_ratio"),
                }
            configs.append(
                {
                    "model": config["model"],
                    "tasks": config["tasks"],
                    "batch": config["batch"],
                    "rounds": config["rounds"],
                    "device": env.get("device"),
                    "threads": env.get("threads"),
                    "rows": rows,
                }
            )
    return configs


def _non_finite(value: Any, where: str = "") -> str | None:
    """The path of the first NaN or infinity in a JSON value (None: all finite)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "value"
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _non_finite(item, f"{where}[{i}]")
            if found:
                return found
    return None


def _test_summary(final: dict[str, Any]) -> str:
    if "test" in final:
        return ", ".join(
            f"{task} {m['accuracy']:.1f}%" for task, m in final["test"].items() if "accuracy" in m
        )
    if "test_members" in final:
        accuracy = [[m.get("accuracy") for m in member.values()] for member in final["test_members"]]
        best = [max(a[t] for a in accuracy) for t in range(len(accuracy[0]))] if accuracy else []
        return f"{len(accuracy)} members, best " + "/".join(f"{b:.1f}%" for b in best)
    return ""


TRAIN_LOSSES = ("loss", "member_loss")


def _split_train_log(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metrics of a run (every validation and test number, the hypervolumes, the training losses)
    and its diagnostics (the other per-epoch means of the training log: task weights, ...).

    The diagnostics are checked apart: a step that a GradScaler skips (fp16 overflow) reports NaN task
    weights by design (``mtlopt.backward``), and the trainer's epoch mean of them is then NaN.
    """
    history = result.get("history") or []
    records: list[dict[str, Any]] = [{k: v for k, v in r.items() if k != "train"} for r in history]
    trains: list[dict[str, Any]] = [r.get("train") or {} for r in history]
    metrics = {
        "final": result.get("final"),
        "history": records,
        "train": [{k: v for k, v in t.items() if k in TRAIN_LOSSES} for t in trains],
    }
    diagnostics = {"train": [{k: v for k, v in t.items() if k not in TRAIN_LOSSES} for t in trains]}
    return metrics, diagnostics


def read_amp(work: Path, stage: dict[str, Any] | None, amp: str) -> dict[str, Any] | None:
    folder = work / f"amp-{amp}"
    if stage is None or stage["status"] == "skipped":
        return None
    runs = []
    for run in sorted((folder / "runs").glob("*/seed*")) if (folder / "runs").is_dir() else []:
        result_path = run / "result.json"
        entry: dict[str, Any] = {"run": run.parent.name}
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            metrics, diagnostics = _split_train_log(result)
            bad = _non_finite(metrics)
            entry.update(
                status="finite" if bad is None else "NON-FINITE",
                where=bad,
                diagnostic=_non_finite(diagnostics),
                test=_test_summary(result.get("final", {})),
                step_ms=(result.get("time_per_step_ms") or {}).get("median"),
                amp=result.get("environment", {}).get("amp"),
                device=result.get("environment", {}).get("device"),
            )
        else:
            entry.update(
                status="unfinished (stopped at the deadline)"
                if (run / "checkpoint.pt").exists()
                else "started"
            )
        runs.append(entry)
    methods = (_option(stage["command"], "--methods") or "") if stage else ""
    names = [m.split("[")[0] for m in methods.split(",") if m]
    missing = [n for n in names if not any(r["run"] == n or r["run"].startswith(n + "_") for r in runs)]
    return {
        "runs": runs,
        "not_run": missing,
        "all_finite": bool(runs) and not missing and all(r["status"] == "finite" for r in runs),
    }


_EPOCH = re.compile(r"epoch (\d+)/(\d+): test hypervolume (\S+) \(([\d.]+) s\)")


def _checkpoint_flag(path: Path) -> bool | None:
    """``vectorized`` from a run's checkpoint (a run stopped before it wrote result.json)."""
    try:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # no torch here, or a checkpoint being written when the run was stopped
        return None

    def find(value: Any) -> bool | None:
        if isinstance(value, dict):
            if isinstance(value.get("vectorized"), bool):
                return value["vectorized"]
            for item in value.values():
                found = find(item)
                if found is not None:
                    return found
        return None

    return find(state.get("runner"))


def read_pareto(work: Path, stage: dict[str, Any] | None, method: str) -> dict[str, Any] | None:
    folder = work / f"pareto-{method}"
    if stage is None or stage["status"] == "skipped":
        return None
    planned = _option(stage["command"], "--epochs")
    entry: dict[str, Any] = {"epochs_planned": int(planned) if planned else None}
    result_path = folder / "result.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        history = result.get("history", [])
        entry.update(
            finished=True,
            vectorized=result.get("vectorized"),
            hv=[r.get("test_hypervolume") for r in history],
            val_hv=[r.get("val_hypervolume") for r in history],
            seconds=[r.get("seconds") for r in history],
            step_ms=(result.get("time_per_step_ms") or {}).get("median"),
            reference=result.get("hypervolume_reference"),
        )
    else:
        log = work / "logs" / f"pareto-{method}.log"
        epochs = (
            [m.groups() for m in _EPOCH.finditer(log.read_text(errors="replace"))] if log.is_file() else []
        )
        entry.update(
            finished=False,
            vectorized=_checkpoint_flag(folder / "checkpoint.pt")
            if (folder / "checkpoint.pt").is_file()
            else None,
            hv=[float(e[2]) for e in epochs],
            seconds=[float(e[3]) for e in epochs],
        )
    entry["epochs_reached"] = len(entry["hv"])
    entry["final_hv"] = entry["hv"][-1] if entry["hv"] else None
    return entry


# --- report: writing --------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def population_target(speed: list[dict[str, Any]]) -> dict[str, Any]:
    """The population of 5 against one EW step: loop and vmap, at each K measured."""
    target: dict[str, Any] = {"target": POPULATION_TARGET}
    for config in speed:
        rows = config["rows"]
        loop, vmap = (rows.get(n, {}).get("ratio") for n in ("population", "population-vmap"))
        target[f"K={config['tasks']}"] = {
            "loop": loop,
            "vmap": vmap,
            "met": None
            if loop is None and vmap is None
            else min(r for r in (loop, vmap) if r) <= POPULATION_TARGET,
        }
    return target


def build_report(work: Path, mode: str, budget: int, seconds: int | None) -> dict[str, Any]:
    env_path = work / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    data_path = work / "data.json"
    stages = read_stages(work)
    by_name = {s["name"]: s for s in stages}
    speed = read_speed(work)
    report: dict[str, Any] = {
        "mode": mode,
        "budget_s": budget,
        "seconds": seconds,
        "environment": env,
        "data": json.loads(data_path.read_text()) if data_path.is_file() else None,
        "stages": stages,
        "tests": {part: read_tests(work, part) for part in ("core", "rest")},
        "speed": speed,
        "population_target": population_target(speed),
        "amp": {amp: read_amp(work, by_name.get(f"amp-{amp}"), amp) for amp in ("fp16", "bf16")},
        "pareto": {m: read_pareto(work, by_name.get(f"pareto-{m}"), m) for m in ("mtgd", "ls-sweep")},
    }
    report["skipped_for_time"] = [
        s["name"] for s in stages if s["status"] == "skipped" and s["note"].startswith("time")
    ]
    report["failed_stages"] = [s["name"] for s in stages if s["status"] == "failed"]
    return report


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    device = (
        env.get("devices", [{}])[0].get("name") if env.get("devices") else env.get("requested_device", "?")
    )
    lines = [
        f"# mtlopt GPU check: {device} ({report['mode']} mode)",
        "",
        f"- date (UTC): {env.get('date_utc', '?')}; wall time {report['seconds']} s of a {report['budget_s']} s budget",
        f"- device: {device}"
        + (
            f", compute capability {env['devices'][0]['capability']}, {env['devices'][0]['memory_gib']} GiB"
            if env.get("devices")
            else ""
        )
        + (f"; nvidia-smi: {env['nvidia_smi']}" if env.get("nvidia_smi") else ""),
        f"- torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}), "
        f"Python {env.get('python', '?')}, mtlopt {env.get('mtlopt', '?')} at commit {env.get('commit')}; "
        f"{env.get('cpus')} CPUs",
        "- packages: "
        + ", ".join(f"{k} {v}" if v else f"{k} absent" for k, v in (env.get("packages") or {}).items()),
        "- made by `bash scripts/gpu_check.sh` (docs/benchmarks/gpu/README.md); stage logs in logs.tar.gz",
        "",
        "## Stages",
        "",
        "| stage | status | seconds | limit (s) | note |",
        "|---|---|---|---|---|",
    ]
    for s in report["stages"]:
        note = s["note"] or ("" if s["status"] == "ok" else f"exit status {s['rc']}")
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {s['limit']} | {note} |")
    if report["skipped_for_time"]:
        lines += ["", f"Skipped for time: {', '.join(report['skipped_for_time'])}."]
    data = report.get("data")
    if data and not data.get("available"):
        lines += ["", f"Data: {data.get('error', 'unavailable')}"]

    lines += ["", "## a. Tests (MTLOPT_TEST_DEVICE=" + str(env.get("requested_device")) + ")", ""]
    lines += ["| part | passed | failed | errors | skipped | read from |", "|---|---|---|---|---|---|"]
    for part, tests in report["tests"].items():
        if tests is None:
            lines.append(f"| {part} | — | — | — | — | not run |")
            continue
        lines.append(
            f"| {part} | {tests['passed']} | {tests['failed']} | {tests['errors']} | {tests['skipped']} | {tests['source']} |"
        )
    for part, tests in report["tests"].items():
        if tests and tests["failures"]:
            lines += ["", f"Failures ({part}):", ""] + [f"- `{f}`" for f in tests["failures"][:60]]
            if len(tests["failures"]) > 60:
                lines.append(f"- ... and {len(tests['failures']) - 60} more (logs.tar.gz)")
        if tests and tests["skips"]:
            lines += [
                "",
                f"Skip reasons ({part}): " + "; ".join(f"{n}× {r}" for r, n in tests["skips"].items()),
            ]

    lines += ["", "## b. Speed: step time relative to EW (same run, interleaved rounds)", ""]
    if not report["speed"]:
        lines.append("No speed results (see the stages above).")
    for config in report["speed"]:
        ew = config["rows"].get("ew", {}).get("step_ms")
        lines += [
            f"### {config['model']}, K = {config['tasks']}, batch {config['batch']} "
            f"({config['device']}, {config['threads']} thread(s), {config['rounds']} rounds; EW {_fmt(ew, 3)} ms)",
            "",
            "| method | status | ms / step | × EW (median) | IQR | peak MiB | × EW memory |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in config["rows"].items():
            iqr = row["ratio_iqr"]
            lines.append(
                f"| {name} | {row['status']}{' (' + row['note'] + ')' if row['note'] else ''} | "
                f"{_fmt(row['step_ms'], 3)} | {_fmt(row['ratio'])} | "
                f"{'—' if not iqr else f'{iqr[0]:.2f}–{iqr[1]:.2f}'} | {_fmt(row['peak_mib'], 1)} | "
                f"{_fmt(row['memory_ratio'])} |"
            )
        lines.append("")
    target = report["population_target"]
    for key, value in target.items():
        if key.startswith("K="):
            verdict = {True: "met", False: "**not met**", None: "not measured"}[value["met"]]
            lines.append(
                f"- population of 5 ≤ {POPULATION_TARGET}× one EW step at {key}: loop {_fmt(value['loop'])}×, "
                f"vmap {_fmt(value['vmap'])}× ({verdict})"
            )

    lines += ["", "## c. Mixed precision: every method, one epoch of MultiFashion sener", ""]
    for amp, result in report["amp"].items():
        if result is None:
            stage = next((s for s in report["stages"] if s["name"] == f"amp-{amp}"), None)
            lines.append(f"- {amp}: not run" + (f" ({stage['note']})" if stage and stage["note"] else ""))
            continue
        finite = sum(r["status"] == "finite" for r in result["runs"])
        lines.append(
            f"- **{amp}**: {finite} of {len(result['runs'])} runs finished with finite metrics"
            + (f"; not run: {', '.join(result['not_run'])}" if result["not_run"] else "")
            + ("; all finite" if result["all_finite"] else "")
            + (
                f"; {noted} run(s) log NaN/inf diagnostics (task weights of the steps a GradScaler skipped)"
                if (noted := sum(bool(r.get("diagnostic")) for r in result["runs"]))
                else ""
            )
        )
    runs = {amp: {r["run"]: r for r in (res or {}).get("runs", [])} for amp, res in report["amp"].items()}
    names = sorted(set(runs["fp16"]) | set(runs["bf16"]))
    if names:
        lines += [
            "",
            "| run | fp16 | fp16 test | fp16 ms/step | bf16 | bf16 test | bf16 ms/step |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in names:
            cells = []
            for amp in ("fp16", "bf16"):
                r = runs[amp].get(name)
                if r is None:
                    cells += ["—", "", ""]
                else:
                    status = r["status"] + (f" at {r['where']}" if r.get("where") else "")
                    if r.get("diagnostic"):
                        status += f" (diagnostic NaN/inf: {r['diagnostic']})"
                    cells += [status, r.get("test", ""), _fmt(r.get("step_ms"), 1)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")

    lines += ["", "## d. Populations on MultiFashion pmtl (one seed, with the time left)", ""]
    for method, result in report["pareto"].items():
        if result is None:
            stage = next((s for s in report["stages"] if s["name"] == f"pareto-{method}"), None)
            lines.append(f"- {method}: not run" + (f" ({stage['note']})" if stage and stage["note"] else ""))
            continue
        hv = result["hv"]
        per_epoch = statistics.median(result["seconds"]) if result["seconds"] else None
        lines.append(
            f"- **{method}**: {result['epochs_reached']} of {result['epochs_planned']} epochs"
            f"{'' if result['finished'] else ' (stopped at the deadline)'}, vectorized {result['vectorized']}, "
            f"{_fmt(per_epoch, 1)} s per epoch; test hypervolume after the last epoch {_fmt(result['final_hv'], 4)}"
        )
        if hv:
            lines.append("  - test hypervolume per epoch: " + ", ".join(_fmt(h, 4) for h in hv))
    lines += ["", "<details><summary>The stages' commands</summary>", ""]
    lines += [f"- {s['name']}: `{s['command']}`" for s in report["stages"] if s["command"]]
    lines += ["", "</details>"]
    verdict = (
        "failed stages: " + ", ".join(report["failed_stages"])
        if report["failed_stages"]
        else "no stage failed"
    )
    lines += ["", f"Verdict: {verdict}."]
    return "\n".join(lines) + "\n"


def summary(report: dict[str, Any]) -> str:
    env = report["environment"]
    device = (
        env.get("devices", [{}])[0].get("name") if env.get("devices") else env.get("requested_device", "?")
    )
    lines = [
        f"== mtlopt GPU check ({report['mode']}): {device}, torch {env.get('torch')}, "
        f"{report['seconds']} s of {report['budget_s']} s =="
    ]
    lines += [
        f"  {s['name']:<16} {s['status']:<8} {s['seconds']:>4} s / {s['limit']:>4} s  {s['note']}"
        for s in report["stages"]
    ]
    for part, tests in report["tests"].items():
        if tests:
            lines.append(
                f"  tests {part}: {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                f"{tests['skipped']} skipped"
            )
    for config in report["speed"]:
        rows = config["rows"]
        lines.append(
            f"  speed K={config['tasks']}: EW {_fmt(rows.get('ew', {}).get('step_ms'), 3)} ms; "
            + ", ".join(f"{n} {_fmt(r['ratio'])}×" for n, r in rows.items() if n != "ew")
        )
    for key, value in report["population_target"].items():
        if key.startswith("K="):
            lines.append(
                f"  population/EW at {key}: loop {_fmt(value['loop'])}×, vmap {_fmt(value['vmap'])}× "
                f"(target ≤ {POPULATION_TARGET}×: {value['met']})"
            )
    for amp, result in report["amp"].items():
        if result:
            finite = sum(r["status"] == "finite" for r in result["runs"])
            noted = sum(bool(r.get("diagnostic")) for r in result["runs"])
            lines.append(
                f"  amp {amp}: {finite}/{len(result['runs'])} runs with finite metrics, not run: "
                f"{', '.join(result['not_run']) or 'none'}; NaN/inf diagnostics in {noted}"
            )
    for method, result in report["pareto"].items():
        if result:
            lines.append(
                f"  pareto {method}: {result['epochs_reached']}/{result['epochs_planned']} epochs, "
                f"vectorized {result['vectorized']}, test HV {_fmt(result['final_hv'], 4)}"
            )
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    setup = commands.add_parser("setup", help="WORK/env.json and WORK/data.json (building the data)")
    setup.add_argument("--device", default="cuda")
    setup.add_argument("--root", default=".")
    setup.add_argument("--work", required=True)
    setup.add_argument("--no-data", action="store_true", help="do not look for or build the data")
    setup.add_argument("--data-root")
    setup.add_argument("--no-download", action="store_true")
    setup.add_argument("--max-sources", type=int)
    setup.add_argument("--sizes")
    rep = commands.add_parser("report", help="report.md and report.json from a work folder")
    rep.add_argument("--work", required=True)
    rep.add_argument("--out", required=True)
    rep.add_argument("--mode", default="gpu")
    rep.add_argument("--budget", type=int, default=480)
    rep.add_argument("--seconds", type=int)
    args = parser.parse_args(argv)

    if args.command == "setup":
        work = Path(args.work)
        info = environment(args.device, Path(args.root).resolve())
        (work / "env.json").write_text(json.dumps(info, indent=1))
        from mtlopt.benchmarks.methods import METHODS

        (work / "methods.txt").write_text(",".join(METHODS))  # "every method" of stage c
        print(json.dumps(info, indent=1))
        if not args.no_data:
            built = build_data(args)
            (work / "data.json").write_text(json.dumps(built, indent=1))
            print(json.dumps(built, indent=1))
        return 0
    report = build_report(Path(args.work), args.mode, args.budget, args.seconds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    print(summary(report))
    return 1 if report["failed_stages"] else 0


if __name__ == "__main__":
    sys.exit(main())
