#!/usr/bin/env bash
# The prepared GPU run: one command, nothing fetched, everything written under one folder.
#
#   bash benchmarks/gpu_run.sh [--dry-run] [--table1] [--backends "jax torch tensorflow"] OUT_DIR
#
# For each backend whose framework is installed (a missing one is recorded and skipped):
#   1. the GPU tests (`pytest -m gpu tests/test_gpu.py`),
#   2. the sampler benchmark against PyTorch's CUDA kernel (benchmarks.sampler --training),
#   3. a short distorted-MNIST comparison (CNN vs affine ST-CNN) tracked in a local MLflow store,
# then `benchmarks.summary --device gpu` over the benchmark results. Each step has its own time
# limit, so that one hung step cannot take the whole run: 60 + 90 + 90 s per backend bound two
# backends (a machine without TensorFlow) to 8 minutes on an H100/H200. DEVELOPERS.md says how
# to run it on a lent machine and what to commit.
#
# --table1 runs the paper's Table 1 at a reduced budget instead (experiments/table1.py: R, RTS, P,
# E with the CNN and the affine, projective and TPS ST-CNNs, cluttered with the CNN and affine, 3
# seeds, 2 epochs each), by default under torch only: one study per distortion, each under its own
# limit (4 x 100 + 60 s, so that the call fits 10 minutes), then the collected table
# `table1/table1_<backend>.md/.csv`, which lists what a limit cut off instead of filling it in.
#
# Without a GPU the run refuses, unless --dry-run: then every step runs on tiny sizes on the CPU
# (the suite does this, tests/experiments/test_benchmarks.py), so that the script is exercised where CI runs.
#
# Python packages the machine lacks (keras, mlflow-skinny, ...) are installed from ./.whl (or
# $KERAS_STN_WHEELS) when that folder exists (benchmarks/gpu_wheels.sh fills it), into a
# scratch folder on PYTHONPATH; a dry run uses the Python environment it is started in.
# The MNIST arrays come from $KERAS_STN_MNIST, else ./.data/mnist.npz.
set -uo pipefail

dry_run=0
table1=0
backends=""
while [[ $# -gt 1 ]]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        --table1) table1=1; shift ;;
        --backends) backends="$2"; shift 2 ;;
        *) echo "gpu_run.sh: unknown option $1 (expected --dry-run, --table1, --backends, then OUT_DIR)" >&2; exit 2 ;;
    esac
