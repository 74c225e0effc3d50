"""Record LibMTL's values of MoDo and SDMGrad on the runs of tests/weighting/multibatch_scenario.py.

Runs in the peers' environment (LibMTL 1.1.5 installed ``--no-deps`` beside torch, and the mirror of
median-research-group/LibMTL, whose HEAD's ``MoDo.py`` and ``SDMGrad.py`` are read on top of it: the
PyPI release lacks both), never in mtlopt's. Writes ``tests/weighting/peer_golden_modo_sdmgrad.json``.

    PYTHONPATH=src /work/venv-modo/bin/python tools/record_modo_sdmgrad_peers.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "weighting"))

import direction_scenario as ds  # noqa: E402
import multibatch_scenario as sc  # noqa: E402


def main() -> None:
    head = subprocess.run(
        ["git", f"--git-dir={ds.LIBMTL_MIRROR}", "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    record: dict[str, Any] = {
        "_about": {
            "scenario": "tests/weighting/multibatch_scenario.py",
            "libmtl": f"GitHub HEAD {head} (MoDo, SDMGrad) on the installed 1.1.5",
            "torch": torch.__version__,
        },
        "runs": {case: sc.run_libmtl(case) for case in sc.cases()},
    }
    path = ROOT / "tests" / "weighting" / "peer_golden_modo_sdmgrad.json"
    path.write_text(json.dumps(record, indent=0) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
