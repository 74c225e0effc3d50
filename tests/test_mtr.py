"""Multi-target regression: the ARFF reader on fixture files with the headers of Mulan's files, river's
SolarFlare, the EPO and standard protocols, the metrics, the models and a short `compare` end to end."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlopt.benchmarks.data import mtr
from mtlopt.benchmarks.data.sources import DataUnavailable
from mtlopt.benchmarks.interfaces import DataOptions
from mtlopt.benchmarks.models.mtr import EPOFNN, MTRMLP
from mtlopt.benchmarks.suite import get_benchmark

needs_arff = pytest.mark.skipif(importlib.util.find_spec("arff") is None, reason="liac-arff is not installed")
needs_river = pytest.mark.skipif(importlib.util.find_spec("river") is None, reason="river is not installed")
# A folder holding Mulan's real files (e.g. a checkout of tsoumakas/mulan's data/multi-target): optional.
MULAN_ROOT = os.environ.get("MTLOPT_MULAN_ROOT")

SOLAR_INPUTS = [(name, list(categories)) for name, categories in mtr.SOLAR_FLARE_ATTRIBUTES]
SOLAR_TARGETS = [("c-class", "numeric"), ("m-class", "numeric"), ("x-class", "numeric")]
RF_SITES = ["CHSI2", "NASI2", "EADM7", "SCLM7", "CLKM7", "VALI2", "NAPM7", "DLDI4"]


def numeric(names):
    return [(name, "numeric") for name in names]


# The attribute lists of Mulan's files (names, types, order; targets last): written out where the
# header is short; generated with the real count (and, where known, the real naming) where it is long.
HEADERS = {
    "enb": numeric(["Relative_compactness", "X1", "X3", "X4", "X5", "X6", "X7", "X8", "Y1", "Y2"]),
    "sf1": SOLAR_INPUTS + SOLAR_TARGETS,
    "sf2": SOLAR_INPUTS + SOLAR_TARGETS,
    "jura": numeric(
        [
            "Xloc",
            "Yloc",
            *(f"Landuse={i}" for i in range(1, 5)),
            *(f"Rock={i}" for i in range(1, 6)),
            "Cr",
            "Ni",
            "Pb",
            "Zn",
            "Cd",
            "Co",
            "Cu",
        ]
    ),
    "wq": numeric(
        "std_temp std_pH conduct o2 o2sat co2 hardness no2 no3 nh4 po4 cl sio2 kmno4 k2cr2o7 bod".split()
        + "25400 29600 30400 33400 17300 19400 34500 38100 49700 50390 55800 57500 59300 37880".split()
    ),
    "atp1d": [("\"'departwb'\"", "NUMERIC"), ("\"'departdaytype'\"", "NUMERIC")]
    + [(f"\"'feature{i}'\"", "NUMERIC") for i in range(409)]
    + [(f"LBL+{t}+fut_001", "NUMERIC") for t in mtr.MULAN["atp1d"].targets],
    "atp7d": [("\"'departwb'\"", "NUMERIC"), ("\"'departdaytype'\"", "NUMERIC")]
    + [(f"\"'feature{i}'\"", "NUMERIC") for i in range(409)]
    + [(f"LBL+{t}+bt7d_000", "NUMERIC") for t in mtr.MULAN["atp7d"].targets],
    "rf1": numeric(
        [
            f"{site}__{-lag}" if lag else f"{site}__0"
            for lag in (0, 6, 12, 18, 24, 36, 48, 60)
            for site in RF_SITES
        ]
        + [f"{site}_48H__0" for site in RF_SITES]
    ),
    "scm1d": numeric([f"x{i}" for i in range(280)] + [f"target{i}" for i in range(16)]),
    "scm20d": numeric([f"x{i}" for i in range(61)] + [f"target{i}" for i in range(16)]),
}


def write_arff(path: Path, attributes, rows, relation="test") -> Path:
    lines = [f"@relation {relation}", ""]
    for name, kind in attributes:
        lines.append(f"@attribute {name} {'{' + ','.join(kind) + '}' if isinstance(kind, list) else kind}")
    lines += ["", "@data"]
    lines += [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def random_rows(attributes, count, seed=0, missing=()):
    """``count`` rows of values of the declared types; ``missing``: (row, column) pairs written ``?``."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(count):
        row = []
        for c, (_, kind) in enumerate(attributes):
            if (r, c) in missing:
                row.append("?")
            elif isinstance(kind, list):
                row.append(kind[int(rng.integers(len(kind)))])
            else:
                row.append(f"{rng.normal() * 10:.4f}")
        rows.append(row)
    return rows


