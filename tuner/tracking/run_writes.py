"""Writing one MLflow run within MLflow's limits: params flattened, redacted and cut to length,
metrics and tags in `log_batch` calls of at most 1000 entities (never a call per key), and a
trial's end (summary at the best epoch, diagnosis, note, learning-curve figure). The trials'
callback, the study's parent run and `tuner train`'s runs all write through these.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from trainables import metrics as m
from tuner.cluster.redaction import redact
from tuner.results import diagnostics, outcomes
from tuner.results.figures import FigureProcess, learning_curve_figure
from tuner.spec.job_spec import DiagnosticsSpec, ObjectiveSpec
from tuner.tracking import schema

LEARNING_CURVE = "learning_curve.png"
#: compile time: in the first epoch's row only; usage (peak memory, GPU-hours, ...) every epoch
CURVE_METRICS = (*m.CURVES, m.COMPILE_TIME_S, *m.USAGE)
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
MAX_TAG_LENGTH = 8000
BATCH_LIMIT = 1000  # MLflow's limit on entities per log_batch call
log = logging.getLogger(__name__)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def as_params(mapping: dict[str, Any]) -> list:
    """MLflow params from a (nested) mapping: dotted keys, redacted, within MLflow's limits."""
    from mlflow.entities import Param

    return [
        Param(key[:250], redact(str(value))[:MAX_PARAM_LENGTH])
        for key, value in flatten(mapping).items()
        if value is not None
    ]


def log_batch(client, run_id: str, metrics=(), params=(), tags=()) -> None:
    """log_batch in chunks of MLflow's per-call limit; tag values redacted (an error message
    may quote a URL)."""
    from mlflow.entities import RunTag

    metrics, params = list(metrics), list(params)
    tags = [RunTag(tag.key, redact(tag.value)) for tag in tags]
    while metrics or params or tags:
        room = BATCH_LIMIT
        chunk_p, params = params[:100], params[100:]  # at most 100 params per call
        room -= len(chunk_p)
        chunk_t, tags = tags[:room], tags[room:]
        room -= len(chunk_t)
        chunk_m, metrics = metrics[:room], metrics[room:]
        client.log_batch(run_id, metrics=chunk_m, params=chunk_p, tags=chunk_t)


def epoch_metrics(row: dict[str, float], timestamp: int) -> list:
    """One epoch's curve points (step = epoch), accuracy gap included; non-finite values skipped."""
    from mlflow.entities import Metric

    values = {k: row.get(k) for k in CURVE_METRICS}
    values[diagnostics.GAP_ACC] = diagnostics.accuracy_gaps([row])[0]
    step = int(row[m.EPOCH])
    return [
        Metric(key, float(v), timestamp, step) for key, v in values.items() if outcomes.is_finite(v)
    ]


def now_ms() -> int:
    return int(time.time() * 1000)


def run_note(headline: str, diagnosis: str, summary: dict[str, float]) -> str:
    """A run's description in MLflow (Markdown): e.g. "Trial 3: **completed**, diagnosis
    **healthy**; best val_loss 0.1234 at epoch 4"."""
    note = f"{headline}, diagnosis **{diagnosis}**"
    if schema.BEST_EPOCH in summary and schema.best(m.VAL_LOSS) in summary:
        note += (
            f"; best {m.VAL_LOSS} {summary[schema.best(m.VAL_LOSS)]:.4f} at epoch "
            f"{int(summary[schema.BEST_EPOCH])}"
        )
    return note


def log_trial_end(
    client,
    run_id: str,
    history: list[dict[str, float]],
    objective: ObjectiveSpec,
    thresholds: DiagnosticsSpec,
    title: str,
    metrics: list | None = None,
    tags: list | None = None,
    figures: FigureProcess | None = None,
    headline: str | None = None,
    figure: bool = True,
    params: list | None = None,
) -> diagnostics.Diagnosis:
    """One batch (the summary at the best epoch, the diagnosis, the run's note under `headline`
    when given, and the caller's `metrics`, `tags` and `params`), then the learning-curve
    figure, drawn by `figures` when given (none when not `figure`)."""
    from mlflow.entities import Metric, RunTag

    verdict = diagnostics.diagnose(history, thresholds)
    summary = diagnostics.summary_metrics(history, objective.metric, objective.mode)
    summary[diagnostics.OVERFIT_SCORE] = verdict.overfit_score
    ts = now_ms()
    tags = [*(tags or []), RunTag(schema.DIAGNOSIS_TAG, verdict.diagnosis)]
    if headline:
        tags.append(RunTag(schema.NOTE_TAG, run_note(headline, verdict.diagnosis, summary)))
    log_batch(
        client,
        run_id,
        metrics=[*(metrics or []), *(Metric(k, v, ts, 0) for k, v in summary.items())],
        params=params or [],
        tags=tags,
    )
    if not history or not figure:
        return verdict
    title = f"{title}: {verdict.diagnosis}"
    if figures is None:
        client.log_figure(run_id, learning_curve_figure(history, title), LEARNING_CURVE)
        return verdict
    try:
        client.log_file(
            run_id, LEARNING_CURVE, lambda path: figures.save_learning_curve(history, title, path)
        )
    except RuntimeError as exc:  # a missing figure is not worth failing a study for
        log.warning("%s", exc)
    return verdict
