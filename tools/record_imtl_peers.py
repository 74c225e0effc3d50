"""Record the peers' values of IMTL-G and IMTL on fixed inputs (tests/weighting/imtl_scenario.py).

Runs in the peers' environment (``VENV=/tmp/peers-venv bash scripts/install_peers.sh``), never in
mtlopt's: TorchJD 0.18.0 (``IMTLGWeighting`` on fixed Gramians; ``mtl_backward`` + ``jac_to_grad``
with ``IMTLG`` on the scenario's model) and LibMTL 1.1.5 (``IMTL.backward`` on ``class M(HPS, IMTL)``,
with ``rep_grad`` off and on, the scales kept at 0 for IMTL-G alone or trained for the hybrid).
Writes ``tests/weighting/peer_golden_imtl.json``.

    PYTHONPATH=src /tmp/peers-venv/bin/python tools/record_imtl_peers.py
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "weighting"))

import imtl_scenario as sc  # noqa: E402

from mtlopt.benchmarks.speed import import_peer  # noqa: E402


def torchjd_gramians() -> dict[str, list[float]]:
    from torchjd.aggregation import IMTLGWeighting

    weighting = IMTLGWeighting()
    return {name: weighting(G).tolist() for name, G in sc.gramians().items()}


def libmtl(case: str) -> dict[str, Any]:
    if import_peer("libmtl") is None:
        raise RuntimeError("LibMTL does not import")
    hybrid, rep_grad = sc.LIBMTL_CASES[case]
    return sc.run_libmtl(hybrid, rep_grad)


def main() -> None:
    record: dict[str, Any] = {
        "_about": {
            "scenario": "tests/weighting/imtl_scenario.py",
            "torchjd": version("torchjd"),
            "libmtl": "1.1.5",
            "torch": torch.__version__,
        },
        "torchjd_gramians": torchjd_gramians(),
        "torchjd_model": sc.run_torchjd_model(),
        "libmtl": {case: libmtl(case) for case in sc.LIBMTL_CASES},
    }
    path = ROOT / "tests" / "weighting" / "peer_golden_imtl.json"
    path.write_text(json.dumps(record, indent=0) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
