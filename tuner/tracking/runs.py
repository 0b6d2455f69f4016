"""Reading studies back from MLflow: where the store is, a study's parent run, its trial runs.

`tuner list`, `export`, `report` and `resume` find studies here; every read goes through the
names in `tracking.schema`, and trial runs become rows of the same trials table a study writes.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from trainables import metrics as m
from tuner.errors import AccessError, SpecError
from tuner.results import outcomes
from tuner.results.trials import rank_trials, trial_row, with_pareto
from tuner.tracking import schema

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_RUNS = 50_000


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the demo's SQLite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def client_for(uri: str):
    """A client of the tracking store; a database URL gets an installed driver, a URL whose
    password was redacted its real one (see tuner.cluster.databases). MLflow's probes for
    Databricks are answered once for the process, not before every request; a new SQLite store
    is a copy of an empty one (tuner.tracking.store_template)."""
    from mlflow.tracking import MlflowClient

    from tuner.cluster.databases import remember, reveal, sqlalchemy_url
    from tuner.internals.mlflow_internals import probe_databricks_once
    from tuner.tracking.store_template import prepare_new_store

    probe_databricks_once()
    prepare_new_store(uri)
    return MlflowClient(tracking_uri=sqlalchemy_url(remember(reveal(uri)), "tracking.uri"))


def refused_access(exc: BaseException, uri: str) -> AccessError | None:
    """An MLflow server's 401 or 403 as one line naming the server, what it refused and what
    to set; None for any other error. MLflow's own message is a stack of its REST call."""
    from mlflow.exceptions import MlflowException

    from tuner.cluster.redaction import redact

    if not isinstance(exc, MlflowException):
        return None
    status = exc.get_http_status_code()
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    server = f"tracking.uri: the MLflow server at {redact(uri)}"
    if status == 401:
        sent = f"the user {user!r} (MLFLOW_TRACKING_USERNAME)" if user else "no credentials"
        return AccessError(
            f"{server} refused {sent}: authentication failed (HTTP 401); set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server "
            "(or MLFLOW_TRACKING_TOKEN)"
        )
    if status == 403:
        return AccessError(
            f"{server} let {user or 'this client'!r} in but refused the request: permission "
            "denied (HTTP 403); ask the server's admin for EDIT on the study's experiment "
            "(or MANAGE on its registered model)"
        )
    return None


@contextlib.contextmanager
def tracking_access(uri: str) -> Iterator[None]:
    """Within: a server that refuses the credentials is an AccessError (`refused_access`)."""
    try:
        yield
    except Exception as exc:
        refusal = refused_access(exc, uri)
        if refusal is None:
            raise
        raise refusal from None


