"""The study's parent run in MLflow: created with the resolved spec, plug-ins and dataset inputs,
finished with the results table, best config, counts and importances, and the finalists'
re-runs as its children with the winner on the parent. Each trial's run is the callback's
(`tuner.tracking.mlflow_callback`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from trainables import metrics as m
from trainables.plugins import PluginCode
from tuner.cluster.redaction import redact
from tuner.results import diagnostics, outcomes
from tuner.results.finalists import confirmed_metrics
from tuner.spec.job_spec import JobSpec
from tuner.spec.plugin_files import log_plugins, plugins_tag
from tuner.tracking import schema
from tuner.tracking.buffer import BufferedWriter
from tuner.tracking.inputs import as_dataset_inputs
from tuner.tracking.run_writes import MAX_TAG_LENGTH, as_params, epoch_metrics, log_batch, now_ms
from tuner.tracking.runs import child_runs

if TYPE_CHECKING:
    import pandas as pd

    from tuner.results.trials import Finalists, StudyResult


def ensure_experiment(client, spec: JobSpec) -> str:
    """The study's experiment; SQLite stores keep artifacts in `mlartifacts/` beside the file."""
    name = spec.tracking.experiment or spec.name
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if spec.tracking.uri.startswith("sqlite:///"):
        db = Path(spec.tracking.uri.removeprefix("sqlite:///"))
        location = (db.parent / "mlartifacts").as_uri()
    # MLflow 3's UI opens an experiment of this kind on its runs table (model training view)
    tags = {schema.EXPERIMENT_KIND_TAG: "custom_model_development"}
    return client.create_experiment(name, artifact_location=location, tags=tags)


def training_tag(spec: JobSpec) -> dict[str, str]:
    """The spec's training section as the parent run's tag, which `tuner export` reads back."""
    return {schema.TRAINING_TAG: json.dumps(spec.training.model_dump(mode="json"))}


def objectives_tag(spec: JobSpec) -> dict[str, str]:
    """Several objectives: all of them as the parent's tag (`tuner.objective` is the first)."""
    if not spec.multi_objective:
        return {}
    pairs = [(o.metric, o.mode) for o in spec.objectives]
    return {schema.OBJECTIVES_TAG: schema.encode_objectives(pairs)}


def tag_pareto(client, run_ids: dict[str, str], trials: pd.DataFrame) -> int:
    """Tag every trial's run `tuner.pareto` true or false (several objectives only); returns how
    many are on the front."""
    if schema.PARETO not in trials:
        return 0
    for trial_id, on_front in zip(trials["trial_id"], trials[schema.PARETO], strict=True):
        if trial_id in run_ids:
            client.set_tag(run_ids[trial_id], schema.PARETO_TAG, "true" if on_front else "false")
    return int(trials[schema.PARETO].sum())


def start_parent_run(
    client,
    spec: JobSpec,
    execution: str,
    results_path: Path | str,
    plugins: Sequence[PluginCode] = (),
    inputs: Sequence[dict[str, Any]] = (),
) -> tuple[str, str]:
    """Create the study's parent run with the resolved spec, the plug-ins' code and the dataset
    inputs (`tuner.tracking.inputs`); returns (experiment id, run id)."""
    from mlflow.entities import RunTag

    experiment_id = ensure_experiment(client, spec)
    run = client.create_run(
        experiment_id,
        run_name=execution,
        tags={
            schema.ROLE_TAG: schema.STUDY_ROLE,
            schema.STUDY_TAG: spec.name,
            schema.EXECUTION_TAG: execution,
            schema.MODEL_TAG: spec.model,
            **({schema.LOOP_TAG: spec.loop} if spec.loop else {}),
            schema.DATASET_TAG: json.dumps(spec.dataset.model_dump(exclude_none=True)),
            schema.OBJECTIVE_TAG: schema.encode_objective(
                spec.objective.metric, spec.objective.mode
            ),
            **objectives_tag(spec),
            schema.SEED_TAG: str(spec.search.seed),
            **training_tag(spec),
            schema.RESULTS_PATH_TAG: str(results_path),
            schema.OPTUNA_TAG: redact(f"{spec.search.storage}#{execution}"),
            **plugins_tag(plugins),
        },
    )
    run_id = run.info.run_id
    log_batch(
        client,
        run_id,
        params=as_params(spec.model_dump(mode="json")),
        tags=[
            RunTag(schema.NOTE_TAG, f"tuner study {execution}: running (its summary comes here)")
        ],
    )
    if inputs:
        client.log_inputs(run_id, datasets=as_dataset_inputs(list(inputs)))
    client.log_text(run_id, redact(spec.to_yaml()), "spec.yaml")
    log_plugins(client, run_id, plugins)
    return experiment_id, run_id


