"""QM9: 130,831 small molecules and 11 regression targets, read from the ``qm9pack`` package files.

``import qm9pack`` is broken (it needs ``pkg_resources``); the CSV files in its ``data/`` folder are read
directly (``qm9_part1.csv`` .. ``qm9_part3.csv``), or from ``--data-root``.

The 11 targets of the multi-task protocol (Nash-MTL, FAMO, LibMTL; PyG's QM9 target indices
0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11), in PyG's units:

====  ==============================  ==========
name  quantity                        unit
====  ==============================  ==========
mu    dipole moment                   D
alpha isotropic polarizability        bohr³
homo  HOMO energy                     eV
lumo  LUMO energy                     eV
r2    electronic spatial extent ⟨R²⟩  bohr²
zpve  zero-point vibrational energy   eV
U0    atomization energy at 0 K       eV
U     atomization energy at 298 K     eV
H     atomization enthalpy at 298 K   eV
G     atomization free energy, 298 K  eV
cv    heat capacity at 298 K          cal/(mol K)
====  ==============================  ==========

Atomization energies subtract the per-element reference energies (H, C, N, O, F) that PyG's QM9 uses
(``torch_geometric.datasets.qm9.atomrefs``, in eV); Hartree → eV with 27.211386246.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..interfaces import REGRESSION_METRICS, BenchmarkData, DataOptions
from .sources import DataUnavailable, default_cache_dir

TARGETS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv")
UNITS = ("D", "bohr^3", "eV", "eV", "bohr^2", "eV", "eV", "eV", "eV", "eV", "cal/mol/K")
HARTREE_TO_EV = 27.211386246
ELEMENTS = ("H", "C", "N", "O", "F")
ATOMIC_NUMBERS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
# Per-element reference energies in eV for U0, U, H, G (PyG's QM9 atomrefs, targets 7-10).
ATOM_REFERENCE_EV = {
    "U0": {
        "H": -13.61312172,
        "C": -1029.86312267,
        "N": -1485.30251237,
        "O": -2042.61123593,
        "F": -2713.48485589,
    },
    "U": {
        "H": -13.5745904,
        "C": -1029.82456413,
        "N": -1485.26398105,
        "O": -2042.5727046,
        "F": -2713.44632457,
    },
    "H": {
        "H": -13.54887564,
        "C": -1029.79887659,
        "N": -1485.2382935,
        "O": -2042.54701705,
        "F": -2713.42063702,
    },
    "G": {
        "H": -13.90303183,
        "C": -1030.25891228,
        "N": -1485.71166277,
        "O": -2043.01812778,
        "F": -2713.88796536,
    },
}
_COLUMNS = {
    "mu": ("Dipole_debye", 1.0),
    "alpha": ("Polarizability_bohr3", 1.0),
    "homo": ("HOMO_au", HARTREE_TO_EV),
    "lumo": ("LUMO_au", HARTREE_TO_EV),
    "r2": ("R2_bohr2", 1.0),
    "zpve": ("ZPVE_au", HARTREE_TO_EV),
    "U0": ("InternalEnergy_0K_au", HARTREE_TO_EV),
    "U": ("InternalEnergy_298K_au", HARTREE_TO_EV),
    "H": ("Enthalphy_298K_au", HARTREE_TO_EV),
    "G": ("GibbsFreeEnergy_298K_au", HARTREE_TO_EV),
    "cv": ("Heatcapacity_Cv_cal_mol_K", 1.0),
}
PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
HINT = "install it with `pip install qm9pack` (104 MB; its CSV files are read, it is not imported), or pass --data-root DIR with qm9_part1.csv .. qm9_part3.csv"
_FORMAT_VERSION = 1


@dataclass
class Molecules:
    """All molecules, flat: atom types and positions concatenated, ``offsets`` delimiting molecules.

    Attributes:
        elements: (A,) int8 index into ``ELEMENTS`` for every atom of every molecule.
        positions: (A, 3) float32, Å.
        offsets: (N + 1,) int64; molecule i has atoms ``offsets[i]:offsets[i + 1]``.
        targets: (N, 11) float64 in the units of ``UNITS``.
        index: (N,) int64, the QM9 index (``dsgdb9nsd_<index>``).
        origin: where the files were read; ``sha256``: digest of the arrays.
    """

    elements: np.ndarray
    positions: np.ndarray
    offsets: np.ndarray
    targets: np.ndarray
    index: np.ndarray
    origin: str
    sha256: str

    def __len__(self) -> int:
        return len(self.offsets) - 1


def qm9_directory(root: str | Path | None = None) -> Path:
    """The folder holding the QM9 CSV files: ``root``, or the installed qm9pack package's data folder."""
    if root is not None:
        directory = Path(root)
    else:
        spec = importlib.util.find_spec("qm9pack")
        if spec is None or not spec.submodule_search_locations:
            raise DataUnavailable(f"QM9 not found; {HINT}")
        directory = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [name for name in PARTS if not (directory / name).is_file()]
    if missing:
        raise DataUnavailable(f"QM9: {directory} has no {', '.join(missing)}; {HINT}")
    return directory


