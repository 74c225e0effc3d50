"""QM9: the CSV reader (fixture files in qm9pack's format and the real package), graphs, splits, MPNN."""

from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest
import torch

from mtlopt.benchmarks.data.qm9 import (
    ATOM_REFERENCE_EV,
    HARTREE_TO_EV,
    TARGETS,
    QM9Graphs,
    load_qm9,
    split_indices,
)
from mtlopt.benchmarks.data.sources import DataUnavailable

HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,Harmonic_Freq_cmi,"
    "RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,"
    "ZPVE_au,InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,GibbsFreeEnergy_298K_au,"
    "Heatcapacity_Cv_cal_mol_K"
).split(",")
# The first molecules of QM9 as qm9pack stores them (values copied from its first rows).
METHANE = {
    "XYZ_file": "dsgdb9nsd_000001.xyz", "Index": "1", "SMILES": "C", "InChi": "InChI=1S/CH4/h1H4", "N_atoms": "5",
    "Stoichiometry": "[4,1,0,0,0]", "Elements": "['C','H','H','H','H']",
    "XYZ_Ang": "[[-0.0126981359,1.0858041578,0.0080009958],[0.002150416,-0.0060313176,0.0019761204],"
               "[1.0117308433,1.4637511618,0.0002765748],[-0.540815069,1.4475266138,-0.8766437152],"
               "[-0.5238136345,1.4379326443,0.9063972942]]",
    "Mulliken_pop": "[0]", "Harmonic_Freq_cmi": "[0]", "RotA_GHz": "157.7118", "RotB_GHz": "157.70997", "RotC_GHz": "157.70699",
    "Dipole_debye": "0.", "Polarizability_bohr3": "13.21", "HOMO_au": "-0.3877", "LUMO_au": "0.1171",
    "HOMO_LUMO_gap_au": "0.5048", "R2_bohr2": "35.3641", "ZPVE_au": "0.044749", "InternalEnergy_0K_au": "-40.47893",
    "InternalEnergy_298K_au": "-40.476062", "Enthalphy_298K_au": "-40.475117", "GibbsFreeEnergy_298K_au": "-40.498597",
    "Heatcapacity_Cv_cal_mol_K": "6.469",
}  # fmt: skip
WATER = {
    **METHANE,
    "XYZ_file": "dsgdb9nsd_000003.xyz", "Index": "3", "SMILES": "O", "Elements": "['O','H','H']",
    "XYZ_Ang": "[[-0.0343604951,0.9775395708,0.0076015923],[0.0647664923,0.0205721989,0.0015346341],[0.8717903737,1.3007924048,0.000693538]]",
    "Dipole_debye": "1.8511", "InternalEnergy_0K_au": "-76.404702", "InternalEnergy_298K_au": "-76.401867",
    "Enthalphy_298K_au": "-76.400922", "GibbsFreeEnergy_298K_au": "-76.422349",
}  # fmt: skip


def write_tree(root, rows_per_part=((METHANE,), (WATER,), (METHANE,))):
    root.mkdir(parents=True, exist_ok=True)
    for k, rows in enumerate(rows_per_part, start=1):
        with open(root / f"qm9_part{k}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HEADER)
            writer.writeheader()
            writer.writerows(rows)
    return root


def test_reads_the_package_format_and_derives_the_targets(tmp_path):
    molecules = load_qm9(write_tree(tmp_path / "qm9"), cache_dir=tmp_path / "cache")
    assert len(molecules) == 3 and molecules.offsets.tolist() == [0, 5, 8, 13]
    assert molecules.elements[:5].tolist() == [1, 0, 0, 0, 0]  # C, H, H, H, H in ("H", "C", "N", "O", "F")
    methane = dict(zip(TARGETS, molecules.targets[0]))
    assert methane["alpha"] == pytest.approx(13.21) and methane["r2"] == pytest.approx(35.3641)
    assert methane["homo"] == pytest.approx(-0.3877 * HARTREE_TO_EV) and methane["zpve"] == pytest.approx(
        0.044749 * HARTREE_TO_EV
    )
    # Atomization energy by hand: E·Ha→eV − (E_C + 4 E_H), with PyG's reference energies.
    expected = -40.47893 * HARTREE_TO_EV - (ATOM_REFERENCE_EV["U0"]["C"] + 4 * ATOM_REFERENCE_EV["U0"]["H"])
    assert methane["U0"] == pytest.approx(expected, abs=1e-9)
    assert methane["U0"] == pytest.approx(-17.1722, abs=1e-3)
    water = dict(zip(TARGETS, molecules.targets[1]))
    assert water["G"] == pytest.approx(
        -76.422349 * HARTREE_TO_EV - (ATOM_REFERENCE_EV["G"]["O"] + 2 * ATOM_REFERENCE_EV["G"]["H"])
    )
    cached = load_qm9(tmp_path / "qm9", cache_dir=tmp_path / "cache")
    assert np.array_equal(cached.targets, molecules.targets) and cached.sha256 == molecules.sha256


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: (root / "qm9_part2.csv").unlink(), "has no qm9_part2.csv"),
        (lambda root: (root / "qm9_part1.csv").write_text("Index,Elements\n1,['C']\n"), "lacks the columns"),
        (
            lambda root: write_tree(root, (({**METHANE, "XYZ_Ang": "[[0,0]]"},), (WATER,), (METHANE,))),
            "line 2: elements",
        ),
        (
            lambda root: write_tree(root, (({**METHANE, "HOMO_au": "n/a"},), (WATER,), (METHANE,))),
            "line 2 is malformed",
        ),
    ],
)
def test_broken_trees_name_the_file(tmp_path, breakage, message):
    root = write_tree(tmp_path / "qm9")
    breakage(root)
    with pytest.raises(DataUnavailable, match=message):
        load_qm9(root, cache_dir=tmp_path / "cache")


