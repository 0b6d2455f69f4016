"""A plain Optuna study in one process: what a user would write instead of `tuner run`.

The baseline of `overhead_vs_optuna`: `study.optimize` with `n_jobs` threads, a seeded TPE
sampler, a SuccessiveHalvingPruner on the epochs, the project's training loop and data, and one
MLflow run per trial in a SQLite store (parameters, then every epoch's metrics). It prints one
JSON line: trials, epochs trained, seconds spent in them, trials pruned, and when the first epoch
began (Unix time).

    python -m benchmarks.optuna_study --model cnn --dataset mnist_sample --space '{...}' \
        --trials 16 --epochs 6 --n-jobs 2 --min-resource 2 --reduction-factor 3 \
        --tracking-uri sqlite:////tmp/x/mlflow.db
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from typing import Any

import optuna
import torch
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from trainables import metrics as m
from trainables.data import DataOptions, load_dataset
from trainables.loop import TrainingRun


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """A trial's config from a mapping of {type, low, high, log} / {type, choices} / constants."""
    config = {}
    for name, entry in space.items():
        if not isinstance(entry, dict):
            config[name] = entry
        elif entry["type"] == "float":
            config[name] = trial.suggest_float(
                name, entry["low"], entry["high"], log=entry.get("log", False)
            )
        elif entry["type"] == "int":
            config[name] = trial.suggest_int(
                name, entry["low"], entry["high"], log=entry.get("log", False)
            )
        else:
            config[name] = trial.suggest_categorical(name, entry["choices"])
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--space", required=True, help="JSON mapping")
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--n-jobs", type=int, required=True)
    parser.add_argument("--min-resource", type=int, required=True)
    parser.add_argument("--reduction-factor", type=int, required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metric", default=m.VAL_LOSS)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # one core per concurrent trial, as a tuner trial with cpu: 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = json.loads(args.space)
    data = load_dataset(DataOptions(args.dataset))
    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment_id = client.create_experiment(f"optuna-{args.model}")
    sign = 1 if m.OBJECTIVES[args.metric] == "min" else -1
    epochs_trained, training_s, first_epoch_began = 0, 0.0, None
    lock = threading.Lock()

    def objective(trial: optuna.Trial) -> float:
        nonlocal epochs_trained, training_s, first_epoch_began
        config = suggest(trial, space)
        run_id = client.create_run(experiment_id, run_name=f"trial-{trial.number}").info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in config.items()])
        run = TrainingRun(args.model, config, data, seed=args.seed)
        best, status = math.inf * sign, "FAILED"
        try:
            for epoch in range(1, args.epochs + 1):
                if first_epoch_began is None:
                    first_epoch_began = time.time()
                row = run.run_epoch()
                with lock:
                    epochs_trained += 1
                    training_s += row[m.EPOCH_TIME_S]
                stamp = int(time.time() * 1000)
                client.log_batch(
                    run_id,
                    metrics=[Metric(k, float(row[k]), stamp, epoch) for k in m.CURVES if k in row],
                )
                value = row[args.metric]
                best = min(best, value) if sign > 0 else max(best, value)
                trial.report(value, epoch)
                if trial.should_prune():
                    status = "FINISHED"
                    raise optuna.TrialPruned()
            status = "FINISHED"
            return best
        finally:
            client.set_terminated(run_id, status)

    study = optuna.create_study(
        direction="minimize" if sign > 0 else "maximize",
        sampler=optuna.samplers.TPESampler(
            seed=args.seed, multivariate=True, group=True, constant_liar=True
        ),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=args.min_resource, reduction_factor=args.reduction_factor
        ),
    )
    study.optimize(objective, n_trials=args.trials, n_jobs=args.n_jobs)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    summary = {
        "trials": len(study.trials),
        "epochs": epochs_trained,
        "training_s": training_s,
        "pruned": pruned,
    }
    print(json.dumps({**summary, "first_epoch_began": first_epoch_began}))


if __name__ == "__main__":
    main()