def load_qm9(root: str | Path | None = None, cache_dir: str | Path | None = None) -> Molecules:
    """Every molecule of QM9 with the 11 targets (parsed once, then read from the cache)."""
    directory = qm9_directory(root)
    stamp = hashlib.sha256(
        json.dumps([[name, (directory / name).stat().st_size] for name in PARTS] + [_FORMAT_VERSION]).encode()
    ).hexdigest()[:16]
    cache = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "qm9"
    path = cache / f"qm9-{stamp}.npz"
    if path.is_file():
        try:
            with np.load(path) as archive:
                arrays = {
                    key: archive[key] for key in ("elements", "positions", "offsets", "targets", "index")
                }
            return Molecules(**arrays, origin=str(directory), sha256=_digest(arrays))
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
    arrays = _parse(directory)
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds like allow_pickle
    os.replace(partial, path)
    return Molecules(**arrays, origin=str(directory), sha256=_digest(arrays))


def _parse(directory: Path) -> dict[str, np.ndarray]:
    element_code = {symbol: i for i, symbol in enumerate(ELEMENTS)}
    elements: list[int] = []
    positions: list[list[float]] = []
    offsets = [0]
    targets: list[list[float]] = []
    index: list[int] = []
    for name in PARTS:
        with open(directory / name, newline="") as f:
            reader = csv.DictReader(f)
            required = {"Index", "Elements", "XYZ_Ang", *(column for column, _ in _COLUMNS.values())}
            absent = required - set(reader.fieldnames or ())
            if absent:
                raise DataUnavailable(f"QM9: {directory / name} lacks the columns {sorted(absent)}; {HINT}")
            for line, row in enumerate(reader, start=2):
                try:
                    symbols = [s.strip(" '\"") for s in row["Elements"].strip("[]").split(",")]
                    numbers = row["XYZ_Ang"].replace("[", "").replace("]", "").replace("*^", "e").split(",")
                    flat = [float(v) for v in numbers]
                    xyz = [flat[i : i + 3] for i in range(0, len(flat), 3)]
                    values = {
                        key: float(row[column].replace("*^", "e")) * scale
                        for key, (column, scale) in _COLUMNS.items()
                    }
                except (ValueError, KeyError) as error:
                    raise DataUnavailable(
                        f"QM9: {directory / name} line {line} is malformed ({error}); {HINT}"
                    ) from error
                if len(symbols) != len(xyz) or any(s not in element_code for s in symbols):
                    raise DataUnavailable(
                        f"QM9: {directory / name} line {line}: elements {symbols} do not match the coordinates"
                    )
                for key, references in ATOM_REFERENCE_EV.items():
                    values[key] -= sum(references[s] for s in symbols)
                elements.extend(element_code[s] for s in symbols)
                positions.extend(xyz)
                offsets.append(len(elements))
                targets.append([values[key] for key in TARGETS])
                index.append(int(row["Index"]))
    return {
        "elements": np.asarray(elements, dtype=np.int8),
        "positions": np.asarray(positions, dtype=np.float32),
        "offsets": np.asarray(offsets, dtype=np.int64),
        "targets": np.asarray(targets, dtype=np.float64),
        "index": np.asarray(index, dtype=np.int64),
    }


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


# --- graphs ------------------------------------------------------------------------------------------

# Covalent radii in Å (Cordero et al. 2008); atoms i, j are bonded when d_ij < r_i + r_j + 0.45 Å (Jmol's rule).
COVALENT_RADIUS = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66, "F": 0.57}
BOND_TOLERANCE = 0.45
NODE_FEATURES = 8  # one-hot element (5), atomic number, bonded hydrogens, degree
EDGE_FEATURES = 2  # bonded flag, distance (Å)


@dataclass
class GraphBatch:
    """A batch of molecules as one disconnected graph.

    Attributes:
        x: (A, 8) node features; edge_index: (2, E) source and target atoms; edge_attr: (E, 2);
        batch: (A,) the molecule of each atom; num_graphs: molecules in the batch.
    """

    x: Any
    edge_index: Any
    edge_attr: Any
    batch: Any
    num_graphs: int

    def to(self, device, non_blocking: bool = False) -> GraphBatch:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return GraphBatch(
            move(self.x), move(self.edge_index), move(self.edge_attr), move(self.batch), self.num_graphs
        )


