#!/usr/bin/env bash
# Install the peer libraries that `mtlopt speed` compares with, into .venv (optional; never needed by
# mtlopt itself or its tests, which skip the comparisons without them):
#   TorchJD 0.18.0  with its [full] extra, in the same pip command as the installed torch, pinned, so that
#                   pip keeps this torch instead of resolving a new (multi-GB CUDA) one;
#   LibMTL 1.1.5    without its dependencies: it requires torchvision, which does not import beside this
#                   project's torch. mtlopt imports it with a temporary stub of torchvision
#                   (mtlopt.benchmarks.speed.import_peer), removed right after the import.
# Usage: bash scripts/install_peers.sh        (VENV=path to use another virtual environment)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    bash scripts/setup.sh bench,dev
fi
PIP=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
torch_version="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"

echo "[peers] installing torchjd[full]==0.18.0 (torch stays at $torch_version)"
"${PIP[@]}" install "torchjd[full]==0.18.0" "torch==$torch_version"
echo "[peers] installing LibMTL==1.1.5 (--no-deps)"
"${PIP[@]}" install --no-deps "LibMTL==1.1.5"

"$VENV/bin/python" - <<'PY'
import sys

from mtlopt.benchmarks.speed import PEERS, import_peer, peer_version

missing = [peer for peer in PEERS if import_peer(peer) is None]
for peer in PEERS:
    print(f"[peers] {PEERS[peer]} {peer_version(peer)}: {'does not import' if peer in missing else 'ok'}")
if "torchvision" in sys.modules and not hasattr(sys.modules["torchvision"], "__file__"):
    sys.exit("[peers] error: the torchvision stub was left in sys.modules")
sys.exit(1 if missing else 0)
PY
