"""The 8-trial study of benchmarks/gpu_study.yaml through `tuner run`, then what it left behind:
every trial a finished MLflow child run that trained on CUDA with a GPU id from Ray, and every
trial in the Optuna study. Prints one JSON line; exit 0 when all holds.

    python -m benchmarks.gpu_study [FOLDER]   (FOLDER: scratch for the stores, default a temp dir)

benchmarks/gpu_check.sh runs it on a bare GPU machine after installing the carried wheels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "benchmarks" / "gpu_study.yaml"
TRIALS = 8


def run_study(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    optuna_url = f"sqlite:///{folder / 'optuna.db'}"
    overrides = [f"tracking.uri={tracking}", f"search.storage={optuna_url}"]
    overrides.append(f"storage={folder / 'results'}")
    command = [sys.executable, "-m", "tuner", "run", str(SPEC)]
    for override in overrides:
        command += ["--set", override]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    started = time.monotonic()
    proc = subprocess.run(command, cwd=folder, env=env, check=False)
    facts: dict = {
        "tuner_run_exit": proc.returncode,
        "wall_s": round(time.monotonic() - started, 1),
    }
    facts.update(check_stores(tracking, optuna_url))
    facts["ok"] = (
        proc.returncode == 0
        and facts["child_runs_finished"] == TRIALS
        and facts["child_runs_on_cuda"] == TRIALS
        and facts["child_runs_with_gpu_ids"] == TRIALS
        and facts["optuna_trials"] == TRIALS
    )
    return facts


def check_stores(tracking: str, optuna_url: str) -> dict:
    """What MLflow and Optuna hold of the study (zeros where a store was never made)."""
    import optuna
    from mlflow import MlflowClient

    from tuner.tracking import schema

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("gpu-check")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    tags = [r.data.tags for r in children]
    try:
        (summary,) = optuna.study.get_all_study_summaries(optuna_url)
        optuna_trials = summary.n_trials
    except ValueError:
        optuna_trials = 0
    return {
        "child_runs": len(children),
        "child_runs_finished": sum(r.info.status == "FINISHED" for r in children),
        "child_runs_on_cuda": sum(t.get(schema.DEVICE_TAG, "").startswith("cuda") for t in tags),
        "child_runs_with_gpu_ids": sum(bool(t.get(schema.GPU_IDS_TAG)) for t in tags),
        "trial_status": sorted(t.get(schema.TRIAL_STATUS_TAG, "?") for t in tags),
        "optuna_trials": optuna_trials,
    }


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="gpu-study-"))
    facts = run_study(folder.resolve())
    print("gpu_study " + json.dumps(facts))
    return 0 if facts["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