class QM9Graphs:
    """Node features, bonds and batching for :class:`Molecules` (built once, vectorized per batch).

    ``edges="bonds"`` connects bonded atoms (both directions); ``edges="complete"`` connects every pair of
    atoms of a molecule, as the published protocol does (PyG's ``Complete`` transform), marking the
    bonded ones. Edge features: the bonded flag and the distance (Å). The published protocol's node and
    edge features come from RDKit (aromaticity, hybridization, bond types); without RDKit, bonds are
    inferred from the geometry and bond orders are not used.
    """

    def __init__(self, molecules: Molecules, edges: str = "bonds") -> None:
        if edges not in ("bonds", "complete"):
            raise ValueError(f"QM9 edges must be 'bonds' or 'complete', got {edges!r}")
        import torch

        self.edges = edges
        self.molecules = molecules
        radius = np.array([COVALENT_RADIUS[s] for s in ELEMENTS], dtype=np.float32)
        atomic = np.array([ATOMIC_NUMBERS[s] for s in ELEMENTS], dtype=np.float32)
        elements, positions, offsets = (
            molecules.elements.astype(np.int64),
            molecules.positions,
            molecules.offsets,
        )
        bond_source, bond_target, bond_offsets = [], [], [0]
        bonded_h = np.zeros(len(elements), dtype=np.float32)
        degree = np.zeros(len(elements), dtype=np.float32)
        for i in range(len(molecules)):
            start, stop = offsets[i], offsets[i + 1]
            pos, kind = positions[start:stop], elements[start:stop]
            distance = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
            bonded = distance < radius[kind][:, None] + radius[kind][None, :] + BOND_TOLERANCE
            np.fill_diagonal(bonded, False)
            source, target = np.nonzero(bonded)
            bond_source.append(source)
            bond_target.append(target)
            bond_offsets.append(bond_offsets[-1] + len(source))
            degree[start:stop] = bonded.sum(1)
            bonded_h[start:stop] = (bonded & (kind[None, :] == 0)).sum(1)
        self.bond_source = np.concatenate(bond_source).astype(np.int64)
        self.bond_target = np.concatenate(bond_target).astype(np.int64)
        self.bond_offsets = np.asarray(bond_offsets, dtype=np.int64)
        one_hot = np.eye(len(ELEMENTS), dtype=np.float32)[elements]
        self.node_features = np.concatenate(
            [one_hot, atomic[elements][:, None], bonded_h[:, None], degree[:, None]], axis=1
        )
        self._torch = torch

    def batch(self, molecules: np.ndarray) -> GraphBatch:
        """The graph of the given molecule indices."""
        torch = self._torch
        offsets = self.molecules.offsets
        counts = offsets[molecules + 1] - offsets[molecules]
        node_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        atoms = np.repeat(offsets[molecules] - node_start, counts) + np.arange(counts.sum())
        graph_of_atom = np.repeat(np.arange(len(molecules)), counts)
        positions = self.molecules.positions[atoms]
        if self.edges == "bonds":
            bond_counts = self.bond_offsets[molecules + 1] - self.bond_offsets[molecules]
            bond_start = np.concatenate([[0], np.cumsum(bond_counts)[:-1]])
            bonds = np.repeat(self.bond_offsets[molecules] - bond_start, bond_counts) + np.arange(
                bond_counts.sum()
            )
            shift = np.repeat(node_start, bond_counts)
            source, target = self.bond_source[bonds] + shift, self.bond_target[bonds] + shift
            bonded = np.ones(len(source), dtype=np.float32)
        else:
            sources, targets = [], []
            for start, count in zip(node_start, counts):
                local_source, local_target = _complete_pairs(int(count))
                sources.append(local_source + start)
                targets.append(local_target + start)
            source, target = np.concatenate(sources), np.concatenate(targets)
            bond_pairs: set[tuple[int, int]] = set()
            for k, molecule in enumerate(molecules):
                lo, hi = self.bond_offsets[molecule], self.bond_offsets[molecule + 1]
                bond_pairs.update(
                    zip(
                        (self.bond_source[lo:hi] + node_start[k]).tolist(),
                        (self.bond_target[lo:hi] + node_start[k]).tolist(),
                    )
                )
            bonded = np.fromiter(
                ((s, t) in bond_pairs for s, t in zip(source.tolist(), target.tolist())),
                dtype=np.float32,
                count=len(source),
            )
        distance = np.sqrt(((positions[source] - positions[target]) ** 2).sum(-1)).astype(np.float32)
        return GraphBatch(
            x=torch.from_numpy(self.node_features[atoms]),
            edge_index=torch.from_numpy(np.stack([source, target])),
            edge_attr=torch.from_numpy(np.stack([bonded, distance], axis=1)),
            batch=torch.from_numpy(graph_of_atom),
            num_graphs=len(molecules),
        )


