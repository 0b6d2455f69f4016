"""tuner/tracking/run_writes.py: what one MLflow run receives, within MLflow's limits, against a
real SQLite tracking store."""

from __future__ import annotations

import math
from pathlib import Path

from mlflow.entities import Metric, RunTag

from trainables import metrics as m
from tuner.results import diagnostics
from tuner.tracking.run_writes import (
    BATCH_LIMIT,
    MAX_PARAM_LENGTH,
    as_params,
    epoch_metrics,
    log_batch,
)
from tuner.tracking.runs import client_for


def test_params_are_flattened_redacted_cut_to_mlflow_s_limit_and_skip_none() -> None:
    params = as_params(
        {
            "search": {"storage": "postgresql://u:hunter2@db/optuna", "seed": 7},
            "notes": "x" * (MAX_PARAM_LENGTH + 50),
            "unset": None,
        }
    )
    by_key = {p.key: p.value for p in params}
    assert set(by_key) == {"search.storage", "search.seed", "notes"}
    assert by_key["search.storage"] == "postgresql://u:***@db/optuna"
    assert by_key["search.seed"] == "7"
    assert len(by_key["notes"]) == MAX_PARAM_LENGTH


def test_an_epoch_s_points_step_by_epoch_with_the_accuracy_gap_and_no_nan() -> None:
    row = {m.EPOCH: 3, m.TRAIN_LOSS: 0.5, m.VAL_LOSS: math.nan, m.TRAIN_ACC: 0.9, m.VAL_ACC: 0.8}
    points = {p.key: (p.step, p.value) for p in epoch_metrics(row, timestamp=1)}
    assert points[m.TRAIN_LOSS] == (3, 0.5)
    assert m.VAL_LOSS not in points  # not finite: skipped, never logged as NaN
    step, gap = points[diagnostics.GAP_ACC]
    assert step == 3 and math.isclose(gap, 0.1)


def test_a_batch_over_mlflow_s_limits_arrives_whole_in_several_calls(tmp_path: Path) -> None:
    """2,500 metrics, 150 params and 30 tags: more than one log_batch call may carry (1,000
    entities, 100 params); every value arrives, tag values redacted."""
    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("writes")).info.run_id
    metrics = [Metric("loss", float(step), 0, step) for step in range(2500)]
    params = as_params({f"p{i}": i for i in range(150)})
    tags = [RunTag(f"t{i}", "https://user:s3cret@host/x") for i in range(30)]
    calls = []

    class Counting:
        def log_batch(self, run_id, **batch):
            calls.append({k: len(v) for k, v in batch.items()})
            client.log_batch(run_id, **batch)

    log_batch(Counting(), run_id, metrics=metrics, params=params, tags=tags)
    assert all(sum(call.values()) <= BATCH_LIMIT and call["params"] <= 100 for call in calls)
    assert len(calls) == 3
    history = client.get_metric_history(run_id, "loss")
    assert sorted(p.step for p in history) == list(range(2500))
    run = client.get_run(run_id)
    assert run.data.params == {f"p{i}": str(i) for i in range(150)}
    assert {run.data.tags[f"t{i}"] for i in range(30)} == {"https://user:***@host/x"}