done
if [[ $# -ne 1 || "$1" == --* ]]; then
    echo "usage: bash benchmarks/gpu_run.sh [--dry-run] [--table1] [--backends \"jax torch tensorflow\"] OUT_DIR" >&2
    exit 2
fi
if [[ -z "$backends" ]]; then
    if [[ $table1 == 1 ]]; then backends="torch"; else backends="jax torch tensorflow"; fi
fi
out="$1"
cd "$(dirname "$0")/.."
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/run.log"
: >"$log"
python="${PYTHON:-python3}"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$log"; }

wheels="${KERAS_STN_WHEELS:-.whl}"
if [[ $dry_run == 0 && -d "$wheels" ]] && compgen -G "$wheels/*.whl" >/dev/null; then  # for the GPU machine
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_run_site "$wheels"/*.whl \
        || { say "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="/tmp/gpu_run_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"  # keras_stn, experiments and benchmarks from this tree
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# Several frameworks share the GPU in one process: no preallocation (benchmarks/__init__.py).
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_FORCE_GPU_ALLOW_GROWTH=true
export KERAS_STN_MNIST="${KERAS_STN_MNIST:-$PWD/.data/mnist.npz}"
export KERAS_STN_CACHE="$out/cache"  # the distorted digits are generated once, for every backend
# A file store: the machine has mlflow-skinny at most, which has no SQL backend.
export MLFLOW_TRACKING_URI="file://$out/mlruns" MLFLOW_ALLOW_FILE_STORE=true

if [[ $dry_run == 1 ]]; then
    export KERAS_STN_GPU_TESTS=cpu  # tests/test_gpu.py then runs on the CPU instead of skipping
    limit_tests=300 limit_bench=300 limit_mnist=300
    bench_args=(--cases tiny,tiny-bicubic --repeats 1 --no-compile)
    mnist_args=(--quick --transforms affine)
    limit_table1=300 limit_table1_last=300
    table1_seeds=(0)  # every distortion and arm of the plan, one seed, tiny sizes
    table1_args=(--quick)
else
    limit_tests=60 limit_bench=90 limit_mnist=90
    bench_args=(--cases small,channels,large,small-bicubic,large-bicubic,large-float16 --repeats 10 --no-compile --training)
    mnist_args=(--distortion rts --transforms none affine --epochs 2)
    limit_table1=100 limit_table1_last=60
    read -ra table1_seeds <<<"$("$python" -c "from experiments.table1 import SEEDS; print(*SEEDS)")"
    table1_args=(--epochs "$("$python" -c "from experiments.table1 import BUDGET; print(BUDGET['epochs'])")")
fi

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$python" -c "import sys; print('python', sys.version.split()[0])"
    "$python" - <<'PY'
import importlib
for name in ("keras", "torch", "jax", "jaxlib", "tensorflow", "mlflow", "numpy"):
    try:
        print(name, importlib.import_module(name).__version__)
    except ImportError:
        print(f"{name}: not installed")
PY
} >"$out/versions.txt" 2>&1
say "versions: $(tr '\n' ';' <"$out/versions.txt")"

status=0
step() {  # step NAME LIMIT_S COMMAND...: runs COMMAND with a time limit, logging to OUT/NAME.log
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    say "$name: exit $rc after $((SECONDS - start)) s (limit $limit s)"
    if [[ $rc -ne 0 ]]; then
        status=1
        tail -n 5 "$out/$name.log" | sed 's/^/    /' | tee -a "$log"
    fi
}

for backend in $backends; do
    module="$backend"
    if ! "$python" -c "import $module" 2>/dev/null; then
        say "$backend: skipped, $module is not installed on this machine"
        continue
    fi
    export KERAS_BACKEND="$backend"
    has_gpu="$("$python" -c "from benchmarks.sampler import backend_device; print(backend_device()[0])" 2>>"$log")"
    if [[ "$has_gpu" != gpu && $dry_run == 0 ]]; then
        say "$backend: refused, the backend sees no GPU (device kind '${has_gpu:-unknown}'); use --dry-run on a CPU"
        status=1
        continue
    fi
    if [[ $table1 == 1 ]]; then
        mapfile -t plan < <("$python" -m experiments.table1 plan)
        for index in "${!plan[@]}"; do
            read -r distortion arms <<<"${plan[$index]}"
            limit=$limit_table1
            (( index == ${#plan[@]} - 1 )) && limit=$limit_table1_last
            # shellcheck disable=SC2086  # the arms are words
            step "table1_${backend}_$distortion" "$limit" "$python" -m experiments.distorted_mnist \
                --distortion "$distortion" --transforms $arms --seeds "${table1_seeds[@]}" "${table1_args[@]}" --experiment-name table1 \
                --results-dir "$out/table1" --runs-dir "$out/table1_runs/$backend" --verbose 0
        done
        step "table1_${backend}" 30 "$python" -m experiments.table1 collect "$out/table1_runs/$backend" \
            --output "$out/table1/table1_$backend" --seeds "${table1_seeds[@]}"
        continue
    fi
    step "tests_$backend" "$limit_tests" "$python" -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_gpu.py
    step "benchmark_$backend" "$limit_bench" "$python" -m benchmarks.sampler "${bench_args[@]}" --results-dir "$out/benchmarks"
    step "mnist_$backend" "$limit_mnist" "$python" -m experiments.distorted_mnist "${mnist_args[@]}" \
        --experiment-name gpu-run --results-dir "$out/mnist_$backend" --runs-dir "$out/runs" --verbose 0
done

kind=gpu
[[ $dry_run == 1 ]] && kind=cpu
if [[ $table1 == 0 ]]; then
    "$python" -m benchmarks.summary --device "$kind" --results-dir "$out/benchmarks" >"$out/summary.md" 2>>"$log" || status=1
fi
say "done, exit $status: $out"
exit $status
