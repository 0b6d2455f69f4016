"""Trials of several data-parallel workers (`resources.workers`, Ray Train, gloo on CPU): a study
under ASHA, the same curve as one worker, MLflow's tags, a driver killed mid-study resumed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import (
    journal_events,
    killed_mid_study,
    resume_in_a_new_process,
    run_counts,
    tiny_spec,
)
from trainables import metrics as m
from trainables.data import DataOptions, load_dataset
from trainables.loop import TrainingRun
from trainables.trainable import TrialSettings
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
    spec = tiny_spec(
        name="dp-asha",
        search={"num_samples": 3, "max_concurrent": 2},
        scheduler={"name": "asha", "max_epochs": 3, "grace_period": 1, "reduction_factor": 2},
        resources=TWO_WORKERS,
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
