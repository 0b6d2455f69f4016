"""A finished study's data: its trials table and `StudyResult`.

The trials table has one row per trial, best first: its status, diagnosis, best epoch and the
metrics there (`best_<metric>`), and its hyperparameters (`config.<name>`). It is built here
from rows that the driver's records (`trials_table`) or MLflow's runs (`tracking.runs`) give, and
ranked here by the best-epoch objective, so every view of a study orders its trials the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from trainables import metrics as m
from tuner.results import diagnostics, outcomes
from tuner.results.pareto import pareto_front
from tuner.spec.job_spec import JobSpec
from tuner.tracking import schema

#: the metrics each row carries at the trial's best epoch
SUMMARY_METRICS = (
    m.VAL_LOSS,
    m.VAL_ACC,
    m.TRAIN_LOSS,
    m.TRAIN_ACC,
    m.GENERALIZATION_GAP,
    *m.MODEL_COSTS,  # the same at every epoch; absent from runs of earlier versions
    *m.USAGE_COSTS,  # gpu_hours until the best epoch: what an objective reads
)


def usage_columns(history: list[dict[str, Any]]) -> dict[str, Any]:
    """A trial's usage over all its epochs (the trials table's own columns, not at the best
    epoch): its peak memory, the GPU share of its last epoch (doubled after an out-of-memory
    retry), its GPU-hours, mean GPU utilisation and energy, each where reported."""
    columns: dict[str, Any] = {}
    peaks = [r[m.PEAK_MEMORY_MB] for r in history if outcomes.is_finite(r.get(m.PEAK_MEMORY_MB))]
    if peaks:
        columns[m.PEAK_MEMORY_MB] = max(peaks)
    for key in (m.GPU_SHARE, m.GPU_HOURS, m.GPU_UTIL_PCT, m.ENERGY_WH):
        values = [r[key] for r in history if outcomes.is_finite(r.get(key))]
        if values:
            columns[key] = values[-1]
    return columns


@dataclass
class TrialRecord:
    """One trial as the driver saw it: config, per-epoch results (by epoch), how it ended."""

    trial_id: str
    number: int
    config: dict[str, Any]
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)
    status: str | None = None  # None while running
    error: str | None = None
    finished: int | None = None  # 1 for the first trial to end, 2 for the next, ...
    node: str | None = None  # the Ray node that ran its last epoch
    gpu_ids: str | None = None  # the GPU ids Ray gave it for its last epoch ("" for none)
    device: str | None = None  # what its last epoch trained on: "cuda:0" or "cpu"
    #: a data-parallel trial's workers' nodes (comma-separated, rank order); None otherwise
    worker_nodes: str | None = None

    @property
    def history(self) -> list[dict[str, float]]:
        return [self.epochs[e] for e in sorted(self.epochs)]

    def best(self, metric: str, mode: str) -> dict[str, float] | None:
        return outcomes.best_epoch(self.history, metric, mode)


class RecordedTrials(Protocol):
    """What the readers of a running study (the MLflow callback, the live report) need of the
    driver's recorder (`tuner.driver.progress.StudyRecorder`): each trial's record by Ray's
    trial id, kept current as Ray reports."""

    trials: dict[str, TrialRecord]


def plain(value: Any) -> Any:
    """numpy scalars -> Python scalars and NaN -> None, so YAML and JSON stay readable."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def trial_row(
    number: int,
    trial_id: str | None,
    status: str,
    diagnosis: str,
    epochs: int,
    at_best: dict[str, Any],
    config: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """One row of the trials table; `at_best` maps metric names to their best-epoch values."""
    return {
        "trial": number,
        "trial_id": trial_id,
        "status": outcomes.current_status(status),
        "diagnosis": diagnosis,
        "epochs": epochs,
        schema.BEST_EPOCH: at_best.get(m.EPOCH),
        **{schema.best(k): v for k, v in at_best.items() if k != m.EPOCH},
        **extra,
        **schema.config_columns(config),
    }


def rank_trials(rows: Iterable[dict[str, Any]], metric: str, mode: str) -> pd.DataFrame:
    """The trials table, best best-epoch objective first; trials without one last."""
    table = pd.DataFrame(list(rows))
    if table.empty:
        return table
    column = schema.best(metric)
    if column not in table:
        table[column] = float("nan")
    return table.sort_values(
        [column, "trial"], ascending=[mode == "min", True], na_position="last"
    ).reset_index(drop=True)


