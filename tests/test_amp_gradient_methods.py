"""Mixed precision for the gradient-level peer methods (aligned-mtl, aligned-mtl-ub, config, gradvac):
one MultiMNIST epoch under bf16 autocast and under fp16 + GradScaler, every logged number finite, as
tests/test_amp.py checks the other methods. Heavier than the default run allows: marked slow
(scripts/test.sh --slow); the lead may instead add the four names to tests/test_amp.py's compare."""

from __future__ import annotations

import json

import pytest

from mtlopt.benchmarks.cli import main

SMALL = ["--benchmark", "multimnist", "--max-sources", "400", "--threads", "1", "--quiet", "--batch-size", "64"]  # fmt: skip
METHODS = "aligned-mtl,aligned-mtl-ub,config,gradvac"


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_the_gradient_methods_train_one_epoch_without_nan_under_autocast(tmp_path, amp):
    out = tmp_path / amp
    args = ["compare", *SMALL, "--methods", METHODS, "--amp", amp, "--seeds", "1", "--epochs", "1"]
    assert main([*args, "--out", str(out)]) == 0
    assert f"mixed precision {amp}" in (out / "summary.md").read_text()
    paths = list((out / "runs").glob("*/seed0/result.json"))
    assert {path.parent.parent.name.split("_")[0] for path in paths} == set(METHODS.split(","))
    for path in paths:
        result = json.loads(path.read_text())
        assert result["environment"]["amp"] == amp
        for values in result["final"]["test"].values():
            assert all(v == v and abs(v) < float("inf") for v in values.values()), (path, values)
        for record in result["history"]:  # a step the scaler skipped is left out of the epoch's means
            for key, values in record["train"].items():
                assert all(v == v and abs(v) < float("inf") for v in values), (path, key, values)
