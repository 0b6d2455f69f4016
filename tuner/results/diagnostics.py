"""Overfitting diagnostics: pure functions over one trial's per-epoch curves.

A trial gets exactly one diagnosis, checked in this order:

- ``diverged``: a loss became NaN/inf, or the final val loss exceeds ``diverge_factor`` times the
  first epoch's;
- ``too_short``: fewer than ``min_epochs`` epochs (e.g. stopped by ASHA at its first rung): there
  is not enough curve to judge;
- ``overfitting``: after its best epoch, val loss rose by at least ``overfit_rise`` (relative to
  its minimum) while train loss kept falling;
- ``underfitting``: at the best epoch the model does not fit its own training data: train accuracy
  below ``underfit_train_acc`` (classification), or train loss above ``underfit_loss_ratio`` times
  the first epoch's (regression);
- ``good_fit``: none of the above.

The thresholds are the spec's ``diagnostics:`` section (`tuner.spec.job_spec.DiagnosticsSpec`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from trainables import metrics as m
from tuner.results import outcomes
from tuner.spec.job_spec import DiagnosticsSpec
from tuner.tracking import schema

GOOD_FIT = "good_fit"
OVERFITTING = "overfitting"
UNDERFITTING = "underfitting"
DIVERGED = "diverged"
TOO_SHORT = "too_short"
DIAGNOSES = (GOOD_FIT, OVERFITTING, UNDERFITTING, DIVERGED, TOO_SHORT)

GAP_ACC = "generalization_gap_acc"  # train_acc - val_acc, per epoch
OVERFIT_SCORE = "overfit_score"


@dataclass(frozen=True)
class Diagnosis:
    """A trial's verdict with the numbers behind it."""

    diagnosis: str
    best_epoch: int | None
    epochs: int
    overfit_score: float  # relative rise of val loss after its minimum (0 when it never rose)
    train_loss_fell_after_best: bool
    final_gap: float | None  # val_loss - train_loss at the last epoch

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def loss_gaps(history: list[dict[str, float]]) -> list[float | None]:
    """val_loss - train_loss per epoch (None where either is missing or not finite)."""
    return [_diff(row.get(m.VAL_LOSS), row.get(m.TRAIN_LOSS)) for row in history]


def accuracy_gaps(history: list[dict[str, float]]) -> list[float | None]:
    """train_acc - val_acc per epoch (positive when the model does better on what it saw)."""
    return [_diff(row.get(m.TRAIN_ACC), row.get(m.VAL_ACC)) for row in history]


def _diff(a: Any, b: Any) -> float | None:
    return a - b if outcomes.is_finite(a) and outcomes.is_finite(b) else None


def overfit_score(history: list[dict[str, float]]) -> float:
    """How far val loss rose after its minimum, relative to that minimum (0 if it never rose)."""
    values = [r[m.VAL_LOSS] for r in history if outcomes.is_finite(r.get(m.VAL_LOSS))]
    if len(values) < 2:
        return 0.0
    low = min(values)
    rise = values[-1] - low
    return max(0.0, rise / max(abs(low), 1e-12))


def is_diverged(history: list[dict[str, float]], factor: float) -> bool:
    if not history:
        return True
    if any(r.get(m.DIVERGED) for r in history):
        return True
    for key in (m.TRAIN_LOSS, m.VAL_LOSS):
        if any(key in r and not outcomes.is_finite(r[key]) for r in history):
            return True
    first, last = history[0].get(m.VAL_LOSS), history[-1].get(m.VAL_LOSS)
    return outcomes.is_finite(first) and outcomes.is_finite(last) and last > factor * first


def diagnose(
    history: list[dict[str, float]], thresholds: DiagnosticsSpec | None = None
) -> Diagnosis:
    """The diagnosis of one trial from its per-epoch results (ordered by epoch)."""
    t = thresholds or DiagnosticsSpec()
    epochs = len(history)
    best = outcomes.best_epoch(history, m.VAL_LOSS, "min")
    best_epoch = int(best[m.EPOCH]) if best else None
    final_gap = loss_gaps(history)[-1] if history else None
    train_fell = _train_loss_fell_after(history, best)
    score = overfit_score(history) if train_fell else 0.0

    def verdict(name: str) -> Diagnosis:
        return Diagnosis(name, best_epoch, epochs, score, train_fell, final_gap)

    if not history or best is None or is_diverged(history, t.diverge_factor):
        return verdict(DIVERGED)
    if epochs < t.min_epochs:
        return verdict(TOO_SHORT)
    if score >= t.overfit_rise:
        return verdict(OVERFITTING)
    if _underfits(history, best, t):
        return verdict(UNDERFITTING)
    return verdict(GOOD_FIT)


def _train_loss_fell_after(history: list[dict[str, float]], best: dict | None) -> bool:
    if not best or not history:
        return False
    at_best, last = best.get(m.TRAIN_LOSS), history[-1].get(m.TRAIN_LOSS)
    return outcomes.is_finite(at_best) and outcomes.is_finite(last) and last < at_best


def _underfits(history: list[dict[str, float]], best: dict, t: DiagnosticsSpec) -> bool:
    train_acc = best.get(m.TRAIN_ACC)
    if outcomes.is_finite(train_acc):
        return train_acc < t.underfit_train_acc
    first, at_best = history[0].get(m.TRAIN_LOSS), best.get(m.TRAIN_LOSS)
    if not (outcomes.is_finite(first) and outcomes.is_finite(at_best)) or first <= 0:
        return False
    return at_best > t.underfit_loss_ratio * first


def summary_metrics(history: list[dict[str, float]], metric: str, mode: str) -> dict[str, float]:
    """The run summary: values at the best epoch of the objective, and the final values."""
    best = outcomes.best_epoch(history, metric, mode)
    summary: dict[str, float] = {}
    if best:
        summary[schema.BEST_EPOCH] = float(best[m.EPOCH])
        keys = (m.VAL_LOSS, m.VAL_ACC, m.TRAIN_LOSS, m.TRAIN_ACC, m.GENERALIZATION_GAP)
        for key in (*keys, *m.MODEL_COSTS, *m.USAGE_COSTS):
            if outcomes.is_finite(best.get(key)):
                summary[schema.best(key)] = float(best[key])
        if outcomes.is_finite(best.get(m.TRAIN_LOSS)):
            summary["train_loss_at_best"] = float(best[m.TRAIN_LOSS])
    if history:
        for key in (m.TRAIN_LOSS, m.VAL_LOSS, m.TRAIN_ACC, m.VAL_ACC):
            value = history[-1].get(key)
            if outcomes.is_finite(value):
                summary[f"final_{key}"] = float(value)
    return summary
