#!/usr/bin/env bash
# Set everything up (.venv, torch, mtlopt and its extras, Fashion-MNIST) and run the main job:
# EW, single-task, MGDA and MGDA-UB on MultiFashion (Sener & Koltun's protocol), 3 seeds.
# Extra arguments go to `mtlopt compare` (e.g. --epochs 20).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh bench,dev
out=runs/multifashion-sener
.venv/bin/mtlopt compare --benchmark multifashion --protocol sener --methods ew,stl,mgda,mgda-ub \
    --seeds 3 --epochs 8 --out "$out" "$@"
echo "table: $out/summary.md   plots: $out/learning_curves.png, $out/task_pair.png"
