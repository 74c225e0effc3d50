#!/usr/bin/env bash
# Set everything up (.venv, torch, mtlopt and its extras) and run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh bench,dev
.venv/bin/python examples/digits_two_tasks.py "$@"
