#!/usr/bin/env bash
# Create .venv and install mtlopt with its extras. Safe to re-run: it skips what is already done.
#   bash scripts/setup.sh [EXTRAS]     EXTRAS: comma-separated extras, default bench,pareto,dev
#   VENV=.venv-core bash scripts/setup.sh none
#                                      `pip install .` (not editable) without any extra: the core only,
#                                      as a user installs it (scripts/core_check.sh); reinstalled on
#                                      every call, so that it is the current source.
#
# torch is installed first, pinned: on a machine without an NVIDIA GPU the CPU build (torch==X+cpu),
# found either on the configured package indexes or on the PyTorch CPU index; never the multi-GB
# CUDA build that a plain `pip install torch` pulls on Linux. Override with TORCH_SPEC=... if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EXTRAS="${1:-bench,pareto,dev}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)

installed_torch="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [ -z "$installed_torch" ]; then
    if [ -n "${TORCH_SPEC:-}" ]; then
        echo "[setup] installing $TORCH_SPEC"
        "${PIP[@]}" install "$TORCH_SPEC" numpy
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "[setup] NVIDIA GPU found: installing torch==$TORCH_VERSION (CUDA build)"
        "${PIP[@]}" install "torch==$TORCH_VERSION" numpy
    else
        echo "[setup] no GPU: installing the CPU build torch==$TORCH_VERSION+cpu"
        "${PIP[@]}" install "torch==$TORCH_VERSION+cpu" numpy 2>/dev/null \
            || "${PIP[@]}" install "torch==$TORCH_VERSION+cpu" numpy \
                --extra-index-url https://download.pytorch.org/whl/cpu
    fi
else
    echo "[setup] torch $installed_torch already installed"
fi

# Fashion-MNIST for the MultiFashion benchmark: Debian's package when we can install it (root with
# apt-get); otherwise mtlopt reads --data-root or downloads it (checksummed) when online.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's dataset-fashion-mnist"
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
        || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
        || echo "[setup] could not install dataset-fashion-mnist; mtlopt will look for the data elsewhere"
fi

stamp="$VENV/.mtlopt-installed-$EXTRAS"
if [ "$EXTRAS" = none ]; then
    # Built from a temporary copy of the files git knows (tracked, or new and not ignored): a stale
    # build/lib in the checkout would otherwise put deleted modules into the wheel.
    echo "[setup] installing mtlopt without extras (pip install .)"
    src="$(mktemp -d)"
    trap 'rm -rf "$src"' EXIT
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [ -e "$f" ] && printf '%s\0' "$f"
    done | tar --null -T - -cf - | tar -xf - -C "$src"
    "${PIP[@]}" install "$src"
elif [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] installing mtlopt[$EXTRAS] (editable)"
    "${PIP[@]}" install -e ".[$EXTRAS]"
    touch "$stamp"
fi
"$VENV/bin/python" -c 'import mtlopt, torch; print(f"[setup] mtlopt {mtlopt.__version__}, torch {torch.__version__}")'
