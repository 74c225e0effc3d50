#!/usr/bin/env bash
# Run the checks and the test suite (setting up .venv first if needed).
#   bash scripts/test.sh            lint (ruff check), format check (ruff format --check), type check
#                                   (mypy), the wheel and the core-only job (scripts/check_wheel.sh: build,
#                                   twine check, the core tests against the wheel installed without
#                                   extras), the documentation site (the docs extra installed, then
#                                   scripts/docs.sh: mkdocs build --strict), then the default
#                                   test suite (slow tests excluded); the time of each step is printed
#   bash scripts/test.sh --slow     only the tests marked slow
#   bash scripts/test.sh -- ARGS    the checks, then the default suite with extra pytest arguments
# MTLOPT_SKIP_CORE=1 skips the wheel/core-only job (it builds a second venv, .venv-wheel).
# MTLOPT_SKIP_DOCS=1 skips the site build.
# The tests run on one pytest-xdist worker per core; MTLOPT_TEST_WORKERS=N sets the number (0: none).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1

selection=(-m "not slow")
slow=0
if [ "${1:-}" = "--slow" ]; then selection=(-m slow); slow=1; shift; fi
if [ "${1:-}" = "--" ]; then shift; fi

workers="${MTLOPT_TEST_WORKERS:-auto}"
timings=()
step() {  # step NAME COMMAND...: run it, record its time, stop at the first failure
    local name="$1" start end rc
    shift
    echo "[test] == $name"
    start=$(date +%s)
    "$@"
    rc=$?
    end=$(date +%s)
    timings+=("$(printf '%-22s %4ss' "$name" $((end - start)))")
    if [ $rc -ne 0 ]; then
        echo "[test] $name failed (exit $rc)" >&2
        report
        exit $rc
    fi
}
report() {
    echo "[test] time per step:"
    printf '[test]   %s\n' "${timings[@]}"
}

if [ $slow -eq 0 ]; then
    step "ruff check" .venv/bin/ruff check
    step "ruff format --check" .venv/bin/ruff format --check
    step "mypy" .venv/bin/mypy
    if [ "${MTLOPT_SKIP_CORE:-0}" != 1 ]; then  # the wheel, installed without extras: the core-only job
        step "wheel + core-only" bash scripts/check_wheel.sh
    fi
    if [ "${MTLOPT_SKIP_DOCS:-0}" != 1 ]; then  # the site, warnings as errors
        step "docs (mkdocs --strict)" bash -c 'bash scripts/setup.sh docs >/dev/null && bash scripts/docs.sh'
    fi
fi

echo "[test] == tests"
start=$(date +%s)
.venv/bin/python -m pytest -n "$workers" --durations=20 "${selection[@]}" "$@"
rc=$?
timings+=("$(printf '%-22s %4ss' "tests" $(($(date +%s) - start)))")
report
if [ $rc -eq 5 ]; then
    # pytest's "no tests collected": fine for an empty marker selection, an error for the default run.
    if [ $slow -eq 1 ]; then
        echo "[test] no slow tests collected"
        exit 0
    fi
    echo "[test] error: pytest collected no tests (is tests/ present?)" >&2
    exit 1
fi
exit $rc
