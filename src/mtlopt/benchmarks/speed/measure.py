"""One run of the speed suite: every configuration measured (agreement, warm-up, memory, interleaved
timing), then the min-norm solver table."""

from __future__ import annotations

import contextlib
import datetime
import platform
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtlopt

from . import peers
from .agreement import agreement
from .catalog import METHODS, REFERENCE_METHODS
from .results import ConfigResult, MethodResult, SolverRow, SpeedConfig, SpeedReport
from .setups import MODELS, ModelSpec, Step, make_setup
from .solvers import solver_table
from .timing import StepTimeout, peak_memory, time_limit, timed


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available")
    return device


def _describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(error).__name__}: {first}"[:200]


def measure_config(
    config: SpeedConfig,
    spec: ModelSpec,
    tasks: int,
    batch: int,
    methods: Sequence[str],
    device: torch.device,
    log: Callable[[str], None] = lambda line: None,
) -> ConfigResult:
    """Measure every method of one configuration (agreement, warm-up, memory, interleaved timing)."""
    setup = make_setup(config, spec, tasks, batch, device)
    names = list(dict.fromkeys([*REFERENCE_METHODS, *methods]))
    rows = {name: MethodResult(spec.name, tasks, batch, name, METHODS[name].peer) for name in names}
    steps: dict[str, Step] = {}
    for name in names:
        method = METHODS[name]
        reason = method.skip(setup)
        if reason:
            rows[name].status, rows[name].note = "skipped", reason
            continue
        try:
            steps[name] = method.build(setup)
        except Exception as error:  # a peer that cannot handle this model, out of memory, ...
            rows[name].status, rows[name].note = "failed", _describe_error(error)
    for name in names:
        method = METHODS[name]
        if method.reference is None or name not in steps:
            continue
        try:
            with time_limit(config.step_timeout, f"{name} (agreement check)"):
                rows[name].agreement = agreement(setup, method)
        except Exception as error:
            rows[name].note = f"agreement check failed: {_describe_error(error)}"

    warm: dict[str, float] = {}
    for name in list(steps):
        try:
            for _ in range(max(1, config.warmup)):
                warm[name] = timed(steps[name], device, config.step_timeout, name)
                if warm[name] > config.budget / 50:  # a slow step: one warm-up step is enough
                    break
        except StepTimeout as error:
            rows[name].status, rows[name].note = "timeout", str(error)
            del steps[name]
        except Exception as error:
            rows[name].status, rows[name].note = "failed", _describe_error(error)
            del steps[name]
    if "ew" not in steps:
        raise RuntimeError(f"EW failed on {spec.name} K={tasks} batch={batch}: {rows['ew'].note}")
    log("  warm-up (ms): " + ", ".join(f"{name} {1e3 * seconds:.1f}" for name, seconds in warm.items()))

    if config.memory:
        for name in list(steps):
            try:
                with time_limit(config.step_timeout, name):
                    peak, resident, transient = peak_memory(steps[name], device)
                rows[name].peak_bytes, rows[name].resident_bytes, rows[name].transient_bytes = (
                    peak,
                    resident,
                    transient,
                )
            except Exception as error:
                rows[name].note = (rows[name].note + "; " if rows[name].note else "") + (
                    f"memory not measured: {_describe_error(error)}"
                )
        ew_peak = rows["ew"].peak_bytes
        for row in rows.values():
            if row.peak_bytes is not None and ew_peak:
                row.memory_ratio = row.peak_bytes / ew_peak

    round_cost = sum(warm[name] for name in steps)
    per_round = config.steps if round_cost * config.steps * config.min_rounds <= config.budget else 1
    affordable = int(config.budget // max(round_cost * per_round, 1e-9))
    rounds = max(config.min_rounds, min(config.repeats, affordable))
    active = list(steps)
    for r in range(rounds):
        order = active[r % len(active) :] + active[: r % len(active)]
        if r % 2:
            order.reverse()
        for name in order:
            if name not in steps:
                continue
            try:
                samples = [timed(steps[name], device, config.step_timeout, name) for _ in range(per_round)]
            except StepTimeout as error:
                rows[name].status, rows[name].note = "timeout", str(error)
                del steps[name]
                continue
            except Exception as error:
                rows[name].status, rows[name].note = "failed", _describe_error(error)
                del steps[name]
                continue
            rows[name].times.append(statistics.median(samples))
    ew_times = rows["ew"].times
    for row in rows.values():
        if len(row.times) == len(ew_times):
            row.ratios = [t / e for t, e in zip(row.times, ew_times)]
        elif row.times:  # dropped mid-way: ratios of the rounds it finished
            row.ratios = [t / e for t, e in zip(row.times, ew_times)]
    return ConfigResult(spec.name, tasks, batch, rounds, per_round, rows)


def _environment(config: SpeedConfig, device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.date.today().isoformat(),
        "mtlopt": mtlopt.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "peers": {peer: peers.peer_version(peer) for peer in config.peers},
    }


def run_speed(config: SpeedConfig, log: Callable[[str], None] = print) -> SpeedReport:
    """Measure every configuration of ``config`` and return the report (nothing is written)."""
    unknown = [m for m in config.models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; expected some of {', '.join(MODELS)}")
    bad = [m for m in config.methods if m not in METHODS or METHODS[m].peer is not None]
    if bad:
        ours = ", ".join(m for m in METHODS if METHODS[m].peer is None)
        raise ValueError(f"unknown method(s) {', '.join(bad)}; expected some of {ours}")
    bad_peers = [p for p in config.peers if p not in peers.PEERS]
    if bad_peers:
        raise ValueError(f"unknown peer(s) {', '.join(bad_peers)}; expected some of {', '.join(peers.PEERS)}")
    device = _resolve_device(config.device)
    torch.set_num_threads(config.threads)
    notes = []
    methods = list(config.methods)
    for peer in config.peers:
        if peers.import_peer(peer) is None:
            notes.append(
                f"{peers.PEERS[peer]} is not installed: its rows are skipped (install the peers with "
                "`bash scripts/install_peers.sh`)."
            )
            continue
        methods += [name for name, m in METHODS.items() if m.peer == peer and m.counterpart in config.methods]
    environment = _environment(config, device)
    results = []
    for model in config.models:
        spec = MODELS[model]
        for tasks in config.tasks[model]:
            for batch in config.batch_sizes[model]:
                log(f"[speed] {model}, K = {tasks}, batch {batch}")
                results.append(measure_config(config, spec, tasks, batch, methods, device, log))
                for row in results[-1].rows.values():
                    if row.ratio is not None:
                        log(f"  {row.method:<16} {row.ratio:6.2f}× EW")
    solvers: list[SolverRow] = []
    if config.solver_tasks:
        log("[speed] min-norm solvers")
        solvers, source = solver_table(
            config.solver_tasks,
            config.solver_gramians,
            [p for p in config.peers if peers.import_peer(p)],
            limit=config.step_timeout,
        )
        environment["solver_gramians"] = source
    return SpeedReport(config, environment, results, solvers, notes)