@needs_arff
@pytest.mark.parametrize("name", sorted(HEADERS))
def test_reads_every_listed_mulan_header(tmp_path, name):
    attributes = HEADERS[name]
    spec = mtr.MULAN[name]
    assert len(attributes) == spec.features + len(spec.targets)
    write_arff(tmp_path / f"{name}.arff", attributes, random_rows(attributes, 30))
    table = mtr.read_mulan(name, tmp_path)
    assert table.inputs.shape == (30, spec.width) and table.targets.shape == (30, len(spec.targets))
    assert table.target_names == [n for n, _ in attributes[-len(spec.targets) :]]
    data = get_benchmark(f"mtr-{name}").load("standard", DataOptions(data_root=str(tmp_path)))
    assert sum(data.size(s) for s in ("train", "val", "test")) == 30 and data.task_names == spec.targets
    x, y = data.batch("train", torch.arange(4), torch.device("cpu"))
    outputs = get_benchmark(f"mtr-{name}").model("standard")(x)
    assert len(outputs) == len(spec.targets) and all(o.shape == (4,) for o in outputs)
    assert data.metric_sums(outputs, y).shape == (len(spec.targets), 3)


@needs_arff
def test_nominal_inputs_are_one_hot_over_the_declared_categories(tmp_path):
    rows = [["C", "S", "O", 1, 2, 1, 1, 2, 1, 2, 0, 1, 0], ["H", "K", "X", 2, 3, 3, 2, 1, 2, 1, 3, 0, 2]]
    table = mtr.read_mulan("sf1", write_arff(tmp_path / "sf1.arff", HEADERS["sf1"], rows).parent)
    assert table.input_names[:7] == [f"mod_zurich_class={c}" for c in "ABCDEFH"]
    assert table.inputs[0, :7].tolist() == [0, 0, 1, 0, 0, 0, 0] and table.inputs[1, 6] == 1
    assert table.inputs.sum(1).tolist() == [10, 10]  # one hot column per nominal attribute
    assert table.targets.tolist() == [[0, 1, 0], [3, 0, 2]]


def river_zip(path: Path, rows) -> Path:
    header = (
        "zurich-class,largest-spot-size,spot-distribution,activity,evolution,previous-24h-flare-activity,"
        "hist-complex,hist-complex-this-pass,area,largest-spot-area,c-class-flares,m-class-flares,x-class-flares"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "solar-flare.csv", "\n".join([header, *(",".join(map(str, r)) for r in rows)]) + "\n"
        )
    path.write_bytes(buffer.getvalue())
    return path


@needs_arff
def test_river_solar_flare_is_encoded_as_mulan_sf2(tmp_path):
    rows = random_rows(HEADERS["sf2"], 40, seed=3)
    rows = [row[:10] + [int(float(v)) % 4 for v in row[10:]] for row in rows]
    write_arff(tmp_path / "sf2.arff", HEADERS["sf2"], rows)
    river_zip(tmp_path / mtr.RIVER_FILE, rows)
    from_river, from_mulan = mtr.read_solar_flare(tmp_path / mtr.RIVER_FILE), mtr.read_mulan("sf2", tmp_path)
    assert np.array_equal(from_river.inputs, from_mulan.inputs)
    assert np.array_equal(from_river.targets, from_mulan.targets)
    options = DataOptions(data_root=str(tmp_path))
    a, b = get_benchmark("mtr").load("standard", options), get_benchmark("mtr-sf2").load("standard", options)
    assert all(
        torch.equal(a.inputs[s], b.inputs[s]) and torch.equal(a.targets[s], b.targets[s]) for s in a.inputs
    )


def test_river_file_errors_name_the_file_and_line(tmp_path):
    river_zip(tmp_path / mtr.RIVER_FILE, [["Q", "S", "O", 1, 2, 1, 1, 2, 1, 2, 0, 0, 0]])
    with pytest.raises(DataUnavailable, match=r"solar-flare.csv.zip line 2: mod_zurich_class is 'Q'"):
        mtr.read_solar_flare(tmp_path / mtr.RIVER_FILE)
    with pytest.raises(DataUnavailable, match=r"mtr: .*solar-flare.csv.zip not found"):
        mtr.load_table("solarflare", DataOptions(data_root=str(tmp_path / "elsewhere")))


