"""Mixed precision for CAGrad, UPGrad and DualProj: one epoch of the small benchmark under bf16 autocast
and under fp16 with a GradScaler trains without a non-finite number (as tests/test_amp.py for the
other methods), on the shared parameters and, for UPGrad, on the representation."""

from __future__ import annotations

import json

import pytest

from mtlopt.benchmarks.cli import main
from test_amp import SMALL

METHODS = "cagrad,upgrad[gradients=features],dualproj"


@pytest.mark.slow  # a CLI compare of three methods per precision (tens of seconds on 2 shared cores)
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_the_gradient_methods_train_one_epoch_without_nan_under_autocast(tmp_path, amp):
    out = tmp_path / amp
    args = [
        "compare",
        *SMALL,
        "--methods",
        METHODS,
        "--amp",
        amp,
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    paths = list((out / "runs").glob("*/seed0/result.json"))
    assert {path.parent.parent.name.split("_")[0] for path in paths} == {"cagrad", "upgrad", "dualproj"}
    for path in paths:
        result = json.loads(path.read_text())
        assert result["environment"]["amp"] == amp
        for values in result["final"]["test"].values():
            assert all(v == v and abs(v) < float("inf") for v in values.values()), (path, values)
        for record in result["history"]:
            for key, values in record["train"].items():
                assert all(v == v and abs(v) < float("inf") for v in values), (path, key, values)