def finish_parent_run(
    client: BufferedWriter,
    run_id: str,
    result: StudyResult,
    best_config: dict[str, Any] | None,
    importances: dict[str, float] | None,
    note: str | None = None,
) -> None:
    """Results table, best config, importances, counts, the best objective and the study's
    description (`note`, Markdown) on the parent."""
    from mlflow.entities import Metric, RunTag

    spec, trials = result.spec, result.trials
    ts = now_ms()
    values: dict[str, float] = {"wall_time_s": result.wall_time_s, schema.TRIALS_TOTAL: len(trials)}
    # every count, zeros too: a resumed study's end replaces the counts its interruption logged
    counts = (
        ("status", schema.STATUS_COUNT_PREFIX, outcomes.STATUSES),
        ("diagnosis", schema.DIAGNOSIS_COUNT_PREFIX, diagnostics.DIAGNOSES),
    )
    for column, prefix, names in counts:
        found = trials[column].value_counts() if column in trials else {}
        for name in dict.fromkeys([*names, *found.keys()]):
            values[f"{prefix}{name}"] = int(found.get(name, 0))
    if len(trials):
        values["epochs_trained"] = int(trials["epochs"].sum())
    if schema.PARETO in trials:
        values["pareto_trials"] = int(trials[schema.PARETO].sum())
    best = result.best
    if best is not None:
        objective = schema.best(spec.objective.metric)
        keys = [schema.best(k) for k in (m.VAL_LOSS, m.VAL_ACC, m.TRAIN_LOSS)]
        for key in (*keys, schema.BEST_EPOCH, objective):
            value = best.get(key)
            if outcomes.is_finite(value):
                values[key] = float(value)
    for name, importance in (importances or {}).items():
        values[f"{schema.IMPORTANCE_PREFIX}{name}"] = float(importance)
    note_tags = [RunTag(schema.NOTE_TAG, note[:MAX_TAG_LENGTH])] if note else []
    metrics = [Metric(k, float(v), ts, 0) for k, v in values.items()]
    log_batch(client, run_id, metrics=metrics, tags=note_tags)

    as_text = trials.astype({c: str for c in trials.columns if trials[c].dtype == object})
    client.log_file(run_id, "results.csv", lambda path: trials.to_csv(path, index=False))
    client.log_file(run_id, "results.parquet", lambda path: as_text.to_parquet(path, index=False))
    if best_config:
        client.log_text(run_id, yaml.safe_dump(best_config, sort_keys=False), "best_config.yaml")
    if importances:
        client.log_dict(run_id, importances, "param_importances.json")


# --------------------------------------------------------------------------- finalists


def finalist_note(row: dict[str, Any], metric: str) -> str:
    """A re-run's description in MLflow (Markdown)."""
    test = f", test_loss {row[m.TEST_LOSS]:.4f}" if outcomes.is_finite(row.get(m.TEST_LOSS)) else ""
    return (
        f"Finalist re-run of trial {row['trial']} (run `trial-{row['trial']:04d}`) with seed "
        f"{row['seed']}, {row['epochs']} epochs: {metric} {row['score']:.4f} (tuned "
        f"{row['tuned']:.4f}){test}"
    )


