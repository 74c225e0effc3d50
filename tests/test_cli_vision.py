"""`mtlopt` on CelebA, Cityscapes and NYUv2 fixture trees written in the standard formats."""

from __future__ import annotations

import json

import pytest

from mtlopt.benchmarks.cli import main
from test_vision_benchmarks import write_celeba, write_dense

COMMON = ["--seeds", "1", "--epochs", "1", "--threads", "1", "--quiet", "--batch-size", "2"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MTLOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def result(out, label):
    return json.loads((out / "runs" / label / "seed0" / "result.json").read_text())


@pytest.mark.parametrize(("dataset", "protocol"), [("cityscapes", "segnet"), ("nyuv2", "mtan")])
def test_dense_benchmarks_train_and_report(tmp_path, dataset, protocol):
    root = tmp_path / "data"
    for split, count in (("train", 4), ("val", 2)):
        write_dense(root, split, count, (32, 64), label_folder="label_7" if dataset == "cityscapes" else "label",
                    classes=7 if dataset == "cityscapes" else 13, normals=dataset == "nyuv2", seed=count)  # fmt: skip
    out = tmp_path / "out"
    methods = "ew,mgda-ub" if protocol == "segnet" else "ew,mgda"  # MTAN has no single representation
    args = ["compare", "--benchmark", dataset, "--protocol", protocol, "--data-root", str(root), "--methods", methods, *COMMON, "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    run = result(out, "ew")
    tasks = ["segmentation", "depth"] + (["normal"] if dataset == "nyuv2" else [])
    assert run["tasks"] == tasks and run["data"]["sizes"] == {"train": 3, "val": 1, "test": 2}
    test = run["final"]["test"]
    assert set(test["segmentation"]) == {"miou", "pixel_accuracy"} and set(test["depth"]) == {
        "abs_error",
        "rel_error",
    }
    if dataset == "nyuv2":
        assert set(test["normal"]) == {
            "mean_angle",
            "median_angle",
            "within_11.25",
            "within_22.5",
            "within_30",
        }
    assert run["task_metrics"]["depth"] == {"abs_error": "lower", "rel_error": "lower"}
    summary = (out / "summary.md").read_text()
    assert "segmentation miou ↑" in summary and "depth abs-error ↓" in summary and "Δp% ↑" in summary
    assert "## Epoch: mean of the last 1 epoch (all the run has)" in summary  # 1 epoch trained


@pytest.mark.parametrize("protocol", ["sener", "pascal"])
def test_celeba_trains_and_reports_error_and_f_score(tmp_path, protocol):
    root = tmp_path / "celeba"
    write_celeba(root)
    out = tmp_path / "out"
    assert main(["compare", "--benchmark", "celeba", "--protocol", protocol, "--data-root", str(root), "--methods", "ew,mgda-ub", *COMMON, "--out", str(out)]) == 0  # fmt: skip
    run = result(out, "mgda-ub")
    assert len(run["tasks"]) == 40 and run["tasks"][0] == "Attribute_0"
    for values in run["final"]["test"].values():
        assert 0.0 <= values["error"] <= 100.0 and 0.0 <= values["f_score"] <= 1.0


def test_missing_or_broken_roots_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--benchmark", "celeba", "--method", "ew", "--out", str(tmp_path / "a")]) == 2
    assert "CelebA is not obtainable automatically: pass --data-root" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--benchmark", "nyuv2", "--data-root", str(tmp_path / "empty"), "--method", "ew", "--out", str(tmp_path / "b")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.startswith("mtlopt: error:") and len(err.splitlines()) == 1 and "train" in err