def find_study_run(client, study: str):
    """The parent run of `study`: a run id, an execution's name, or a study name's newest."""
    from mlflow.exceptions import MlflowException

    if RUN_ID.match(study):
        try:
            run = client.get_run(study)
        except MlflowException:
            run = None
        if run is None or run.data.tags.get(schema.ROLE_TAG) != schema.STUDY_ROLE:
            raise SpecError(f"STUDY: {study!r} is not the run id of a study in the tracking store")
        return run
    if not STUDY_NAME.fullmatch(study):
        raise SpecError(f"STUDY: {study!r} is neither a study name nor an MLflow run id")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = []
    for tag in (schema.STUDY_TAG, schema.EXECUTION_TAG):  # a study name, or an execution's
        runs = client.search_runs(
            experiments,
            filter_string=(
                f"tags.`{tag}` = '{study}' and tags.`{schema.ROLE_TAG}` = '{schema.STUDY_ROLE}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            break
    if not runs:
        raise SpecError(
            f"STUDY: no study named {study!r} in the tracking store; `tuner list` shows them"
        )
    return runs[0]


def child_runs(client, experiment_id: str, parent_run_id: str) -> list:
    """Every child run of a study's parent run: its trials' and its finalists' re-runs."""
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{schema.PARENT_TAG}` = '{parent_run_id}'",
        max_results=MAX_RUNS,
    )


def trial_runs(client, parent) -> list:
    """Every trial run of a study's parent run (its finalists' re-runs left out)."""
    runs = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    return [r for r in runs if r.data.tags.get(schema.ROLE_TAG) != schema.FINALIST_ROLE]


def finalist_runs(client, parent) -> list:
    """The finalists' re-runs of a study (none without `selection`)."""
    runs = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    return [r for r in runs if r.data.tags.get(schema.ROLE_TAG) == schema.FINALIST_ROLE]


def run_row(run, epochs: int | None = None) -> dict[str, Any]:
    """A trial's child run as a row of the trials table."""
    tags, metrics = run.data.tags, run.data.metrics
    at_best = {
        k.removeprefix(schema.BEST_PREFIX): v
        for k, v in metrics.items()
        if k.startswith(schema.BEST_PREFIX) and k != schema.BEST_EPOCH
    }
    running = run.info.status == "RUNNING"
    return trial_row(
        int(tags.get(schema.TRIAL_NUMBER_TAG, 0)),
        tags.get(schema.TRIAL_ID_TAG),
        "running" if running else schema.trial_status(tags),
        tags.get(schema.DIAGNOSIS_TAG, "running"),
        epochs if epochs is not None else int(metrics.get(schema.BEST_EPOCH, 0)),
        {"epoch": metrics.get(schema.BEST_EPOCH), **at_best},
        schema.trial_config(tags),
        run_id=run.info.run_id,
        # usage metrics are cumulative: MLflow's latest value is the trial's
        **{k: metrics[k] for k in m.USAGE if k in metrics},
    )


def ranked_trial_runs(client, parent) -> list:
    """The parent's child runs, best best-epoch objective first (no objective: last)."""
    runs = {run.info.run_id: run for run in trial_runs(client, parent)}
    metric, mode = schema.decode_objective(parent.data.tags)
    table = rank_trials((run_row(run) for run in runs.values()), metric, mode)
    return [runs[run_id] for run_id in table.get("run_id", [])]


def pareto_trial_runs(client, parent) -> list:
    """The child runs on the Pareto front of a study with several objectives, best first
    objective first; empty for a single objective."""
    runs = {run.info.run_id: run for run in trial_runs(client, parent)}
    objectives = schema.decode_objectives(parent.data.tags)
    metric, mode = objectives[0]
    table = with_pareto(
        rank_trials((run_row(run) for run in runs.values()), metric, mode), objectives
    )
    if schema.PARETO not in table:
        return []
    return [runs[run_id] for run_id in table.loc[table[schema.PARETO], "run_id"]]


def list_studies(tracking_uri: str) -> pd.DataFrame:
    """One row per study execution (parent run), newest first."""
    client = client_for(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = (
        client.search_runs(
            experiments,
            filter_string=f"tags.`{schema.ROLE_TAG}` = '{schema.STUDY_ROLE}'",
            order_by=["attributes.start_time DESC"],
            max_results=10_000,
        )
        if experiments
        else []
    )
    return pd.DataFrame([study_row(run) for run in runs])


def status_count(metrics: dict[str, float], status: str) -> int:
    """How many trials of a study ended with `status` (older runs counted under an older name)."""
    names = [status, *(old for old, new in outcomes.OLD_STATUSES.items() if new == status)]
    return int(sum(metrics.get(f"{schema.STATUS_COUNT_PREFIX}{name}", 0) for name in names))


def study_row(run) -> dict[str, Any]:
    metric, _ = schema.decode_objective(run.data.tags)
    values = run.data.metrics
    return {
        "study": run.data.tags.get(schema.STUDY_TAG),
        "execution": run.info.run_name,
        "run_id": run.info.run_id,
        "status": run.info.status,
        "trials": int(values.get(schema.TRIALS_TOTAL, 0)),
        "stopped_early": status_count(values, outcomes.STOPPED_BY_SCHEDULER),
        "errored": status_count(values, outcomes.ERRORED),
        "objective": metric,
        "best": values.get(schema.best(metric)),
        "started": pd.Timestamp(run.info.start_time, unit="ms"),
    }
