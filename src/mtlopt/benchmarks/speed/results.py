"""What the speed suite measures and reports: its configuration and its results."""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agreement import Agreement
from .catalog import DEFAULT_METHODS
from .setups import MODELS


@dataclass
class MethodResult:
    """One row: a method in one configuration."""

    model: str
    tasks: int
    batch: int
    method: str
    peer: str | None
    status: str = "ok"  # ok | skipped | failed | timeout
    note: str = ""
    times: list[float] = field(default_factory=list)  # per-round median step time (s)
    ratios: list[float] = field(default_factory=list)  # per-round ratio to EW
    peak_bytes: int | None = None
    resident_bytes: int | None = None
    transient_bytes: int | None = None
    memory_ratio: float | None = None
    agreement: Agreement | None = None

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def ratio_iqr(self) -> tuple[float, float] | None:
        if len(self.ratios) < 2:
            return None
        q1, _, q3 = statistics.quantiles(self.ratios, n=4, method="inclusive")
        return q1, q3

    @property
    def step_ms(self) -> float | None:
        return 1e3 * statistics.median(self.times) if self.times else None


@dataclass
class ConfigResult:
    """Every method of one (model, K, batch) configuration, measured in the same rounds."""

    model: str
    tasks: int
    batch: int
    rounds: int
    steps: int
    rows: dict[str, MethodResult]

    def pair_ratio(self, method: str, other: str) -> list[float]:
        """Per-round ratios of two methods' step times (same rounds)."""
        a, b = self.rows.get(method), self.rows.get(other)
        if a is None or b is None or not a.times or not b.times:
            return []
        return [x / y for x, y in zip(a.times, b.times)]


@dataclass(frozen=True)
class SpeedConfig:
    """What ``mtlopt speed`` measures.

    Attributes:
        models: model names (see :data:`MODELS`).
        tasks: per model, the numbers of tasks K.
        batch_sizes: per model, the batch sizes.
        methods: mtlopt methods (``ew`` and ``forward-only`` are always measured: the references).
        peers: peer libraries whose rows beside the measured methods are added (skipped with a note
            when not installed).
        repeats: the most interleaved rounds per configuration.
        min_rounds: the fewest rounds, whatever the budget.
        steps: timed steps per method per round (1 when the budget is tight).
        warmup: untimed steps per method before measuring (1 when a step takes over budget / 50).
        budget: seconds of timing per configuration (rounds are reduced to fit).
        threads: ``torch.set_num_threads`` (recorded).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or ``"auto"``.
        memory: measure the peak memory.
        solver_tasks: K of the min-norm solver table (empty: no table).
        solver_gramians: Gramians per K in the solver table.
        step_timeout: seconds after which one step of a method is abandoned (LibMTL's MGDA solver has
            no iteration cap); None: no limit.
        image_size: the ResNet-18's input size.
        population: models in the population methods.
        seed: seeds the templates and the batches.
        command: the command line, for the report.
    """

    models: tuple[str, ...] = ("lenet", "resnet18", "mlp")
    tasks: dict[str, tuple[int, ...]] = field(default_factory=lambda: {m: (2, 10, 40) for m in MODELS})
    batch_sizes: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: {name: spec.batch_sizes for name, spec in MODELS.items()}
    )
    methods: tuple[str, ...] = DEFAULT_METHODS
    peers: tuple[str, ...] = ("torchjd", "libmtl")
    repeats: int = 15
    min_rounds: int = 3
    steps: int = 3
    warmup: int = 3
    budget: float = 600.0
    threads: int = 1
    device: str = "cpu"
    memory: bool = True
    solver_tasks: tuple[int, ...] = (2, 10, 40)
    solver_gramians: int = 20
    step_timeout: float | None = 300.0
    image_size: int = 64
    population: int = 5
    seed: int = 0
    command: str = ""


@dataclass(frozen=True)
class SolverRow:
    """One solver at one K in the min-norm table (Gramian given)."""

    tasks: int
    solver: str
    times: list[float]
    excess: list[float]
    certified: list[float] | None = None
    note: str = ""


@dataclass
class SpeedReport:
    """Everything one run measured."""

    config: SpeedConfig
    environment: dict[str, Any]
    configs: list[ConfigResult]
    solvers: list[SolverRow]
    notes: list[str]
    targets: list[dict[str, str]] = field(default_factory=list)


# --- the report as JSON (what tools read: e.g. tools/speed_targets.py) ---------------------------------

_TUPLE_FIELDS = ("models", "methods", "peers", "solver_tasks")


def report_json(report: SpeedReport) -> dict[str, Any]:
    """The report as plain JSON data (every field; :func:`load_report` reads it back)."""
    return dataclasses.asdict(report)


def load_report(path: Path | str) -> SpeedReport:
    """Read a ``speed.json`` written by :func:`~mtlopt.benchmarks.speed.write_report`."""
    data = json.loads(Path(path).read_text())
    settings = dict(data["config"])
    for name in _TUPLE_FIELDS:
        settings[name] = tuple(settings[name])
    for name in ("tasks", "batch_sizes"):
        settings[name] = {model: tuple(values) for model, values in settings[name].items()}
    configs = []
    for c in data["configs"]:
        rows = {}
        for name, row in c["rows"].items():
            agreement = row.pop("agreement")
            rows[name] = MethodResult(**row, agreement=None if agreement is None else Agreement(**agreement))
        configs.append(ConfigResult(**{**c, "rows": rows}))
    return SpeedReport(
        SpeedConfig(**settings),
        data["environment"],
        configs,
        [SolverRow(**row) for row in data["solvers"]],
        list(data["notes"]),
        list(data.get("targets", [])),
    )
