#!/usr/bin/env bash
# Run HERE (pip and PyPI reachable), before the device calls of docs/development.md: downloads
# every wheel tuner needs that the GPU image lacks (Ray, mlflow-skinny, Optuna, pydantic, plotly,
# SQLAlchemy, alembic, mlxtend, mnist1d, ...: requirements.lock minus the image, for CPython 3.12
# manylinux x86_64, binaries only) into .whl/wheels, then packs them into .whl/part1..N, each
# under 60 MiB with a manifest of sizes and sha256 (Ray's wheel is cut in pieces), one per call.
# Usage: bash benchmarks/gpu_wheels.sh [PYTHON]   (PYTHON: the venv of requirements.lock, with
# pip; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
"$PY" benchmarks/gpu_prepare.py download
"$PY" benchmarks/gpu_prepare.py pack
du -sb .whl/part*
echo "carry one part a call (carry: [\".whl/partK\"]); the calls are in docs/development.md"
