"""Multi-target regression (MTR): SolarFlare (bundled with ``river``) and Mulan's ARFF files.

Sources:

- ``solarflare`` (benchmark ``mtr``): the ``solar-flare.csv.zip`` file inside the installed ``river``
  package (``river.datasets.SolarFlare``; read directly, ``river`` is not imported): 1,066 solar active
  regions, 10 categorical inputs, 3 targets (counts of C-, M- and X-class flares in 24 h). Its rows are
  those of Mulan's ``sf2.arff`` in the same order; its inputs are one-hot encoded with ``sf2.arff``'s
  declared categories (33 columns), so ``mtr`` and ``mtr-sf2`` see the same numbers.
- Mulan's MTR files (benchmarks ``mtr-<name>``), read from ``--data-root`` (``DIR/<name>.arff``) with
  ``liac-arff``. Targets are the last attributes of every file (checked on the headers of the files in
  Mulan's repository, ``tsoumakas/mulan`` ``data/multi-target/``; for ``rf1`` also EPO's preprocessing,
  which takes the last 8 columns); their number is the one of Mulan's README table (see
  :data:`MULAN`). Nominal inputs are one-hot encoded over their declared categories.

Protocols:

``standard`` (every dataset)
    Rows with a missing target dropped; a seeded permutation (``--data-seed``) cut into test (first
    20%), validation (next 10%) and training (the rest) rows; inputs standardized with the training
    rows' mean and standard deviation (a constant column: divided by 1; a missing input: the training
    mean, i.e. 0 after standardization); targets standardized on the training rows; an MLP
    (:class:`~mtlopt.benchmarks.models.mtr.MTRMLP`); per-target MSE loss on the standardized targets.
``epo`` (``rf1``; EPO, Mahapatra & Rajan 2020, official ``mtr/`` code)
    Rows with any missing value dropped; a 70/30 train/test split drawn as scikit-learn's
    ``train_test_split(test_size=0.3, random_state=42)`` draws it (``RandomState(42).permutation``,
    the first ``ceil(0.3 n)`` rows for test; the seed is ``42 + --data-seed``); raw inputs and
    targets; EPO's tanh FNN with halving widths (:class:`~mtlopt.benchmarks.models.mtr.EPOFNN`); MSE of
    the raw targets. EPO holds out no validation rows: the ``val`` split is the training split, so
    "best validation" is the best training epoch; report the final epoch.

Metrics per target (all lower-is-better):

- ``nmse``: the MSE divided by the MSE of the constant predictor that outputs the training mean, on
  the same split (1: no better than that constant). Invariant to the target's scale, hence the same in
  both protocols; the hypervolume objective (reference point 2 per target: the constant predictor scores
  hypervolume 1). A split whose targets all equal the training mean is divided by 1 instead.
- ``mse``: the MSE of the target standardized with the training rows' mean and standard deviation.
- ``mae``: the mean absolute error in the target's unit.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..interfaces import BenchmarkData, DataOptions, Metric
from .sources import DataUnavailable

MTR_METRICS = (Metric("nmse", False), Metric("mse", False), Metric("mae", False))
HV_REFERENCE_NMSE = 2.0  # per target; the constant training-mean predictor sits at 1


@dataclass(frozen=True)
class MulanFile:
    """What Mulan's README table says of a file, and the task names used here.

    Attributes:
        examples: rows (recorded; a file with another count is read all the same).
        features: input attributes; the file has ``features + len(targets)`` attributes, targets last.
        width: input columns after one-hot encoding of the nominal attributes (the model's input size).
        targets: the task names (short forms of the target attributes; the file's names are recorded).
    """

    examples: int
    features: int
    width: int
    targets: tuple[str, ...]


def _numbered(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


_SOLAR = ("c_class", "m_class", "x_class")
_ATP = ("ALLminpA", "ALLminp0", "aDLminpA", "aCOminpA", "aFLminpA", "aUAminpA")
_RIVER_SITES = ("CHSI2", "NASI2", "EADM7", "SCLM7", "CLKM7", "VALI2", "NAPM7", "DLDI4")
# Mulan's README (tsoumakas/mulan, data/multi-target/README.md): examples / features / targets. The
# header of every file stored there (all but rf1, rf2, scm1d, scm20d) has its targets last; osales has
# 401 inputs and 12 targets, 413 attributes in all (the README's "413 features").
MULAN: dict[str, MulanFile] = {
    "atp1d": MulanFile(337, 411, 411, _ATP),
    "atp7d": MulanFile(296, 411, 411, _ATP),
    "oes97": MulanFile(334, 263, 263, _numbered("y", 16)),
    "oes10": MulanFile(403, 298, 298, _numbered("y", 16)),
    "rf1": MulanFile(9125, 64, 64, _RIVER_SITES),
    "rf2": MulanFile(9125, 576, 576, _RIVER_SITES),
    "scm1d": MulanFile(9803, 280, 280, _numbered("y", 16)),
    "scm20d": MulanFile(8966, 61, 61, _numbered("y", 16)),
    "edm": MulanFile(154, 16, 16, ("DFlow", "DGap")),
    "sf1": MulanFile(323, 10, 33, _SOLAR),
    "sf2": MulanFile(1066, 10, 33, _SOLAR),
    "jura": MulanFile(359, 15, 15, ("Cd", "Co", "Cu")),
    "wq": MulanFile(1060, 16, 16, _numbered("taxon", 14)),
    "enb": MulanFile(768, 8, 8, ("heating", "cooling")),
    "slump": MulanFile(103, 7, 7, ("slump", "flow", "strength")),
    "andro": MulanFile(49, 30, 30, _numbered("y", 6)),
    "osales": MulanFile(639, 401, 401, _numbered("month", 12)),
    "scpf": MulanFile(1137, 23, 23, ("views", "votes", "comments")),
}
# The attributes of Mulan's sf1.arff / sf2.arff: the categories of SolarFlare's inputs.
SOLAR_FLARE_ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mod_zurich_class", ("A", "B", "C", "D", "E", "F", "H")),
    ("largest_spot_size", ("X", "R", "S", "A", "H", "K")),
    ("spot_distribution", ("X", "O", "I", "C")),
    ("activity", ("1", "2")),
    ("evolution", ("1", "2", "3")),
    ("previous_day_activity", ("1", "2", "3")),
    ("hist_complex", ("1", "2")),
    ("become_hist_complex", ("1", "2")),
    ("area", ("1", "2")),
    ("area_largest", ("1", "2")),
)
SOLAR_FLARE = MulanFile(1066, 10, 33, _SOLAR)
RIVER_FILE = "solar-flare.csv.zip"
RIVER_HINT = "install it with `pip install river==0.26.1` (its bundled solar-flare.csv.zip is read; river is not imported)"
ARFF_HINT = "install it with `pip install liac-arff`"
PROTOCOLS = ("standard", "epo")
STANDARD_FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test
EPO_TEST_FRACTION, EPO_SEED = 0.3, 42


@dataclass
class Table:
    """A dataset as read: inputs one-hot encoded (NaN where missing), targets, and where it came from.

    Attributes:
        inputs: (N, width) float64; targets: (N, K) float64 (NaN where missing).
        input_names: one per column (``attribute=category`` for one-hot columns).
        target_names: the file's target attributes; origin: the file; sha256: of its bytes.
    """

    inputs: np.ndarray
    targets: np.ndarray
    input_names: list[str]
    target_names: list[str]
    origin: str
    sha256: str


# --- reading ------------------------------------------------------------------------------------------


def read_solar_flare(path: str | Path | None = None) -> Table:
    """SolarFlare from river's bundled ``solar-flare.csv.zip`` (or ``path``), encoded as ``sf2.arff``."""
    file = Path(path) if path is not None else _river_file()
    raw = file.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            text = archive.read(archive.namelist()[0]).decode()
    except (zipfile.BadZipFile, IndexError, UnicodeDecodeError) as error:
        raise DataUnavailable(
            f"SolarFlare: {file} is not river's zipped CSV ({error}); {RIVER_HINT}"
        ) from None
    lines = text.splitlines()
    expected = len(SOLAR_FLARE_ATTRIBUTES) + len(SOLAR_FLARE.targets)
    header = lines[0].split(",") if lines else []
    if len(header) != expected:
        raise DataUnavailable(
            f"SolarFlare: {file} line 1 has {len(header)} columns, expected {expected} (10 inputs, 3 flare counts)"
        )
    rows: list[list[Any]] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        values = [v.strip() for v in line.split(",")]
        if len(values) != expected:
            raise DataUnavailable(
                f"SolarFlare: {file} line {number} has {len(values)} values, expected {expected}"
            )
        row: list[Any] = []
        for (name, categories), value in zip(SOLAR_FLARE_ATTRIBUTES, values):
            if value not in categories:
                raise DataUnavailable(
                    f"SolarFlare: {file} line {number}: {name} is {value!r}, expected one of {', '.join(categories)}"
                )
            row.append(categories.index(value))
        try:
            row.extend(float(v) for v in values[len(SOLAR_FLARE_ATTRIBUTES) :])
        except ValueError as error:
            raise DataUnavailable(f"SolarFlare: {file} line {number}: {error}") from None
        rows.append(row)
    attributes: list[tuple[str, Any]] = [(name, list(cats)) for name, cats in SOLAR_FLARE_ATTRIBUTES]
    attributes += [(name, "NUMERIC") for name in header[len(SOLAR_FLARE_ATTRIBUTES) :]]
    return _encode(attributes, rows, len(SOLAR_FLARE.targets), str(file), hashlib.sha256(raw).hexdigest())


def _river_file() -> Path:
    spec = importlib.util.find_spec("river")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable(f"SolarFlare: the river package is not installed; {RIVER_HINT}")
    file = Path(next(iter(spec.submodule_search_locations))) / "datasets" / RIVER_FILE
    if not file.is_file():
        raise DataUnavailable(f"SolarFlare: {file} is missing from the river package; {RIVER_HINT}")
    return file


def read_mulan(name: str, root: str | Path) -> Table:
    """Mulan's ``<root>/<name>.arff``: the last ``len(MULAN[name].targets)`` attributes are the targets.

    Raises :class:`DataUnavailable` (one line, naming the file and, for malformed ARFF, the line) when
    the file is missing, is not valid ARFF, or does not have the shape Mulan's README gives it.
    """
    if name not in MULAN:
        raise ValueError(f"unknown Mulan dataset {name!r}; expected one of {', '.join(MULAN)}")
    spec = MULAN[name]
    file = Path(root) / f"{name}.arff"
    if not file.is_file():
        raise DataUnavailable(
            f"mtr-{name}: {file} not found; pass --data-root DIR holding Mulan's {name}.arff"
        )
    try:
        import arff  # type: ignore[import-untyped]  # liac-arff
    except ImportError:
        raise DataUnavailable(f"mtr-{name}: reading {file} needs liac-arff; {ARFF_HINT}") from None
    raw = file.read_bytes()
    try:
        decoded = arff.loads(raw.decode("utf-8", errors="replace"), encode_nominal=True)
    except arff.ArffException as error:
        line = getattr(error, "line", None)
        reason = str(error).split(", at line")[0].split(" in line ")[0].rstrip(".")
        where = f" line {line}" if line is not None and line >= 0 else ""
        raise DataUnavailable(f"mtr-{name}: {file}{where} is not valid ARFF ({reason})") from None
    attributes = decoded["attributes"]
    targets = len(spec.targets)
    if len(attributes) != spec.features + targets:
        raise DataUnavailable(
            f"mtr-{name}: {file} declares {len(attributes)} attributes, expected {spec.features + targets} "
            f"(Mulan's {name}: {spec.features} inputs, then {targets} targets)"
        )
    for attribute, kind in attributes:
        if not isinstance(kind, list) and kind.upper() not in ("NUMERIC", "REAL", "INTEGER"):
            raise DataUnavailable(
                f"mtr-{name}: {file} attribute {attribute!r} is {kind}, expected numeric or nominal"
            )
    for attribute, kind in attributes[-targets:]:
        if isinstance(kind, list):
            raise DataUnavailable(
                f"mtr-{name}: {file} target attribute {attribute!r} is nominal, expected numeric"
            )
    table = _encode(attributes, decoded["data"], targets, str(file), hashlib.sha256(raw).hexdigest())
    if table.inputs.shape[1] != spec.width:
        raise DataUnavailable(
            f"mtr-{name}: {file} has {table.inputs.shape[1]} input columns after one-hot encoding, "
            f"expected {spec.width} (Mulan's {name})"
        )
    return table


def _encode(
    attributes: Sequence[tuple[str, Any]],
    rows: Sequence[Sequence[Any]],
    targets: int,
    origin: str,
    sha256: str,
) -> Table:
    """Numeric attributes as they are, nominal ones (values: category indices) one-hot; None → NaN."""
    data = np.array([[math.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64)
    data = data.reshape(len(rows), len(attributes))
    columns: list[np.ndarray] = []
    names: list[str] = []
    for j, (name, kind) in enumerate(attributes[:-targets]):
        if isinstance(kind, list):
            codes = data[:, j]
            one_hot = (codes[:, None] == np.arange(len(kind))[None, :]).astype(np.float64)
            one_hot[np.isnan(codes)] = math.nan
            columns.append(one_hot)
            names.extend(f"{name}={category}" for category in kind)
        else:
            columns.append(data[:, j : j + 1])
            names.append(name)
    inputs = np.concatenate(columns, axis=1) if columns else np.zeros((len(rows), 0))
    return Table(
        inputs, data[:, -targets:], names, [name for name, _ in attributes[-targets:]], origin, sha256
    )


# --- splits -------------------------------------------------------------------------------------------


def standard_splits(rows: int, seed: int, sizes: tuple[int, int, int] | None = None) -> dict[str, np.ndarray]:
    """A seeded permutation: test the first 20%, validation the next 10%, training the rest; each then
    cut to ``sizes`` = (train, val, test) rows when given."""
    order = np.random.default_rng(seed).permutation(rows)
    test_n, val_n = round(STANDARD_FRACTIONS[2] * rows), round(STANDARD_FRACTIONS[1] * rows)
    test, val, train = order[:test_n], order[test_n : test_n + val_n], order[test_n + val_n :]
    out = {"train": train, "val": val, "test": test}
    if sizes is not None:
        out = {split: out[split][:size] for split, size in zip(("train", "val", "test"), sizes)}
    for split, indices in out.items():
        if len(indices) == 0:
            raise ValueError(f"MTR split {split!r} is empty ({rows} rows)")
    return out


def epo_splits(rows: int, seed: int = EPO_SEED) -> dict[str, np.ndarray]:
    """EPO's split: what ``sklearn.model_selection.train_test_split(test_size=0.3, random_state=seed)``
    draws (the first ``ceil(0.3 n)`` rows of ``RandomState(seed).permutation(n)`` are the test rows).
    The validation split is the training split (EPO holds none out)."""
    order = np.random.RandomState(seed).permutation(rows)
    test_n = math.ceil(EPO_TEST_FRACTION * rows)
    train = order[test_n:]
    return {"train": train, "val": train, "test": order[:test_n]}


# --- the benchmark data (mtlopt.benchmarks.interfaces.BenchmarkData) ------------------------------------


class MTRData(BenchmarkData):
    """Inputs and targets as tensors per split; ``targets`` are on the training scale (standardized, or
    raw for the ``epo`` protocol); ``scale`` converts a training-scale error to a standardized one."""

    metrics = MTR_METRICS
    hv_objective = "nmse"

    def __init__(
        self,
        inputs: dict[str, Tensor],
        targets: dict[str, Tensor],
        mean: Tensor,
        std: Tensor,
        standardized: bool,
        task_names: Sequence[str],
        meta: dict[str, Any],
    ) -> None:
        self.inputs, self.targets = inputs, targets
        self.task_names = tuple(task_names)
        self.mean, self.std = mean, std  # of the raw targets on the training rows
        self.standardized = standardized
        self.meta = meta
        self._constants: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    @property
    def task_types(self) -> tuple[str, ...]:
        return ("regression",) * len(self.task_names)

    def size(self, split: str) -> int:
        return len(self.targets[split])

    def batch(self, split, index, device):
        return self.inputs[split][index].to(device), self.targets[split][index].to(device)

    def task_loss(self, task, output, targets):
        return F.mse_loss(output.reshape(-1), targets[:, task])

    def metric_sums(self, outputs, targets):
        """(K, 3): squared standardized errors, absolute errors in the unit, and squared standardized
        deviations of the targets from the training mean (the constant predictor's squared errors)."""
        if targets.device not in self._constants:
            std = self.std.to(targets.device)
            if self.standardized:
                self._constants[targets.device] = (torch.ones_like(std), std, torch.zeros_like(std))
            else:
                self._constants[targets.device] = (1.0 / std, std, self.mean.to(targets.device))
        to_std, unit, mean = self._constants[targets.device]
        y = targets.double()
        prediction = torch.stack([output.reshape(-1).double() for output in outputs], dim=1)
        error = (prediction - y) * to_std
        deviation = (y - mean) * to_std
        return torch.stack([(error**2).sum(0), (error.abs() * unit).sum(0), (deviation**2).sum(0)], dim=1)

    def metric_values(self, sums: Tensor, count: int) -> dict[str, dict[str, float]]:
        squared, absolute, baseline = sums.double().unbind(1)
        baseline = torch.where(baseline > 0, baseline, torch.full_like(baseline, float(count)))
        nmse, mse, mae = (
            (squared / baseline).tolist(),
            (squared / count).tolist(),
            (absolute / count).tolist(),
        )
        return {
            task: {"nmse": nmse[t], "mse": mse[t], "mae": mae[t]} for t, task in enumerate(self.task_names)
        }


def load_table(name: str, options: DataOptions) -> Table:
    """The dataset's table: SolarFlare from river (``name == "solarflare"``, or ``--data-root`` holding
    ``solar-flare.csv.zip``) or Mulan's ``<data-root>/<name>.arff``."""
    if name == "solarflare":
        path = None
        if options.data_root is not None:
            path = Path(options.data_root) / RIVER_FILE
            if not path.is_file():
                raise DataUnavailable(f"mtr: {path} not found; {RIVER_HINT}, or drop --data-root")
        return read_solar_flare(path)
    if options.data_root is None:
        raise DataUnavailable(
            f"mtr-{name} is not obtainable automatically: pass --data-root DIR holding Mulan's {name}.arff "
            "(https://github.com/tsoumakas/mulan/tree/master/data/multi-target)"
        )
    return read_mulan(name, options.data_root)


def benchmark_data(name: str, protocol: str, options: DataOptions) -> MTRData:
    """``name`` (``"solarflare"`` or a key of :data:`MULAN`) under ``protocol`` as benchmark data."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown MTR protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    spec = SOLAR_FLARE if name == "solarflare" else MULAN[name]
    table = load_table(name, options)
    inputs, targets = table.inputs, table.targets
    if protocol == "epo":
        keep = ~(np.isnan(inputs).any(1) | np.isnan(targets).any(1))
        rule = "rows with any missing value dropped"
    else:
        keep = ~np.isnan(targets).any(1)
        rule = "rows with a missing target dropped"
    inputs, targets = inputs[keep], targets[keep]
    if protocol == "epo":
        seed = EPO_SEED + options.data_seed
        splits = epo_splits(len(targets), seed)
        construction = (
            f"{rule}; train_test_split(test_size=0.3, random_state={seed}) as EPO (RandomState permutation, "
            "the first ceil(0.3 n) rows are the test rows); val = the training rows (EPO holds none out); "
            "raw inputs and targets"
        )
    else:
        seed = options.data_seed
        splits = standard_splits(len(targets), seed, options.sizes)
        construction = (
            f"{rule}; seeded permutation: test 20%, val 10%, train the rest; inputs and targets "
            "standardized on the training rows (missing inputs: the training mean)"
        )
    train = splits["train"]
    target_mean, target_std = targets[train].mean(0), targets[train].std(0)
    target_std = np.where(target_std > 0, target_std, 1.0)
    if protocol == "epo":
        x, y = inputs, targets
    else:
        input_mean = np.nanmean(inputs[train], axis=0) if len(train) else np.zeros(inputs.shape[1])
        input_mean = np.where(np.isnan(input_mean), 0.0, input_mean)
        input_std = np.nanstd(inputs[train], axis=0)
        input_std = np.where(np.isfinite(input_std) & (input_std > 0), input_std, 1.0)
        x = np.nan_to_num((inputs - input_mean) / input_std, nan=0.0)
        y = (targets - target_mean) / target_std
    meta = {
        "benchmark": "mtr" if name == "solarflare" else f"mtr-{name}",
        "dataset": name,
        "protocol": protocol,
        "construction": construction,
        "seed": seed,
        "rows": {"read": len(keep), "kept": int(keep.sum())},
        "sizes": {split: len(index) for split, index in splits.items()},
        "inputs": int(inputs.shape[1]),
        "target_attributes": dict(zip(spec.targets, table.target_names)),
        "target_mean": target_mean.tolist(),
        "target_std": target_std.tolist(),
        "hypervolume": f"test nmse per target, reference {HV_REFERENCE_NMSE:g} per target (the training-mean predictor scores 1)",
        "sources": {"table": {"name": name, "origin": table.origin, "sha256": table.sha256}},
    }
    return MTRData(
        {split: torch.from_numpy(x[index]).float() for split, index in splits.items()},
        {split: torch.from_numpy(y[index]).float() for split, index in splits.items()},
        torch.from_numpy(target_mean),
        torch.from_numpy(target_std),
        protocol != "epo",
        spec.targets,
        meta,
    )
