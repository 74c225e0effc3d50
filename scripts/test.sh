#!/usr/bin/env bash
# Run the test suite (setting up .venv first if needed).
#   bash scripts/test.sh            the default suite (slow tests excluded)
#   bash scripts/test.sh --slow     only the tests marked slow
#   bash scripts/test.sh -- ARGS    the default suite with extra pytest arguments
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh bench,dev || exit 1

selection=(-m "not slow")
if [ "${1:-}" = "--slow" ]; then selection=(-m slow); shift; fi
if [ "${1:-}" = "--" ]; then shift; fi

.venv/bin/python -m pytest "${selection[@]}" "$@"
rc=$?
if [ $rc -eq 5 ]; then
    # pytest's "no tests collected": fine for an empty marker selection, an error for the default run.
    if [ "${selection[1]}" = "slow" ]; then
        echo "[test] no slow tests collected"
        exit 0
    fi
    echo "[test] error: pytest collected no tests (is tests/ present?)" >&2
    exit 1
fi
exit $rc
