"""Record the peers' values of the direction methods on the runs of tests/weighting/direction_scenario.py.

Runs in the peers' environment (``VENV=/tmp/peers-venv bash scripts/install_peers.sh``), never in
mtlopt's: TorchJD 0.18.0 ``ExcessMTL`` and LibMTL HEAD's ``ExcessMTL``, ``MoCo``, ``DB_MTL`` (their
source read from the mirror of median-research-group/LibMTL, on the installed LibMTL 1.1.5). Writes
``tests/weighting/peer_golden_direction.json``.

    PYTHONPATH=src /tmp/peers-venv/bin/python tools/record_direction_peers.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "weighting"))

import direction_scenario as sc  # noqa: E402


def main() -> None:
    head = subprocess.run(
        ["git", f"--git-dir={sc.LIBMTL_MIRROR}", "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    record: dict[str, Any] = {
        "_about": {
            "scenario": "tests/weighting/direction_scenario.py",
            "torchjd": version("torchjd"),
            "libmtl": f"GitHub HEAD {head} (ExcessMTL, MoCo, DB_MTL) on the installed 1.1.5",
            "torch": torch.__version__,
        },
        "runs": {case: sc.run_peer(case) for case in sc.cases()},
    }
    path = ROOT / "tests" / "weighting" / "peer_golden_direction.json"
    path.write_text(json.dumps(record, indent=0) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
