"""The study dashboard's data (`dashboards.render.ReportData`): from a study that just ran, or
from its MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dashboards.render import ReportData, write_report
from trainables import metrics as m
from tuner.driver.schedulers import SCHEDULERS, milestones
from tuner.results.exporting import finalists_from_runs
from tuner.results.trials import RecordedTrials, objective_pairs, with_pareto
from tuner.safe_names import file_name
from tuner.spec.job_spec import JobSpec, SchedulerSpec
from tuner.tracking import schema
from tuner.tracking.runs import client_for, find_study_run, run_row, trial_runs

REPORT_FILE = "report.html"
CURVE_KEYS = (m.TRAIN_LOSS, m.VAL_LOSS)


def _subtitle(model: str, dataset: str, n: int, algorithm: str, scheduler: str) -> str:
    return f"{model} on {dataset}: {n} trials, {algorithm} + {scheduler}"


def from_study(
    spec: JobSpec,
    execution: str,
    trials: pd.DataFrame,
    recorder: RecordedTrials,
    importances: dict[str, float] | None,
    finalists: pd.DataFrame | None = None,
) -> ReportData:
    """Report data of a study that just ran (the driver still holds every curve)."""
    order = {tid: r.finished for tid, r in recorder.trials.items()}
    ordered = trials.assign(_order=trials["trial_id"].map(order)).sort_values(["_order", "trial"])
    curves = pd.DataFrame(
        [
            {"trial": record.number, **{k: row.get(k) for k in (m.EPOCH, *CURVE_KEYS)}}
            for record in recorder.trials.values()
            for row in record.history
        ],
        columns=["trial", m.EPOCH, *CURVE_KEYS],
    )
    s = spec.scheduler
    return ReportData(
        title=f"Study {execution}",
        subtitle=_subtitle(
            spec.model, spec.dataset.name, len(trials), spec.search.algorithm, s.name
        ),
        objective=spec.objective.metric,
        mode=spec.objective.mode,
        max_epochs=s.max_epochs,
        trials=ordered.drop(columns="_order").reset_index(drop=True),
        curves=curves,
        rungs=milestones(s),
        importances=importances,
        objectives=objective_pairs(spec) if spec.multi_objective else [],
        finalists=finalists,
    )


def curve_rows(client, run) -> list[dict]:
    """One row per epoch of a trial run's curves (train and validation loss)."""
    number = int(run.data.tags.get(schema.TRIAL_NUMBER_TAG, 0))
    history = {k: client.get_metric_history(run.info.run_id, k) for k in CURVE_KEYS}
    by_step = {k: {p.step: p.value for p in points} for k, points in history.items()}
    epochs = sorted({step for points in by_step.values() for step in points})
    return [
        {"trial": number, m.EPOCH: e, **{k: by_step[k].get(e) for k in CURVE_KEYS}} for e in epochs
    ]


def logged_scheduler(params: dict[str, str], max_epochs: int) -> tuple[str, list[int]]:
    """The name and milestones of the scheduler a parent run logged as params (runs of older
    versions: asha). Its own keys are those its settings model names, typed by that model; they
    are not judged against max_epochs, which older runs did not log (it is then counted from the
    curves), nor are keys an older version logged for every scheduler (fifo's grace_period)."""
    name = params.get("scheduler.name", "asha")
    kind = SCHEDULERS.get(name)
    logged = {
        k: params[f"scheduler.{k}"]
        for k in kind.settings.model_fields
        if f"scheduler.{k}" in params
    }
    settings = kind.settings.model_validate_strings(logged)  # no section in context: no cross check
    section = SchedulerSpec.model_construct(name=name, max_epochs=max_epochs)  # the common keys
    return name, kind.milestones(section, settings)


def from_mlflow(study: str, tracking_uri: str) -> ReportData:
    """Report data of any study in the tracking store, finished or still running."""
    client = client_for(tracking_uri)
    parent = find_study_run(client, study)
    params = parent.data.params
    objectives = schema.decode_objectives(parent.data.tags)
    metric, mode = objectives[0]
    children = trial_runs(client, parent)
    children.sort(key=lambda r: (r.info.end_time is None, r.info.end_time or 0))
    curves, rows = [], []
    for run in children:
        points = curve_rows(client, run)
        curves += points
        rows.append(run_row(run, epochs=max((p[m.EPOCH] for p in points), default=0)))
    finalists = finalists_from_runs(client, parent)
    importances = {
        k.removeprefix(schema.IMPORTANCE_PREFIX): v
        for k, v in parent.data.metrics.items()
        if k.startswith(schema.IMPORTANCE_PREFIX)
    }
    max_epochs = int(params.get("scheduler.max_epochs", 0)) or max(
        (r["epochs"] for r in rows), default=1
    )
    scheduler, rungs = logged_scheduler(params, max(max_epochs, 1))
    return ReportData(
        title=f"Study {parent.info.run_name}",
        subtitle=_subtitle(
            parent.data.tags.get(schema.MODEL_TAG, "?"),
            json.loads(parent.data.tags.get(schema.DATASET_TAG, "{}")).get("name", "?"),
            len(rows),
            params.get("search.algorithm", "?"),
            scheduler,
        ),
        objective=metric,
        mode=mode,
        max_epochs=max_epochs,
        trials=with_pareto(pd.DataFrame(rows), objectives),  # in completion order
        curves=pd.DataFrame(curves, columns=["trial", m.EPOCH, *CURVE_KEYS]),
        rungs=rungs,
        importances=importances or None,
        objectives=objectives if len(objectives) > 1 else [],
        finalists=finalists.table if finalists is not None else None,
    )


def report_study(study: str, tracking_uri: str, out: Path | None = None) -> Path:
    """`tuner report`: write the dashboard of a study in the tracking store."""
    data = from_mlflow(study, tracking_uri)
    name = file_name(data.title.removeprefix("Study "))  # an MLflow run name: never a path
    path = out or Path.cwd() / f"{name}-{REPORT_FILE}"
    return write_report(data, path)