@needs_river
def test_the_bundled_solar_flare():
    table = mtr.read_solar_flare()
    assert table.inputs.shape == (1066, 33) and table.targets.shape == (1066, 3)
    assert (table.targets > 0).sum(0).tolist() == [182, 36, 5]  # rows with at least one flare per class
    data = get_benchmark("mtr").load("standard", DataOptions())
    assert {s: data.size(s) for s in ("train", "val", "test")} == {"train": 746, "val": 107, "test": 213}
    train = data.inputs["train"]
    constant = train.std(0, unbiased=False) == 0  # Mulan's area_largest=2 never occurs in the training rows
    assert torch.allclose(train.mean(0), torch.zeros(33), atol=1e-5)
    assert torch.allclose(
        train.std(0, unbiased=False)[~constant], torch.ones(int((~constant).sum())), atol=1e-4
    )
    assert torch.allclose(data.targets["train"].mean(0), torch.zeros(3), atol=1e-5)


@pytest.mark.skipif(
    MULAN_ROOT is None, reason="MTLOPT_MULAN_ROOT (a folder of Mulan's .arff files) is not set"
)
@needs_arff
def test_mulan_files_when_available():
    for name, spec in mtr.MULAN.items():
        if not (Path(MULAN_ROOT) / f"{name}.arff").is_file():
            continue
        table = mtr.read_mulan(name, MULAN_ROOT)
        assert table.inputs.shape == (spec.examples, spec.width), name
    if (Path(MULAN_ROOT) / "sf2.arff").is_file() and importlib.util.find_spec("river"):
        sf2, river = mtr.read_mulan("sf2", MULAN_ROOT), mtr.read_solar_flare()
        assert np.array_equal(sf2.inputs, river.inputs) and np.array_equal(sf2.targets, river.targets)


@needs_arff
@pytest.mark.parametrize(
    ("row", "line", "reason"),
    [
        ("1.5,abc", 6, "Invalid numerical value"),
        ("1.5,2,3", 6, "Bad @DATA instance format"),
        ("1.5", 6, "Bad @DATA instance format"),
    ],
)
def test_a_malformed_arff_names_the_file_and_line(tmp_path, row, line, reason):
    (tmp_path / "enb.arff").write_text(
        "@relation t\n@attribute a numeric\n@attribute b numeric\n@data\n1,2\n" + row + "\n"
    )
    with pytest.raises(DataUnavailable) as error:
        mtr.read_mulan("enb", tmp_path)
    message = str(error.value)
    assert "\n" not in message and f"{tmp_path / 'enb.arff'} line {line} is not valid ARFF" in message
    assert reason in message


@needs_arff
def test_wrong_headers_and_missing_files_are_one_line_errors(tmp_path):
    (tmp_path / "jura.arff").write_text("@relation t\n@attribute a numerc\n@data\n1\n")
    with pytest.raises(DataUnavailable, match=r"jura.arff line 2 is not valid ARFF \(Bad @ATTRIBUTE type\)"):
        mtr.read_mulan("jura", tmp_path)
    write_arff(tmp_path / "enb.arff", HEADERS["enb"][:-1], random_rows(HEADERS["enb"][:-1], 3))
    with pytest.raises(
        DataUnavailable,
        match=r"enb.arff declares 9 attributes, expected 10 \(Mulan's enb: 8 inputs, then 2 targets\)",
    ):
        mtr.read_mulan("enb", tmp_path)
    nominal_target = [*HEADERS["enb"][:-1], ("Y2", ["a", "b"])]
    write_arff(tmp_path / "enb.arff", nominal_target, random_rows(nominal_target, 3))
    with pytest.raises(DataUnavailable, match=r"target attribute 'Y2' is nominal"):
        mtr.read_mulan("enb", tmp_path)
    with pytest.raises(DataUnavailable, match=r"rf1.arff not found; pass --data-root"):
        mtr.read_mulan("rf1", tmp_path)
    with pytest.raises(DataUnavailable, match=r"mtr-rf1 is not obtainable automatically: pass --data-root"):
        get_benchmark("mtr-rf1").load("epo", DataOptions())


def test_the_epo_split():
    rows = 9005  # rf1 after EPO drops the rows with missing values
    splits = mtr.epo_splits(rows)
    assert (len(splits["train"]), len(splits["test"])) == (6303, 2702)  # EPO's notebook's shapes
    # train_test_split(np.arange(9005), test_size=0.3, random_state=42), recorded from scikit-learn 1.x
    assert splits["test"][:6].tolist() == [6953, 248, 3128, 1145, 6575, 4864]
    assert splits["train"][:6].tolist() == [4932, 5550, 7229, 5168, 6532, 8259]
    assert splits["val"] is splits["train"]


@pytest.mark.slow
def test_the_epo_split_is_sklearns_train_test_split():
    sklearn = pytest.importorskip("sklearn.model_selection")
    rows = 9005
    splits = mtr.epo_splits(rows)
    train, test = sklearn.train_test_split(np.arange(rows), test_size=0.3, random_state=42)
    assert np.array_equal(splits["train"], train) and np.array_equal(splits["test"], test)


