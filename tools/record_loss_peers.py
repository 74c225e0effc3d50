"""Record the peers' values of the loss-level methods on the shared scenario (issue 18).

Runs in the peers' environment (``VENV=/tmp/peers-venv bash scripts/install_peers.sh``), never in
mtlopt's: TorchJD 0.18.0 (scalarizers ``DWA``, ``Random``, ``GeometricMean``, ``IMTLL``, ``FAMO``,
``STCH``), LibMTL 1.1.5 (``DWA``, ``RLW``, ``GLS``) and, when ``FAMO_OFFICIAL`` names a directory
holding the official ``famo.py`` (github.com/Cranial-XIX/FAMO, commit 0a6ad06), the official FAMO.
Writes ``tests/weighting/peer_golden_loss.json``: for each method and peer, the weights applied and
the gradient of every parameter over the scenario's steps (tests/weighting/loss_scenario.py).

    FAMO_OFFICIAL=/path/to/FAMO /tmp/peers-venv/bin/python tools/record_loss_peers.py
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "weighting"))

import loss_scenario as sc  # noqa: E402

from mtlopt.benchmarks.speed import import_peer  # noqa: E402


def torchjd(name: str) -> dict[str, Any]:
    from torchjd import scalarization as tjs

    net = sc.model()
    if name == "dwa":
        s = tjs.DWA(2.0)
        return sc.run(sc.scalarizer_step(s), end_epoch=s.step, net=net)
    if name == "rlw":
        torch.manual_seed(sc.RLW_SEED)  # TorchJD draws from the global generator
        return sc.run(sc.scalarizer_step(tjs.Random()), net=net)
    if name == "gls":
        return sc.run(sc.scalarizer_step(tjs.GeometricMean()), net=net)
    if name == "imtl-l":
        s = tjs.IMTLL(sc.K)
        return sc.run(sc.scalarizer_step(s), extra_params=list(s.parameters()), net=net)
    if name == "famo":
        s = tjs.FAMO(sc.K, lr=0.025, weight_decay=1e-3)

        def after(net: sc.Model, step: int) -> None:
            with torch.no_grad():
                s.update(torch.stack(net.losses(step)))

        return sc.run(sc.scalarizer_step(s), after_step=after, net=net)
    if name == "stch-none":
        return sc.run(sc.scalarizer_step(tjs.STCH(0.5)), net=net)  # weights None: λ = 1/K
    raise ValueError(name)


def libmtl(name: str) -> dict[str, Any]:
    module = import_peer("libmtl")
    if module is None:
        raise RuntimeError("LibMTL does not import")
    cls = {"dwa": "DWA", "rlw": "RLW", "gls": "GLS"}[name]
    method = getattr(importlib.import_module("LibMTL.weighting"), cls)()
    method.task_num, method.device, method.epoch = sc.K, torch.device("cpu"), 0
    method.train_loss_buffer = np.zeros((sc.K, sc.EPOCHS), dtype=np.float32)
    epoch_losses: list[torch.Tensor] = []
    kwargs = {"dwa": {"T": 2.0}, "rlw": {"dist": "Normal"}, "gls": {}}[name]

    def backward(vector: torch.Tensor) -> None:
        epoch_losses.append(vector.detach().clone())
        method.backward(vector, **kwargs)

    def end_epoch() -> None:  # LibMTL's trainer records the epoch-mean loss of every task
        method.train_loss_buffer[:, method.epoch] = torch.stack(epoch_losses).mean(0).numpy()
        epoch_losses.clear()
        method.epoch += 1

    net = sc.model()
    if name == "rlw":
        torch.manual_seed(sc.RLW_SEED)  # LibMTL draws from the global generator
    return sc.run(sc.hooked_step(backward), end_epoch=end_epoch, net=net)


def official_famo() -> dict[str, Any] | None:
    where = os.environ.get("FAMO_OFFICIAL")
    if not where:
        return None
    sys.path.insert(0, where)
    from famo import FAMO  # the official module, read from the given checkout

    method = FAMO(n_tasks=sc.K, device=torch.device("cpu"), gamma=1e-3, w_lr=0.025, max_norm=0.0)

    def after(net: sc.Model, step: int) -> None:
        with torch.no_grad():
            method.update(torch.stack(net.losses(step)))

    return sc.run(sc.hooked_step(lambda v: method.backward(v)), after_step=after)


def main() -> None:
    from importlib.metadata import version

    record: dict[str, Any] = {
        "_about": {
            "scenario": "tests/weighting/loss_scenario.py",
            "torchjd": version("torchjd"),
            "libmtl": "1.1.5",
            "famo_official": "Cranial-XIX/FAMO 0a6ad06 famo.py" if os.environ.get("FAMO_OFFICIAL") else None,
            "torch": torch.__version__,
        }
    }
    for name, peers in sc.PEERS.items():
        record[name] = {}
        for peer in peers:
            if peer == "torchjd":
                values = torchjd(name)
            elif peer == "libmtl":
                values = libmtl(name)
            else:
                values = official_famo()
            if values is not None:
                record[name][peer] = values
    path = ROOT / "tests" / "weighting" / "peer_golden_loss.json"
    path.write_text(json.dumps(record, indent=0) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
