"""The study dashboard's data: from a study that just ran, or from its MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dashboards.report import ReportData, asha_rungs, write_report
from trainables import metrics as m
from tuner.export import find_study_run
from tuner.progress import StudyRecorder
from tuner.spec import JobSpec
from tuner.tracking import CONFIG_TAG, PARENT_TAG, client_for

REPORT_FILE = "report.html"
CURVE_KEYS = (m.TRAIN_LOSS, m.VAL_LOSS)


def _rungs(scheduler: str, max_epochs: int, grace_period: int, reduction_factor: float) -> list:
    return asha_rungs(max_epochs, grace_period, reduction_factor) if scheduler == "asha" else []


def from_study(
    spec: JobSpec,
    execution: str,
    trials: pd.DataFrame,
    recorder: StudyRecorder,
    importances: dict[str, float] | None,
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
        rungs=_rungs(s.name, s.max_epochs, s.grace_period, s.reduction_factor),
        importances=importances,
    )


def _subtitle(model: str, dataset: str, n: int, algorithm: str, scheduler: str) -> str:
    return f"{model} on {dataset}: {n} trials, {algorithm} + {scheduler}"


def from_mlflow(study: str, tracking_uri: str) -> ReportData:
    """Report data of any study in the tracking store, finished or still running."""
    client = client_for(tracking_uri)
    parent = find_study_run(client, study)
    params = parent.data.params
    metric, mode = parent.data.tags.get("tuner.objective", "val_loss:min").split(":")
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
        max_results=50_000,
    )
    children.sort(key=lambda r: (r.info.end_time is None, r.info.end_time or 0))
    rows, curve_rows = [], []
    for run in children:
        number = int(run.data.tags.get("tuner.trial_number", 0))
        history = {k: client.get_metric_history(run.info.run_id, k) for k in CURVE_KEYS}
        epochs = sorted({p.step for points in history.values() for p in points})
        by_step = {k: {p.step: p.value for p in points} for k, points in history.items()}
        curve_rows += [
            {"trial": number, m.EPOCH: e, **{k: by_step[k].get(e) for k in CURVE_KEYS}}
            for e in epochs
        ]
        status = run.data.tags.get("trial_status", "running")
        rows.append(
            {
                "trial": number,
                "trial_id": run.data.tags.get("tuner.trial_id"),
                "status": "running" if run.info.status == "RUNNING" else status,
                "diagnosis": run.data.tags.get("diagnosis", "running"),
                "epochs": max(epochs, default=0),
                **{
                    k: v
                    for k, v in run.data.metrics.items()
                    if k.startswith("best_") and k != "best_epoch"
                },
                "best_epoch": run.data.metrics.get("best_epoch"),
                **{
                    f"config.{k}": v
                    for k, v in json.loads(run.data.tags.get(CONFIG_TAG, "{}")).items()
                },
            }
        )
    importances = {
        k.removeprefix("importance."): v
        for k, v in parent.data.metrics.items()
        if k.startswith("importance.")
    }
    max_epochs = int(params.get("scheduler.max_epochs", 0)) or max(
        (r["epochs"] for r in rows), default=1
    )
    scheduler = params.get("scheduler.name", "asha")
    return ReportData(
        title=f"Study {parent.info.run_name}",
        subtitle=_subtitle(
            parent.data.tags.get("tuner.model", "?"),
            json.loads(parent.data.tags.get("tuner.dataset", "{}")).get("name", "?"),
            len(rows),
            params.get("search.algorithm", "?"),
            scheduler,
        ),
        objective=metric,
        mode=mode,
        max_epochs=max_epochs,
        trials=pd.DataFrame(rows),
        curves=pd.DataFrame(curve_rows, columns=["trial", m.EPOCH, *CURVE_KEYS]),
        rungs=_rungs(
            scheduler,
            max_epochs,
            int(params.get("scheduler.grace_period", 1)),
            float(params.get("scheduler.reduction_factor", 3)),
        ),
        importances=importances or None,
    )


def report_study(study: str, tracking_uri: str, out: Path | None = None) -> Path:
    """`tuner report`: write the dashboard of a study in the tracking store."""
    data = from_mlflow(study, tracking_uri)
    path = out or Path.cwd() / f"{data.title.removeprefix('Study ')}-{REPORT_FILE}"
    return write_report(data, path)
