"""Agreement of the loss-level methods with their reference implementations (issue 18).

The scenario (``loss_scenario.py``: a float32 model, SGD, 12 steps over 6 epochs, the loop hooks
called) is run with mtlopt's method and compared, step by step, with the weights and every
parameter's gradient that the peers produced on the same model, batches and seed:

- recorded values (``peer_golden_loss.json``, written by ``tools/record_loss_peers.py`` in the peers'
  environment): TorchJD 0.18.0 for DWA, RLW, GLS, IMTL-L, FAMO and STCH (``transform="none"``),
  LibMTL 1.1.5 for DWA, RLW and GLS, the official FAMO code (Cranial-XIX/FAMO 0a6ad06);
- the live peers, when they import here (else skipped).

Differences are float32 rounding: the weights are computed in float64 here, in float32 by the peers.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import loss_scenario as sc
import pytest
import torch

GOLDEN = json.loads(Path(__file__).with_name("peer_golden_loss.json").read_text())
CASES = [(name, peer) for name, peers in sc.PEERS.items() for peer in peers]
_RUNS: dict[str, dict[str, list[list[float]]]] = {}


def mtlopt_run(name: str) -> dict[str, list[list[float]]]:
    if name not in _RUNS:
        _RUNS[name] = sc.run_mtlopt(name)
    return _RUNS[name]


def assert_agrees(ours: dict, theirs: dict) -> None:
    assert len(theirs["weights"]) == sc.STEPS >= 5
    torch.testing.assert_close(
        torch.tensor(ours["weights"]), torch.tensor(theirs["weights"]), rtol=2e-6, atol=1e-6
    )
    torch.testing.assert_close(
        torch.tensor(ours["grads"]), torch.tensor(theirs["grads"]), rtol=2e-6, atol=2e-6
    )


@pytest.mark.parametrize(("name", "peer"), CASES)
def test_weights_and_grads_agree_with_the_recorded_peer_over_every_step(name, peer):
    assert peer in GOLDEN[name], f"{peer} values for {name} were not recorded"
    assert_agrees(mtlopt_run(name), GOLDEN[name][peer])


@pytest.mark.parametrize("name", ["dwa", "famo", "rlw"])
def test_the_scenario_exercises_the_state(name):
    """The comparison would catch a wrong state: the weights move between steps."""
    weights = torch.tensor(mtlopt_run(name)["weights"])
    assert (weights[1:] - weights[:-1]).abs().max() > 1e-4
    if name == "dwa":  # uniform in epochs 0 and 1, then from the epoch means
        assert torch.equal(weights[:4], torch.ones(4, sc.K))
        assert (weights[4:] - 1).abs().max() > 1e-3


def test_a_moved_weight_fails_the_comparison():
    moved = json.loads(json.dumps(GOLDEN["famo"]["torchjd"]))
    moved["weights"][7][1] += 1e-5
    with pytest.raises(AssertionError):
        assert_agrees(mtlopt_run("famo"), moved)


def _recorder():
    path = Path(__file__).parents[2] / "tools" / "record_loss_peers.py"
    spec = importlib.util.spec_from_file_location("record_loss_peers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("record_loss_peers", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("name", "peer"), [c for c in CASES if c[1] in ("torchjd", "libmtl")])
def test_weights_and_grads_agree_with_the_live_peer(name, peer):
    from mtlopt.benchmarks.speed import import_peer

    if import_peer(peer) is None:
        pytest.skip(f"{peer} is not installed here (tools/record_loss_peers.py runs it elsewhere)")
    recorder = _recorder()
    theirs = recorder.torchjd(name) if peer == "torchjd" else recorder.libmtl(name)
    assert_agrees(mtlopt_run(name), theirs)