@needs_arff
def test_the_epo_protocol_on_rf1(tmp_path):
    attributes = HEADERS["rf1"]
    missing = {(0, 9), (1, 70)}  # an input of row 0, a target of row 1
    write_arff(tmp_path / "rf1.arff", attributes, random_rows(attributes, 50, missing=missing))
    benchmark = get_benchmark("mtr-rf1")
    assert benchmark.default_protocol == "epo" and benchmark.defaults["epo"].lr == 1e-4
    assert benchmark.defaults["epo"].optimizer == "sgd" and benchmark.defaults["epo"].momentum == 0.0
    epo = benchmark.load("epo", DataOptions(data_root=str(tmp_path)))
    assert epo.meta["rows"] == {"read": 50, "kept": 48} and epo.meta["seed"] == 42
    assert (epo.size("train"), epo.size("test")) == (33, 15)
    table = mtr.read_mulan("rf1", tmp_path)
    kept = table.inputs[2:]
    assert np.allclose(epo.inputs["test"].numpy(), kept[mtr.epo_splits(48)["test"]], atol=1e-4)  # raw inputs
    standard = benchmark.load("standard", DataOptions(data_root=str(tmp_path)))
    assert standard.meta["rows"] == {"read": 50, "kept": 49}  # only the row with a missing target dropped
    assert torch.isfinite(standard.inputs["train"]).all()
    model = benchmark.model("epo")
    assert isinstance(model, EPOFNN)
    linear = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 32), (32, 16), (16, 8)]
    assert all(isinstance(m, torch.nn.Tanh) for m in model.encoder[1::2]) and len(model.heads) == 8
    assert sum(p.numel() for p in model.parameters()) == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 8 + 8 + 8 * 9


def test_the_metrics_on_both_scales():
    rng = np.random.default_rng(0)
    raw = torch.from_numpy(rng.normal(5.0, 3.0, size=(40, 2)))
    mean, std = raw[:30].mean(0), raw[:30].std(0, unbiased=False)
    prediction = raw + torch.from_numpy(rng.normal(0, 1.0, size=(40, 2)))
    names = ("a", "b")
    standardized = mtr.MTRData({}, {}, mean, std, True, names, {})
    raw_scale = mtr.MTRData({}, {}, mean, std, False, names, {})
    z = lambda t: (t - mean) / std  # noqa: E731
    a = standardized.metric_values(standardized.metric_sums(list(z(prediction).T), z(raw)), 40)
    b = raw_scale.metric_values(raw_scale.metric_sums(list(prediction.T), raw), 40)
    for task in names:
        for metric in ("nmse", "mse", "mae"):
            assert a[task][metric] == pytest.approx(b[task][metric], rel=1e-9)
    t = 0
    assert b["a"]["mae"] == pytest.approx(float((prediction[:, t] - raw[:, t]).abs().mean()), rel=1e-9)
    assert b["a"]["mse"] == pytest.approx(float((z(prediction)[:, t] - z(raw)[:, t]).pow(2).mean()), rel=1e-9)
    constant = raw_scale.metric_values(raw_scale.metric_sums(list(mean.expand(40, 2).T), raw), 40)
    assert all(constant[task]["nmse"] == pytest.approx(1.0, rel=1e-12) for task in names)
    same = raw_scale.metric_values(raw_scale.metric_sums(list(mean.expand(3, 2).T), mean.expand(3, 2)), 3)
    assert same["a"]["nmse"] == 0.0  # a split equal to the training mean: divided by 1, not by 0


def test_the_standard_split_and_model():
    splits = mtr.standard_splits(1066, seed=0)
    assert {s: len(i) for s, i in splits.items()} == {"train": 746, "val": 107, "test": 213}
    assert len(np.unique(np.concatenate(list(splits.values())))) == 1066
    assert {s: len(i) for s, i in mtr.standard_splits(1066, 0, (100, 20, 30)).items()} == {
        "train": 100,
        "val": 20,
        "test": 30,
    }
    with pytest.raises(ValueError, match="MTR split 'val' is empty"):
        mtr.standard_splits(1066, 0, (100, 0, 30))
    model = MTRMLP(33, 3)
    assert [o.shape for o in model(torch.zeros(5, 33))] == [torch.Size([5])] * 3