#: trials that ran their course; a trial the scheduler stopped early has a cut-short curve (Optuna
#: holds it PRUNED), an errored or interrupted one no verdict: none of them is on the front
ON_FRONT_STATUSES = (outcomes.COMPLETED, outcomes.STOPPED_ON_OVERFIT)


def with_pareto(table: pd.DataFrame, objectives: list[tuple[str, str]]) -> pd.DataFrame:
    """The trials table with the `pareto` column (several objectives only; one: unchanged)."""
    if len(objectives) < 2 or table.empty:
        return table
    columns = [schema.best(metric) for metric, _ in objectives]
    eligible = table["status"].isin(ON_FRONT_STATUSES)
    points = [
        [plain(row.get(c)) if ok else None for c in columns]
        for ok, (_, row) in zip(eligible, table.iterrows(), strict=True)
    ]
    return table.assign(**{schema.PARETO: pareto_front(points, [mode for _, mode in objectives])})


def objective_pairs(spec: JobSpec) -> list[tuple[str, str]]:
    return [(o.metric, o.mode) for o in spec.objectives]


def trials_table(records: Iterable[TrialRecord], spec: JobSpec) -> pd.DataFrame:
    """The trials table of a study the driver ran (its records hold every curve)."""
    metric, mode = spec.objective.metric, spec.objective.mode
    rows = []
    for record in records:
        best = record.best(metric, mode) or {}
        verdict = diagnostics.diagnose(record.history, spec.diagnostics)
        at_best = {k: best.get(k) for k in (m.EPOCH, *SUMMARY_METRICS)}
        rows.append(
            trial_row(
                record.number,
                record.trial_id,
                record.status or outcomes.INTERRUPTED,
                verdict.diagnosis,
                max(record.epochs, default=0),
                at_best,
                record.config,
                overfit_score=verdict.overfit_score,
                error=record.error,
                node=record.node,
                **usage_columns(record.history),
            )
        )
    return with_pareto(rank_trials(rows, metric, mode), objective_pairs(spec))


@dataclass
class Finalists:
    """The finalists of a study: every re-run, the table (winner first) and a note when fewer
    trials than asked could be re-run."""

    metric: str
    mode: str
    reruns: pd.DataFrame
    table: pd.DataFrame
    note: str | None = None

    @property
    def winner(self) -> pd.Series | None:
        ranked = self.table.dropna(subset=["mean"]) if len(self.table) else self.table
        return None if ranked.empty else ranked.iloc[0]


@dataclass
class StudyResult:
    """What a finished study hands back: its trials ranked by best-epoch objective."""

    spec: JobSpec
    execution: str  # this execution's name: Ray run folder and Optuna study name
    results_path: Path
    trials: pd.DataFrame  # one row per trial, best first
    wall_time_s: float
    parent_run_id: str | None = None  # the MLflow parent run (None with tracking disabled)
    interrupted: bool = False  # stopped by Ctrl-C before every trial finished
    tracking_buffered: int = 0  # MLflow writes left in the study folder for `tuner sync`
    finalists: Finalists | None = None  # the re-runs of `selection`, when the spec asks for them
    results_uri: str | None = None  # where a remote `storage` keeps them (results_path: a copy)
    #: why it ended: completed | time_budget | patience | interrupted (tuner.driver.stoppers)
    stop_reason: str | None = None

    @property
    def best(self) -> pd.Series | None:
        objective = schema.best(self.spec.objective.metric)
        if objective not in self.trials:  # no trial reported an epoch (Ctrl-C as they started)
            return None
        ranked = self.trials.dropna(subset=[objective])
        return None if ranked.empty else ranked.iloc[0]

    @property
    def pareto(self) -> pd.DataFrame:
        """The trials on the Pareto front, best first objective first (none: one objective)."""
        if schema.PARETO not in self.trials:
            return self.trials.iloc[0:0]
        return self.trials[self.trials[schema.PARETO].astype(bool)]

    @property
    def winner(self) -> pd.Series | None:
        """The study's result: the finalist with the best re-run mean when there are finalists
        (its row of the trials table), else the best trial."""
        finalist = self.finalists.winner if self.finalists is not None else None
        if finalist is None:
            return self.best
        rows = self.trials[self.trials["trial_id"] == finalist["trial_id"]]
        return rows.iloc[0] if len(rows) else self.best

    def status_counts(self) -> dict[str, int]:
        return self.trials["status"].value_counts().to_dict() if len(self.trials) else {}
