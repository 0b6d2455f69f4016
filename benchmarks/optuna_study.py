"""A plain Optuna study in worker processes: what a user would write instead of `tuner run`.

The baseline of `overhead_vs_optuna`, in Optuna's standard multi-process pattern: the study lives
in an RDB storage (SQLite here, as tuner's) and `--workers` spawned processes each load it and
run `study.optimize`, taking trials until `--trials` have been started. Processes, not
`n_jobs` threads: tuner's trials are processes (Ray actors), and threads would share one GIL.
Each worker has the multivariate TPE sampler tuner uses (seeded `--seed` + its index, so that the
workers do not suggest alike) and `AshaPruner`, Ray's ASHA rule as tuner's `asha` scheduler
applies it; it trains with the project's loop and data and writes one MLflow run per trial in a
SQLite store (parameters, then every epoch's metrics). It prints one JSON line: trials, epochs
trained, seconds spent in them, trials pruned, and when the first epoch began (Unix time).

    python -m benchmarks.optuna_study --model cnn --dataset mnist_sample --space '{...}' \
        --trials 16 --epochs 6 --workers 2 --grace-period 2 --reduction-factor 3 \
        --storage sqlite:////tmp/x/optuna.db --tracking-uri sqlite:////tmp/x/mlflow.db
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import queue
import time
from typing import Any

import numpy as np
import optuna

from trainables import metrics as m

STUDY = "optuna-baseline"


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


# --------------------------------------------------------------------------- ASHA's rule


def asha_rungs(grace_period: int, reduction_factor: float, max_resource: int) -> list[int]:
    """The epochs at which ASHA may stop a trial: grace_period * reduction_factor**k below
    max_resource (at max_resource a trial ends anyway)."""
    rungs, rung = [], float(grace_period)
    while rung < max_resource:
        rungs.append(int(rung))
        rung *= reduction_factor
    return rungs


def asha_stops(value: float, earlier: list[float], reduction_factor: float) -> bool:
    """Ray's ASHA decision at a rung (`ray.tune.schedulers.async_hyperband._Bracket`), values
    signed so that higher is better: stop when below the (1 - 1/reduction_factor) percentile
    (NaNs ignored, linear interpolation) of the values the trials that reached the rung earlier
    had there; never the first to reach it."""
    if not earlier:
        return False
    return bool(value < np.nanpercentile(earlier, (1 - 1 / reduction_factor) * 100))


class AshaPruner(optuna.pruners.BasePruner):
    """Ray Tune's ASHA rule (one bracket, as tuner's `asha` scheduler) as an Optuna pruner.

    Optuna's SuccessiveHalvingPruner has the same rungs but not the same cutoff: it promotes the
    best len(values) // reduction_factor of the values at the rung (its own included, at least
    the best one), where ASHA keeps a trial at or above the percentile of the earlier ones; with
    4 earlier values and factor 3, ASHA lets 2 of 5 on and Optuna's 1, so the two sides would
    train different epochs. Trials reach a rung in the order their values reach the storage, as
    results reach Ray's driver (two reports within milliseconds may each see the other).
    """

    def __init__(self, grace_period: int, reduction_factor: float, max_resource: int):
        self.reduction_factor = reduction_factor
        self.rungs = set(asha_rungs(grace_period, reduction_factor, max_resource))

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step not in self.rungs:
            return False
        sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
        earlier = [
            sign * t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number and step in t.intermediate_values
        ]
        return asha_stops(sign * trial.intermediate_values[step], earlier, self.reduction_factor)


# --------------------------------------------------------------------------- the workers


def worker(index: int, args: argparse.Namespace, started, done) -> None:
    """One worker process: trials of the shared study until `args.trials` have been started;
    puts its epochs, their seconds and when its first epoch began on `done`."""
    import torch
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from trainables.data import DataOptions, load_dataset
    from trainables.loop import TrainingRun

    torch.set_num_threads(1)  # one core per concurrent trial, as a tuner trial with cpu: 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = json.loads(args.space)
    data = load_dataset(DataOptions(args.dataset))
    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment_id = client.get_experiment_by_name(STUDY).experiment_id
    sign = 1 if m.OBJECTIVES[args.metric] == "min" else -1
    totals: dict[str, Any] = {"epochs": 0, "training_s": 0.0, "first_epoch_began": None}

    def objective(trial: optuna.Trial) -> float:
        config = suggest(trial, space)
        run_id = client.create_run(experiment_id, run_name=f"trial-{trial.number}").info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in config.items()])
        run = TrainingRun(args.model, config, data, seed=args.seed, max_epochs=args.epochs)
        best, status = math.inf * sign, "FAILED"
        try:
            for epoch in range(1, args.epochs + 1):
                if totals["first_epoch_began"] is None:
                    totals["first_epoch_began"] = time.time()
                row = run.run_epoch()
                totals["epochs"] += 1
                totals["training_s"] += row[m.EPOCH_TIME_S]
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

    study = optuna.load_study(
        study_name=STUDY,
        storage=args.storage,
        sampler=optuna.samplers.TPESampler(
            seed=args.seed + index, multivariate=True, group=True, constant_liar=True
        ),
        pruner=AshaPruner(args.grace_period, args.reduction_factor, args.epochs),
    )
    while take_trial(started, args.trials):
        study.optimize(objective, n_trials=1)
    done.put(totals)


def take_trial(started, trials: int) -> bool:
    """Count one more trial started, if fewer than `trials` have been (shared by the workers)."""
    with started.get_lock():
        if started.value >= trials:
            return False
        started.value += 1
        return True


def collect(done, workers: list) -> list[dict[str, Any]]:
    """Every worker's totals; a worker that died without them ends the study with its status."""
    totals: list[dict[str, Any]] = []
    while len(totals) < len(workers):
        try:
            totals.append(done.get(timeout=5))
        except queue.Empty:
            failed = [p.exitcode for p in workers if p.exitcode]
            if failed:
                raise SystemExit(f"an Optuna worker exited {failed[0]}") from None
    for process in workers:
        process.join()
    return totals


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--space", required=True, help="JSON mapping")
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True, help="processes, trials at a time")
    parser.add_argument("--grace-period", type=int, required=True)
    parser.add_argument("--reduction-factor", type=float, required=True)
    parser.add_argument("--storage", required=True, help="an Optuna RDB URL (sqlite:///...)")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metric", default=m.VAL_LOSS)
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "minimize" if m.OBJECTIVES[args.metric] == "min" else "maximize"
    optuna.create_study(study_name=STUDY, storage=args.storage, direction=direction)
    MlflowClient(tracking_uri=args.tracking_uri).create_experiment(STUDY)
    context = multiprocessing.get_context("spawn")
    started, done = context.Value("i", 0), context.Queue()
    workers = [
        context.Process(target=worker, args=(i, args, started, done)) for i in range(args.workers)
    ]
    for process in workers:
        process.start()
    totals = collect(done, workers)
    trials = optuna.load_study(study_name=STUDY, storage=args.storage).get_trials(deepcopy=False)
    summary = {
        "trials": len(trials),
        "epochs": sum(t["epochs"] for t in totals),
        "training_s": sum(t["training_s"] for t in totals),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "first_epoch_began": min(
            t["first_epoch_began"] for t in totals if t["first_epoch_began"] is not None
        ),
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