def test_graphs_bonds_and_batches(tmp_path):
    molecules = load_qm9(write_tree(tmp_path / "qm9"), cache_dir=tmp_path / "cache")
    graphs = QM9Graphs(molecules)
    carbon = graphs.node_features[0]
    assert carbon[:5].tolist() == [0, 1, 0, 0, 0] and carbon[5:].tolist() == [6, 4, 4]  # Z, bonded H, degree
    batch = graphs.batch(np.array([0, 1]))
    assert batch.x.shape == (8, 8) and batch.batch.tolist() == [0] * 5 + [1] * 3
    assert batch.edge_index.shape == (2, 8 + 4)  # methane: 4 C-H bonds, water: 2 O-H bonds; both directions
    assert int(batch.edge_index[:, 8:].min()) == 5  # the second molecule's atoms are offset
    assert torch.all(batch.edge_attr[:, 0] == 1) and torch.all(
        (batch.edge_attr[:, 1] > 0.9) & (batch.edge_attr[:, 1] < 1.2)
    )
    graphs.edges = "complete"
    complete = graphs.batch(np.array([0, 1]))
    assert complete.edge_index.shape == (2, 5 * 4 + 3 * 2) and int(complete.edge_attr[:, 0].sum()) == 12


def test_splits_are_disjoint_seeded_and_cut_to_size():
    a, b = split_indices(130_831, 0, (4_000, 1_000, 1_000)), split_indices(130_831, 0, (4_000, 1_000, 1_000))
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert [len(a[s]) for s in ("train", "val", "test")] == [4_000, 1_000, 1_000]
    full = split_indices(130_831, 0, (200_000, 10_000, 10_000))
    assert [len(full[s]) for s in ("train", "val", "test")] == [110_831, 10_000, 10_000]
    assert not set(full["train"]) & set(full["val"]) and not set(full["val"]) & set(full["test"])


def test_mpnn_forward_backward(tmp_path):
    from mtlopt.benchmarks.models.graph import QM9MPNN

    graphs = QM9Graphs(load_qm9(write_tree(tmp_path / "qm9"), cache_dir=tmp_path / "cache"))
    model = QM9MPNN(dim=16)
    outputs = model(graphs.batch(np.array([0, 1, 2])))
    assert len(outputs) == 11 and all(o.shape == (3,) for o in outputs)
    sum(o.sum() for o in outputs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.skipif(
    importlib.util.find_spec("qm9pack") is None, reason="qm9pack (mtlopt[bench]) is not installed"
)
def test_the_real_package_data(tmp_path):
    molecules = load_qm9(cache_dir=tmp_path / "cache")
    assert len(molecules) == 130_831 and molecules.index[:3].tolist() == [1, 2, 3]
    means = dict(zip(TARGETS, molecules.targets.mean(0)))
    # Known statistics of PyG's QM9 targets (atomization energies in eV).
    assert means["U0"] == pytest.approx(-76.11, abs=0.05) and means["mu"] == pytest.approx(2.67, abs=0.01)
    assert means["homo"] == pytest.approx(-6.54, abs=0.01) and means["cv"] == pytest.approx(31.62, abs=0.01)


def test_the_cli_prints_regression_metrics(capsys):
    from mtlopt.benchmarks.cli import _print_final

    final = {"epoch": 3, "test": {"mu": {"mae": 0.52}, "cv": {"mae": 0.25}}}
    _print_final({"label": "uw", "seed": 1, "final": final})
    assert capsys.readouterr().out == "uw seed 1 after 3 epochs: mu: mae 0.52, cv: mae 0.25\n"
