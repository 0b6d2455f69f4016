"""How a trial ended and which of its epochs was best: one definition for the whole driver.

The searcher, the progress display, the summary, tracking and export all call these, so "best"
and "stopped by the scheduler" mean the same thing everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from trainables import metrics as m

COMPLETED = "completed"
STOPPED_BY_SCHEDULER = "stopped_by_scheduler"  # ASHA, or any early-stopping scheduler
STOPPED_ON_OVERFIT = "stopped_on_overfit"
DIVERGED = "diverged"  # ended itself: its loss became NaN or infinite
ERRORED = "errored"
#: ran out of GPU memory (CUDA OOM) at its share, after the one retry at twice the share that
#: `resources.gpu: auto` gives it; Optuna hears FAIL
OUT_OF_MEMORY = "out_of_memory"
INTERRUPTED = "interrupted"  # still running when the study was stopped (Ctrl-C)
STATUSES = (
    COMPLETED,
    STOPPED_BY_SCHEDULER,
    STOPPED_ON_OVERFIT,
    DIVERGED,
    ERRORED,
    OUT_OF_MEMORY,
    INTERRUPTED,
)
#: why a study ended (`tuner.stop_reason` on the parent run): every trial ran (COMPLETED), the
#: search stopped early (tuner.driver.stoppers), or it was INTERRUPTED before every trial finished
TIME_BUDGET, PATIENCE = "time_budget", "patience"
GPU_HOURS_BUDGET = "gpu_hours_budget"  # search.gpu_hours_budget spent
STOP_REASONS = (COMPLETED, TIME_BUDGET, PATIENCE, GPU_HOURS_BUDGET, INTERRUPTED)
#: statuses earlier versions wrote, read as today's
OLD_STATUSES = {"stopped_by_asha": STOPPED_BY_SCHEDULER}


def current_status(status: str) -> str:
    """A status as any version of tuner wrote it, in today's vocabulary."""
    return OLD_STATUSES.get(status, status)


def trial_status(
    last_result: dict[str, Any] | None, max_epochs: int, *, errored: bool = False
) -> str:
    """completed (ran its budget), stopped_by_scheduler, stopped_on_overfit, diverged (ended
    itself on a non-finite loss), out_of_memory (ended itself on a CUDA OOM) or errored."""
    if errored:
        return ERRORED
    if last_result and m.OUT_OF_MEMORY in last_result:
        return OUT_OF_MEMORY
    if last_result and last_result.get(m.STOPPED_ON_OVERFIT):
        return STOPPED_ON_OVERFIT
    if not last_result:
        return STOPPED_BY_SCHEDULER  # stopped before it reported anything
    if last_result.get(m.DIVERGED):
        return DIVERGED
    if last_result.get(m.EPOCH, 0) >= max_epochs:
        return COMPLETED
    return STOPPED_BY_SCHEDULER


def is_out_of_memory(error: str | None) -> bool:
    """Whether a trial's error (the last line Ray saved) is a CUDA out-of-memory error."""
    return bool(error) and (
        m.OUT_OF_MEMORY_ERROR in error
        or "OutOfMemoryError" in error
        or "CUDA out of memory" in error
    )


def is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def best_epoch(history: Iterable[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The epoch's result with the best finite `metric` (earliest on ties), or None."""
    rows = [r for r in history if is_finite(r.get(metric))]
    if not rows:
        return None
    sign = 1 if mode == "min" else -1
    return min(rows, key=lambda r: (sign * r[metric], r.get(m.EPOCH, 0)))


def is_better(value: float, than: float | None, mode: str) -> bool:
    return than is None or (value < than if mode == "min" else value > than)