def log_finalists(
    client: BufferedWriter,
    experiment_id: str,
    parent_run_id: str,
    spec: JobSpec,
    finalists: Finalists,
    histories: dict[str, list[dict[str, float]]],
) -> None:
    """One child run of the parent per re-run, tagged as a finalist (the tuned trial and run it
    confirms, its seed): its curves, its last epoch's scores and test metrics. The parent gets the
    winner, its confirmed score, test metrics and optimism, and the finalists table. Re-runs an
    earlier execution of the study logged (before it was extended) are deleted first."""
    from mlflow.entities import Metric, RunTag

    metric = finalists.metric
    earlier = client.read(child_runs, client.client, experiment_id, parent_run_id)
    for run in earlier:
        if run.data.tags.get(schema.ROLE_TAG) == schema.FINALIST_ROLE:
            client.delete_run(run.info.run_id)
    for row in finalists.reruns.to_dict("records"):
        confirms = client.real_id(row["run_id"]) if row.get("run_id") else ""
        run_id = client.create_run(
            experiment_id,
            f"finalist-{row['trial']:04d}-seed{row['seed']}",
            {
                schema.PARENT_TAG: parent_run_id,
                schema.ROLE_TAG: schema.FINALIST_ROLE,
                schema.STUDY_TAG: spec.name,
                schema.CONFIRMS_TRIAL_TAG: str(row["trial"]),
                schema.CONFIRMS_RUN_TAG: confirms,
                schema.TRIAL_ID_TAG: str(row["trial_id"]),
                schema.SEED_TAG: str(row["seed"]),
            },
        )
        ts = now_ms()
        history = histories.get(row["rerun_id"], [])
        points = [p for epoch in history for p in epoch_metrics(epoch, ts)]
        last = int(history[-1][m.EPOCH]) if history else 0
        values = {
            m.EPOCH: row["epochs"],
            f"{schema.TUNED_PREFIX}{metric}": row["tuned"],
            **{k: row.get(k) for k in (m.TEST_LOSS, m.TEST_ACC)},
        }
        points += [
            Metric(k, float(v), ts, last) for k, v in values.items() if outcomes.is_finite(v)
        ]
        tags = [
            RunTag(schema.TRIAL_STATUS_TAG, str(row["status"])),
            RunTag(schema.NOTE_TAG, finalist_note(row, metric)),
        ]
        log_batch(client, run_id, metrics=points, tags=tags)
        status = "FAILED" if row["status"] == outcomes.ERRORED else "FINISHED"
        client.set_terminated(run_id, status=status)
    log_winner(client, parent_run_id, finalists)


def log_winner(client: BufferedWriter, parent_run_id: str, finalists: Finalists) -> None:
    """The winner (trial, run), its confirmed score, test metrics and optimism on the parent,
    with the finalists table as an artifact."""
    from mlflow.entities import Metric, RunTag

    winner = finalists.winner
    tags = []
    if finalists.note:
        tags.append(RunTag("tuner.finalists_note", finalists.note[:MAX_TAG_LENGTH]))
    metrics = []
    if winner is not None:
        ts = now_ms()
        values = {
            "winner_trial": int(winner["trial"]),
            **confirmed_metrics(winner, finalists.metric),
        }
        metrics = [Metric(k, float(v), ts, 0) for k, v in values.items() if outcomes.is_finite(v)]
        tags += [
            RunTag(schema.WINNER_TRIAL_TAG, str(int(winner["trial"]))),
            RunTag(schema.WINNER_RUN_TAG, client.real_id(winner["run_id"] or "")),
        ]
    log_batch(client, parent_run_id, metrics=metrics, tags=tags)
    table = finalists.table
    client.log_file(parent_run_id, "finalists.csv", lambda path: table.to_csv(path, index=False))