_PAIRS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _complete_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    if n not in _PAIRS:
        source, target = np.nonzero(~np.eye(n, dtype=bool))
        _PAIRS[n] = (source.astype(np.int64), target.astype(np.int64))
    return _PAIRS[n]


def split_indices(num_molecules: int, seed: int, sizes: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """A seeded permutation split into test (first), validation (next) and training (rest) molecules,
    as PyG's QM9 examples and the Nash-MTL protocol do (10,000 / 10,000 / the remaining 110,831); each
    split is then cut to ``sizes`` = (train, val, test) molecules (the CPU subsets)."""
    order = np.random.default_rng(seed).permutation(num_molecules)
    test, val, train = order[:10_000], order[10_000:20_000], order[20_000:]
    out = {"train": train[: sizes[0]], "val": val[: sizes[1]], "test": test[: sizes[2]]}
    for split, indices in out.items():
        if len(indices) == 0:
            raise ValueError(f"QM9 split {split!r} is empty")
    return out


# --- the benchmark data (mtlopt.benchmarks.interfaces.BenchmarkData) ------------------------------------


class QM9Data(BenchmarkData):
    """QM9 molecules as graphs; targets standardized with the training subset's mean and std.

    Training loss: the mean squared error of the standardized target (Nash-MTL's protocol). Metric: the
    mean absolute error in the target's original unit (``mtlopt.benchmarks.data.qm9.UNITS``).
    """

    metrics = REGRESSION_METRICS

    @property
    def task_types(self) -> tuple[str, ...]:
        return ("regression",) * len(self.task_names)

    def __init__(self, graphs, splits: dict[str, np.ndarray], task_names, meta) -> None:
        self.graphs = graphs
        self.splits = splits
        self.task_names = tuple(task_names)
        targets = torch.from_numpy(graphs.molecules.targets)
        train = targets[splits["train"]]
        self.mean, self.std = train.mean(0), train.std(0)
        self.targets = ((targets - self.mean) / self.std).float()
        self.meta = {**meta, "target_mean": self.mean.tolist(), "target_std": self.std.tolist()}
        self._std_device: dict[torch.device, Tensor] = {}

    def size(self, split: str) -> int:
        return len(self.splits[split])

    def batch(self, split, index, device):
        molecules = self.splits[split][index.numpy()]
        return self.graphs.batch(molecules).to(device), self.targets[molecules].to(device)

    def task_loss(self, task, output, targets):
        return F.mse_loss(output, targets[:, task])

    def metric_sums(self, outputs, targets):
        if targets.device not in self._std_device:
            self._std_device[targets.device] = self.std.to(targets.device)
        std = self._std_device[targets.device]
        errors = torch.stack(
            [
                (output.double() - targets[:, t].double()).abs().sum() * std[t]
                for t, output in enumerate(outputs)
            ]
        )
        return errors.unsqueeze(1)


def benchmark_data(protocol: str, options: DataOptions, sizes: tuple[int, int, int], edges: str) -> QM9Data:
    """QM9 as benchmark data: a seeded split cut to ``sizes`` (unless ``options.sizes``), graphs with
    ``edges`` (``"bonds"`` or ``"complete"``)."""
    molecules = load_qm9(options.data_root, options.cache_dir)
    splits = split_indices(len(molecules), options.data_seed, options.sizes or sizes)
    graphs = QM9Graphs(molecules, edges=edges)
    meta = {
        "benchmark": "qm9",
        "protocol": protocol,
        "construction": f"{len(molecules)} molecules; seeded split test 10,000 / val 10,000 / train rest, "
        f"cut to {tuple(len(splits[s]) for s in ('train', 'val', 'test'))}; {edges} graphs; targets standardized on train",
        "seed": options.data_seed,
        "sizes": {split: len(index) for split, index in splits.items()},
        "units": dict(zip(TARGETS, UNITS)),
        "sources": {"molecules": {"name": "qm9", "origin": molecules.origin, "sha256": molecules.sha256}},
    }
    return QM9Data(graphs, splits, TARGETS, meta)
