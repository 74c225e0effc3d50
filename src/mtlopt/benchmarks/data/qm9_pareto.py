"""QM9 with two or three of its targets: a regression benchmark with plottable Pareto fronts.

Benchmarks ``qm9-pareto2`` (μ, U0) and ``qm9-pareto3`` (μ, ε_HOMO, U0): a dipole moment, a frontier
orbital energy and an atomization energy, one electrostatic, one orbital and one thermochemical
quantity. Everything else is :mod:`mtlopt.benchmarks.data.qm9`'s: the molecules, the seeded splits and
their ``cpu`` / ``published`` sizes, the graphs, the MPNN, the loss (MSE of the target standardized on
the training molecules) and the metric (MAE in the target's unit). Hypervolume: on the test MAE, in
the units, with the reference point :data:`HV_REFERENCE` (about one standard deviation of each target
over QM9; predicting the training mean scores below it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..interfaces import DataOptions
from .qm9 import TARGETS, UNITS, Molecules, QM9Data, QM9Graphs, load_qm9, split_indices

PARETO_TARGETS = {"qm9-pareto2": ("mu", "U0"), "qm9-pareto3": ("mu", "homo", "U0")}
# Test MAE reference per target (D, eV, eV): about one standard deviation over QM9's 130,831 molecules.
HV_REFERENCE = {"mu": 1.5, "homo": 0.6, "U0": 10.0}


class QM9ParetoData(QM9Data):
    """:class:`~mtlopt.benchmarks.data.qm9.QM9Data` on a subset of the targets; hypervolume on ``mae``."""

    hv_objective = "mae"


def subset(molecules: Molecules, targets: Sequence[str]) -> Molecules:
    """The molecules with only ``targets`` (names of :data:`~mtlopt.benchmarks.data.qm9.TARGETS`)."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown QM9 targets {unknown}; expected names from {', '.join(TARGETS)}")
    columns = [TARGETS.index(t) for t in targets]
    return dataclasses.replace(molecules, targets=np.ascontiguousarray(molecules.targets[:, columns]))


def pareto_data(
    name: str,
    protocol: str,
    molecules: Molecules,
    splits: dict[str, np.ndarray],
    edges: str,
    seed: int,
) -> QM9ParetoData:
    targets = PARETO_TARGETS[name]
    graphs = QM9Graphs(subset(molecules, targets), edges=edges)
    units = dict(zip(TARGETS, UNITS))
    meta = {
        "benchmark": name,
        "protocol": protocol,
        "construction": f"{len(molecules)} molecules; seeded split test 10,000 / val 10,000 / train rest, "
        f"cut to {tuple(len(splits[s]) for s in ('train', 'val', 'test'))}; {edges} graphs; targets "
        f"{', '.join(targets)} standardized on train",
        "seed": seed,
        "sizes": {split: len(index) for split, index in splits.items()},
        "units": {t: units[t] for t in targets},
        "hypervolume": f"test mae in the units, reference {tuple(HV_REFERENCE[t] for t in targets)}",
        "sources": {"molecules": {"name": "qm9", "origin": molecules.origin, "sha256": molecules.sha256}},
    }
    return QM9ParetoData(graphs, splits, targets, meta)


def benchmark_data(
    name: str, protocol: str, options: DataOptions, sizes: tuple[int, int, int], edges: str
) -> QM9ParetoData:
    """``name``'s targets of QM9 under the qm9 benchmark's ``protocol`` (its ``sizes`` and ``edges``)."""
    molecules = load_qm9(options.data_root, options.cache_dir)
    splits = split_indices(len(molecules), options.data_seed, options.sizes or sizes)
    return pareto_data(name, protocol, molecules, splits, edges, options.data_seed)
