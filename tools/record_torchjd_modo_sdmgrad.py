"""Record TorchJD's MoDoWeighting and SDMGradWeighting on tests/weighting/cross_gramian_scenario.py.

Runs where TorchJD 0.18.0 is importable (``scripts/install_peers.sh``, or the wheel unpacked on the
path); writes ``tests/weighting/peer_golden_torchjd_modo_sdmgrad.json``.

    PYTHONPATH=src:/path/to/torchjd python tools/record_torchjd_modo_sdmgrad.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "weighting"))

import cross_gramian_scenario as sc  # noqa: E402


def main() -> None:
    import torchjd

    record = {
        "_about": {
            "scenario": "tests/weighting/cross_gramian_scenario.py",
            "torchjd": torchjd.__version__ if hasattr(torchjd, "__version__") else "0.18.0",
            "torch": torch.__version__,
        },
        "weights": {case: sc.torchjd_weights(case) for case in sc.CASES},
    }
    path = ROOT / "tests" / "weighting" / "peer_golden_torchjd_modo_sdmgrad.json"
    path.write_text(json.dumps(record, indent=0) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
