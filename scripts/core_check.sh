#!/usr/bin/env bash
# The core-only job: mtlopt installed as a user installs it, without any extra, in a fresh venv
# (.venv-core; torch+numpy as scripts/setup.sh installs them, then `pip install .`), plus only pytest
# (with pytest-xdist) and hypothesis; then
#   1. `import mtlopt` pulls none of the optional packages (beyond what torch itself loads);
#   2. the core tests pass there (tests that need an optional package skip).
#   bash scripts/core_check.sh [-- PYTEST_ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CORE_VENV:-.venv-core}"
# The pip configuration of some machines names local index folders that do not exist: hide the noise.
quiet_pip_warnings() { grep -v "^WARNING: Location '.*' is ignored" || true; }

VENV="$VENV" bash scripts/setup.sh none 2> >(quiet_pip_warnings >&2)
"$VENV/bin/python" -m pip --quiet --disable-pip-version-check install "pytest>=8" "pytest-xdist>=3.5" "hypothesis>=6.100" \
    2> >(quiet_pip_warnings >&2)

# 1. The import is light: compared with `import torch, numpy` (torch imports tqdm when it is installed).
"$VENV/bin/python" scripts/import_light.py

# 2. The core tests: the methods, backward, gradients, optimizers and populations. Tests run from the
# checkout against the *installed* package (src/ is not on the path). Three long training runs that
# the full suite runs anyway are left out, to keep this job short.
if [ "${1:-}" = "--" ]; then shift; fi
core_tests=(
    tests/weighting/test_contract.py tests/weighting/test_weight_sum.py tests/weighting/test_gradnorm.py
    tests/weighting/test_pcgrad.py tests/weighting/test_uw.py
    tests/test_backward.py tests/test_gradients.py tests/test_min_norm.py tests/test_mao.py
    tests/test_alternating.py tests/test_population.py tests/test_package.py
)
present=()
for f in "${core_tests[@]}"; do [ -e "$f" ] && present+=("$f"); done
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -n "${MTLOPT_TEST_WORKERS:-auto}" -m "not slow" \
    -k "not (test_both_losses_fall_when_one_is_1000_times_the_other or test_gradnorm_weights_stay_positive_and_sum_to_k_while_training)" \
    "${present[@]}" "$@"
