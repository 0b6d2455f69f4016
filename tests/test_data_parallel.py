"""Trials of several data-parallel workers (`resources.workers`, Ray Train, gloo on CPU): a study
under ASHA, the same curve as one worker, MLflow's tags, a driver killed mid-study resumed."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import (
    assert_every_trial_once,
    journal_events,
    killed_mid_study,
    ray_head,
    resume_in_a_new_process,
    run_counts,
    spec_file,
    tiny_spec,
    tuner_run_on,
)
from trainables import metrics as m
from trainables.data import DataOptions, load_dataset
from trainables.trainable import TrialSettings
from tuner.driver.journal import JOURNAL_FILE
from tuner.driver.study import run_study
from tuner.results import outcomes
from tuner.tracking import schema

ROOT = Path(__file__).resolve().parents[1]
#: one fixed config (a constant space): the same trial at any worker count
FIXED = {"lr": 0.01, "batch_size": 64, "hidden_units": 32, "num_layers": 1, "dropout": 0.0}
#: each worker 1 CPU: the test Ray's 2 CPUs hold one 2-worker trial at a time
TWO_WORKERS = {"workers": 2, "cpu": 1}


@pytest.mark.usefixtures("ray_local")
def test_a_two_worker_study_completes_under_asha_with_one_row_per_epoch(study_dir: Path) -> None:
    """Three 2-worker trials under ASHA, then the best re-run as a finalist (with 2 workers
    too: the same trainable): one set of global metrics per epoch, one MLflow run per trial."""
    spec = tiny_spec(
        name="dp-asha",
        search={"num_samples": 3, "max_concurrent": 2},
        scheduler={"name": "asha", "max_epochs": 3, "grace_period": 1, "reduction_factor": 2},
        resources=TWO_WORKERS,
        selection={"finalists": 1, "seeds": 1},
    )
    result = run_study(spec, show_progress=False)

    trials = result.trials
    assert len(trials) == 3
    assert set(trials["status"]) <= {outcomes.COMPLETED, outcomes.STOPPED_BY_SCHEDULER}
    assert outcomes.COMPLETED in set(trials["status"])
    rows = [e for e in journal_events(study_dir / "tuner-results") if e["event"] == "result"]
    for trial_id in trials["trial_id"]:
        epochs = [e["row"][m.EPOCH] for e in rows if e["trial_id"] == trial_id]
        assert epochs == list(range(1, len(epochs) + 1))  # one global row per epoch
        assert all(e["node"] for e in rows if e["trial_id"] == trial_id)
    reruns = result.finalists.reruns
    assert len(reruns) == 1 and (reruns["status"] == outcomes.COMPLETED).all()
    assert reruns["score"].notna().all()
    client = MlflowClient(spec.tracking.uri)
    children = client.search_runs(
        [client.get_experiment_by_name(spec.tracking.experiment).experiment_id],
        f"tags.{schema.ROLE_TAG} = '{schema.TRIAL_ROLE}'",
    )
    assert len(children) == 3  # one run per trial, not per worker
    for run in children:
        assert run.data.tags[schema.WORKERS_TAG] == "2"
        nodes = run.data.tags[schema.WORKER_NODES_TAG].split(",")
        assert len(nodes) == 2 and all(nodes)  # every worker's node, in rank order
        assert run.data.tags[schema.DEVICE_TAG] == "cpu"
        history = client.get_metric_history(run.info.run_id, m.VAL_LOSS)
        assert sorted(p.step for p in history) == list(range(1, len(history) + 1))


def one_worker_rows(settings: TrialSettings, data) -> list[dict]:
    """The trial trained in this process, as a one-worker trial trains it."""
    from trainables.trainable import train_epochs, training_run
    from trainables.usage import UsageMeter

    rows: list[dict] = []
    run = training_run(FIXED, data, settings, torch_cpu(), settings.seed)
    train_epochs(run, data, settings, UsageMeter(torch_cpu(), 0.0), 3, None, rows_to(rows))
    return rows


def two_worker_rows(settings: TrialSettings, data) -> list[dict]:
    """The trial trained by two Ray Train workers (gloo), as a 2-worker trial trains it: the
    rows its first worker sends."""
    from ray.util.queue import Queue

    from trainables.data_parallel import worker_group

    results = Queue(maxsize=10, actor_options={"num_cpus": 0})
    worker_group(FIXED, data, settings, None, results, os.getcwd()).fit()
    rows = [results.get(timeout=10)[0] for _ in range(results.size())]
    results.shutdown()
    return rows


def torch_cpu():
    import torch

    return torch.device("cpu")


def rows_to(rows: list[dict]):
    return lambda result, folder: rows.append(result)


@pytest.mark.usefixtures("ray_local")
def test_two_workers_follow_one_workers_curve(study_dir: Path) -> None:
    """The same config and seed at 1 and 2 workers, global batch 64, on a split of 1438 rows
    (even, so no worker pads its share; the last batch, 30 rows, splits 15 + 15): the two
    workers' k-th batches together are the one worker's k-th batch (one shuffle,
    DistributedSampler's rows), DDP averages the two half-batch mean gradients into the
    full-batch mean, and evaluation adds up sums over every row. What is left is float
    reassociation (the all-reduce's order of additions, BLAS on half a batch against a whole
    one): ~1e-7 relative per step, a few 1e-6 after 3 epochs of 23 Adam steps. Tolerance 1e-4
    relative: 50 times that, while a worker training on the whole split, or both on the same
    half, is off by more than 1e-2 (the loss falls ~40% an epoch). (On an odd split the
    workers pad with one repeated row: measured 2.5e-3 after one epoch, hence this split.)"""
    data = load_dataset(DataOptions(name="digits", val_fraction=0.1995))
    assert len(data.x_train) == 1438
    settings = TrialSettings(model="mlp", max_epochs=3, seed=0, workers=2)

    one, two = one_worker_rows(settings, data), two_worker_rows(settings, data)

    assert [r[m.EPOCH] for r in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        for key in (m.TRAIN_LOSS, m.VAL_LOSS, m.TRAIN_ACC, m.VAL_ACC):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a[m.EPOCH], a[key], b[key])
    assert one[-1][m.VAL_LOSS] < one[0][m.VAL_LOSS] * 0.8  # it trained: the test can tell


def in_repo_env() -> dict[str, str]:
    """A `python -m tuner` subprocess imports tuner from this checkout, whatever its cwd."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


@pytest.mark.integration
def test_a_killed_study_of_two_worker_trials_resumes_with_every_trial_once(tmp_path: Path) -> None:
    """The driver and its Ray killed as a reboot would, once the first 2-worker trial reported
    an epoch (so it dies mid-trial, its workers with it); `tuner resume` restores every rank
    from the trial's checkpoint and the study ends with each trial once in MLflow and Optuna."""
    trials_n = 3
    spec = {
        "name": "dp-resume",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search_space": {**FIXED, "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "search": {"algorithm": "tpe", "num_samples": trials_n, "max_concurrent": 2},
        "scheduler": {"name": "asha", "max_epochs": 3, "grace_period": 1},
        "resources": TWO_WORKERS,
    }
    folder = killed_mid_study(
        tmp_path,
        spec,
        lambda events: any(e["event"] == "result" for e in events),
        env=in_repo_env(),
    )
    resume_in_a_new_process(folder, tmp_path, env=in_repo_env())

    trials = pd.read_csv(folder / "trials.csv")
    assert sorted(trials["trial"]) == list(range(1, trials_n + 1))
    assert set(trials["status"]) <= {outcomes.COMPLETED, outcomes.STOPPED_BY_SCHEDULER}
    assert_every_trial_once(
        tmp_path, folder.name, folder / JOURNAL_FILE, trials, num_trials=trials_n
    )
    assert run_counts(tmp_path / "mlflow.db")["RUNNING"] == 0


@pytest.mark.integration
def test_spread_puts_a_trials_two_workers_on_two_nodes(tmp_path: Path) -> None:
    """A two-node cluster on 127.0.0.1 (`ray start` head + worker, 1 CPU each): placement
    spread runs the trial's two workers one on each node, and MLflow records both nodes."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    raw = {
        "name": "dp-spread",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search_space": FIXED,
        "search": {"num_samples": 1, "max_concurrent": 1},
        "scheduler": {"name": "fifo", "max_epochs": 2},
        "resources": {"workers": 2, "cpu": 1, "placement": "spread"},
    }
    spec = spec_file(tmp_path, raw)
    with ray_head(1, env, workers=1, dashboard=False, object_store_mb=100) as head:
        ran = tuner_run_on(head.gcs, head.env, spec)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs(
        [client.get_experiment_by_name("dp-spread").experiment_id],
        f"tags.{schema.ROLE_TAG} = '{schema.TRIAL_ROLE}'",
    )
    nodes = run.data.tags[schema.WORKER_NODES_TAG].split(",")
    assert len(nodes) == 2 and len(set(nodes)) == 2  # one worker on each node
    assert run.data.tags[schema.WORKERS_TAG] == "2"
