#!/usr/bin/env bash
# Fills ./.whl with the wheels that benchmarks/gpu_run.sh needs on a GPU machine that cannot
# install anything itself: Keras and MLflow's client (mlflow-skinny) with what they need, for
# that machine's Python (3.12, x86-64 Linux), at the versions installed here.
#
#   bash benchmarks/gpu_wheels.sh
#
# Wheels of packages the machine already has (NumPy, PyTorch, JAX, protobuf, ...: PRESENT below)
# are left out, to stay under the 64 MiB that can travel with the working tree. TensorFlow's
# wheel alone is larger than that: a machine without TensorFlow runs the other two backends.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
version() { "$python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
PRESENT="absl-py anyio certifi charset-normalizer click cloudpickle h11 h5py idna jinja2 markdown markdown-it-py
markupsafe mdurl ml-dtypes numpy packaging pillow protobuf pygments pyyaml requests rich typing-extensions urllib3
zipp httpx httpcore annotated-doc scipy matplotlib"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
"$python" -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$scratch" \
    "keras==$(version keras)" "mlflow-skinny==$(version mlflow-skinny)"
mkdir -p .whl
rm -f .whl/*.whl
for wheel in "$scratch"/*.whl; do
    name="$(basename "$wheel" | cut -d- -f1 | tr '_A-Z' '-a-z')"
    if ! grep -qw -- "$name" <<<"$PRESENT"; then
        cp "$wheel" .whl/
    fi
done
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl (ignored by git; carry it: DEVELOPERS.md)"