def run_compare(tmp_path, methods: str, epochs: str) -> Path:
    from mtlopt.benchmarks.cli import main

    out = tmp_path / "cmp"
    args = [
        "--benchmark",
        "mtr",
        "--threads",
        "1",
        "--quiet",
        "--epochs",
        epochs,
        "--seeds",
        "1",
        "--methods",
        methods,
    ]
    assert main(["compare", *args, "--out", str(out)]) == 0
    return out


@needs_river
def test_compare_runs_on_solar_flare(tmp_path, monkeypatch):
    from mtlopt.hypervolume import hypervolume

    monkeypatch.setenv("MTLOPT_CACHE", str(tmp_path / "cache"))
    out = run_compare(tmp_path, "ew,mgda,epo[num-models=3],mtgd", "2")
    summary = (out / "summary.md").read_text()
    assert "## Hypervolume" in summary and "| `ew` | " in summary and "nmse" in summary
    result = json.loads((out / "runs" / "ew" / "seed0" / "result.json").read_text())
    assert result["hypervolume_reference"] == [2.0, 2.0, 2.0]
    assert result["tasks"] == ["c_class", "m_class", "x_class"]
    assert result["training"]["lr"] == 1e-4 and result["training"]["optimizer"] == "adam"
    record = result["history"][-1]
    points = [[record["test"][t]["nmse"] for t in result["tasks"]]]
    assert record["test_hypervolume"] == pytest.approx(hypervolume(points, [2.0] * 3), rel=1e-12)
    assert all(math.isfinite(record["test"][t][m]) for t in result["tasks"] for m in ("nmse", "mse", "mae"))
    mtgd = json.loads((out / "runs" / "mtgd" / "seed0" / "result.json").read_text())
    assert len(mtgd["history"][-1]["test_members"]) == 6  # --num-models auto: Das–Dennis for 3 tasks


@needs_river
@pytest.mark.slow
def test_every_kind_of_method_runs_on_solar_flare(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLOPT_CACHE", str(tmp_path / "cache"))
    methods = "ew,mgda,mgda-ub,pcgrad,uw,gradnorm,famo,stl,alternating,mao,ls-sweep[num-models=3],mtgd[num-models=3],pmtl[num-models=3]"
    out = run_compare(tmp_path, methods, "2")
    runs = sorted(p.parent.parent.name for p in (out / "runs").glob("*/seed0/result.json"))
    assert len(runs) == 13


@needs_river
@pytest.mark.slow
def test_pareto_runs_on_solar_flare(tmp_path, monkeypatch):
    from mtlopt.benchmarks.cli import main

    monkeypatch.setenv("MTLOPT_CACHE", str(tmp_path / "cache"))
    pareto = tmp_path / "pareto"
    args = ["--benchmark", "mtr", "--threads", "1", "--quiet", "--epochs", "1", "--method", "pmtl"]
    assert main(["pareto", *args, "--num-models", "3", "--out", str(pareto)]) == 0
    assert len(json.loads((pareto / "result.json").read_text())["history"][-1]["test_members"]) == 3


# --- QM9 with 2 or 3 targets ---------------------------------------------------------------------------


def test_qm9_pareto_benchmarks_select_their_targets(tmp_path):
    pytest.importorskip("torch_geometric")
    from mtlopt.benchmarks.data import qm9_pareto
    from mtlopt.benchmarks.data.qm9 import TARGETS, load_qm9
    from test_qm9 import write_tree

    molecules = load_qm9(write_tree(tmp_path / "qm9"), cache_dir=tmp_path / "cache")
    splits = {"train": np.array([0, 1]), "val": np.array([2]), "test": np.array([1, 2])}
    for name, targets in qm9_pareto.PARETO_TARGETS.items():
        data = qm9_pareto.pareto_data(name, "cpu", molecules, splits, "bonds", 0)
        columns = [TARGETS.index(t) for t in targets]
        assert data.task_names == targets and data.hv_objective == "mae"
        assert np.array_equal(data.graphs.molecules.targets, molecules.targets[:, columns])
        benchmark = get_benchmark(name)
        assert benchmark.hv_reference == tuple(qm9_pareto.HV_REFERENCE[t] for t in targets)
        x, y = data.batch("test", torch.arange(2), torch.device("cpu"))
        outputs = benchmark.model("cpu")(x)
        assert len(outputs) == len(targets) and y.shape == (2, len(targets))
        values = data.metric_values(data.metric_sums(outputs, y), 2)
        assert set(values) == set(targets)  # the fixture's homo is constant: its std, hence its MAE, NaN
        assert all(math.isfinite(values[t]["mae"]) for t in ("mu", "U0"))
    with pytest.raises(ValueError, match="unknown QM9 targets"):
        qm9_pareto.subset(molecules, ["mu", "nope"])
