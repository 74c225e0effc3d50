#!/usr/bin/env bash
# Build the documentation site into site/ with warnings as errors (mkdocs build --strict).
#   bash scripts/docs.sh              with .venv's mkdocs (install it: bash scripts/setup.sh docs)
#   MKDOCS=/path/to/mkdocs bash scripts/docs.sh
# The API reference is read from src/ by griffe without importing mtlopt, so any environment with the
# `docs` extra builds it. Open site/index.html in a browser (the math is typeset offline).
set -euo pipefail
cd "$(dirname "$0")/.."
MKDOCS="${MKDOCS:-.venv/bin/mkdocs}"
if [ ! -x "$MKDOCS" ] && ! command -v "$MKDOCS" >/dev/null 2>&1; then
    echo "[docs] $MKDOCS not found: install the docs extra with 'bash scripts/setup.sh docs'" >&2
    exit 2
fi
NO_MKDOCS_2_WARNING=1 "$MKDOCS" build --strict --site-dir site "$@"
