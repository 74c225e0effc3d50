"""Mixed precision for the Gramian peer methods (CAGrad, UPGrad, DualProj, IMTL-G, IMTL, Aligned-MTL(-UB),
ConFIG, GradVac): one epoch of the small benchmark under bf16 autocast and under fp16 with a GradScaler
trains without a non-finite number (as tests/test_amp.py for the other methods), on the shared
parameters and, for UPGrad, IMTL-G, IMTL and Aligned-MTL-UB, on the representation. Marked slow: a CLI
compare of nine methods per precision (scripts/test.sh --slow)."""

from __future__ import annotations

import json

import pytest

from mtlopt.benchmarks.cli import main
from test_amp import SMALL

METHODS = "cagrad,upgrad[gradients=features],dualproj,imtl-g,imtl,aligned-mtl,aligned-mtl-ub,config,gradvac"


@pytest.mark.slow
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
    assert {path.parent.parent.name.split("_")[0] for path in paths} == {
        item.split("[")[0] for item in METHODS.split(",")
    }
    for path in paths:
        result = json.loads(path.read_text())
        assert result["environment"]["amp"] == amp
        for values in result["final"]["test"].values():
            assert all(v == v and abs(v) < float("inf") for v in values.values()), (path, values)
        for record in result["history"]:
            for key, values in record["train"].items():
                assert all(v == v and abs(v) < float("inf") for v in values), (path, key, values)
