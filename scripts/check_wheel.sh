#!/usr/bin/env bash
# The distributable package: `python -m build` makes a wheel and an sdist of the files git knows, both
# must pass `twine check --strict`; the wheel is installed (core only: no extra) into a fresh venv,
# .venv-wheel (torch+numpy as scripts/setup.sh installs them, kept between calls; the wheel is
# reinstalled every time), and the core tests of scripts/core_check.sh run there against it.
#   bash scripts/check_wheel.sh [-- PYTEST_ARGS]
# Needs `build` and `twine` (the dev extra) in .venv, or BUILD_PYTHON=... naming a Python that has them;
# the build itself runs in build's isolated environment (setuptools and wheel from the package index).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_PYTHON="${BUILD_PYTHON:-.venv/bin/python}"
case "$BUILD_PYTHON" in /*) ;; *) BUILD_PYTHON="$PWD/$BUILD_PYTHON" ;; esac  # the build runs elsewhere
VENV="${WHEEL_VENV:-.venv-wheel}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
quiet_pip_warnings() { grep -v "^WARNING: Location '.*' is ignored" || true; }
PIP=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)

if ! "$BUILD_PYTHON" -c "import build, twine" 2>/dev/null; then
    echo "[wheel] $BUILD_PYTHON lacks build or twine: bash scripts/setup.sh (the dev extra has them)" >&2
    exit 1
fi

# 1. Build from a copy of the files git knows (tracked, or new and not ignored), so that no stale build/
# or egg-info of the checkout gets in; then twine's checks of the metadata and the README rendering.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/src" "$work/dist"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$work/src"
echo "[wheel] python -m build"
(cd "$work/src" && "$BUILD_PYTHON" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1) \
    || { tail -30 "$work/build.log" >&2; echo "[wheel] python -m build failed" >&2; exit 1; }
wheel=("$work"/dist/*.whl)
sdist=("$work"/dist/*.tar.gz)
[ -f "${wheel[0]}" ] && [ -f "${sdist[0]}" ] || { echo "[wheel] build made no wheel or no sdist" >&2; exit 1; }
"$BUILD_PYTHON" -m twine check --strict "${wheel[0]}" "${sdist[0]}"

# 2. A fresh venv with the core dependencies only: torch first, pinned (CPU build without a GPU), then
# the wheel with its declared dependencies (numpy), then only the test tools.
if [ ! -x "$VENV/bin/python" ]; then
    echo "[wheel] creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_SPEC:-}" ]; then
        "${PIP[@]}" install "$TORCH_SPEC" 2> >(quiet_pip_warnings >&2)
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        "${PIP[@]}" install "torch==$TORCH_VERSION" 2> >(quiet_pip_warnings >&2)
    else
        "${PIP[@]}" install "torch==$TORCH_VERSION+cpu" 2>/dev/null \
            || "${PIP[@]}" install "torch==$TORCH_VERSION+cpu" --extra-index-url https://download.pytorch.org/whl/cpu \
                2> >(quiet_pip_warnings >&2)
    fi
fi
echo "[wheel] installing $(basename "${wheel[0]}") into $VENV"
"${PIP[@]}" install "${wheel[0]}" "pytest>=8" "pytest-xdist>=3.5" "hypothesis>=6.100" 2> >(quiet_pip_warnings >&2)
"${PIP[@]}" install --force-reinstall --no-deps "${wheel[0]}" 2> >(quiet_pip_warnings >&2)  # same version, new build

# 3. The installed package is the wheel's (not the checkout's src/), and its command runs.
"$VENV/bin/python" - "$VENV" <<'PY'
import pathlib, sys

import mtlopt

where = pathlib.Path(mtlopt.__file__).resolve()
venv = pathlib.Path(sys.argv[1]).resolve()
assert venv in where.parents, f"mtlopt imported from {where}, not from the wheel installed in {venv}"
assert (where.parent / "py.typed").is_file(), "the wheel lacks py.typed"
print(f"[wheel] mtlopt {mtlopt.__version__} from {where.parent}")
PY
"$VENV/bin/mtlopt" --version
"$VENV/bin/python" scripts/import_light.py  # the core-only job's import check

# 4. The core tests, as the core-only job selects them (its list and deselection, read from
# scripts/core_check.sh so that the two stay one list), run from the checkout against the wheel.
eval "$(sed -n '/^core_tests=(/,/^)/p' scripts/core_check.sh)"
deselect="$(sed -n 's/^ *-k "\(.*\)" \\$/\1/p' scripts/core_check.sh)"
if [ "${#core_tests[@]}" -eq 0 ] || [ -z "$deselect" ]; then
    echo "[wheel] cannot read the core tests from scripts/core_check.sh" >&2
    exit 1
fi
present=()
for f in "${core_tests[@]}"; do [ -e "$f" ] && present+=("$f"); done
if [ "${1:-}" = "--" ]; then shift; fi
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -n "${MTLOPT_TEST_WORKERS:-auto}" -m "not slow" \
    -k "$deselect" "${present[@]}" "$@"
