"""The driver's record of a running study, and the one live line a user watches.

`StudyRecorder` is a Ray Tune callback on the driver: it keeps every trial's config and per-epoch
results in memory (a few numbers per epoch) and decides each trial's status when it ends. The
summary, and tracking later on, read from it instead of parsing Ray's result files.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.text import Text

from trainables import metrics as m
from trainables.trainable import NODE_ID
from tuner import outcomes

REPORTED = (
    m.EPOCH,
    m.TRAIN_LOSS,
    m.TRAIN_ACC,
    m.VAL_LOSS,
    m.VAL_ACC,
    m.GENERALIZATION_GAP,
    m.EPOCH_TIME_S,
    m.DIVERGED,
)


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

    @property
    def history(self) -> list[dict[str, float]]:
        return [self.epochs[e] for e in sorted(self.epochs)]

    def best(self, metric: str, mode: str) -> dict[str, float] | None:
        return outcomes.best_epoch(self.history, metric, mode)


def trial_number(trial) -> int:
    """Ray's 1-based trial counter (the N of trial folders), in the order trials were suggested."""
    prefix = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return int(prefix) if prefix.isdigit() else 0


def trial_dirname(trial) -> str:
    """Short trial folder names (`trial_0003_ab12cd34`) instead of Ray's config-laden ones."""
    return f"trial_{trial_number(trial):04d}_{trial.trial_id}"


class StudyRecorder(Callback):
    """Collects results as they arrive and calls `on_change` after each event."""

    def __init__(
        self,
        metric: str,
        mode: str,
        max_epochs: int,
        stopped_on_overfit: Callable[[str], bool] | None = None,
        on_change: Callable[[StudyRecorder], None] | None = None,
    ):
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.stopped_on_overfit = stopped_on_overfit or outcomes.never_stopped
        self.on_change = on_change
        self.trials: dict[str, TrialRecord] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Ray pickles callbacks with the experiment; the live display stays behind."""
        return {**self.__dict__, "on_change": None}

    def _record(self, trial) -> TrialRecord:
        if trial.trial_id not in self.trials:
            config = {k: v for k, v in trial.config.items() if not k.startswith("_")}
            self.trials[trial.trial_id] = TrialRecord(trial.trial_id, trial_number(trial), config)
        return self.trials[trial.trial_id]

    def _changed(self) -> None:
        if self.on_change:
            self.on_change(self)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._record(trial)
        self._changed()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = {k: result[k] for k in REPORTED if k in result}
        if m.EPOCH in row:
            record = self._record(trial)
            record.epochs[int(row[m.EPOCH])] = row
            record.node = result.get(NODE_ID, record.node)
        self._changed()

    def _finish(self, record: TrialRecord) -> None:
        record.finished = sum(t.finished is not None for t in self.trials.values()) + 1

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        record = self._record(trial)
        self._finish(record)
        record.status = outcomes.trial_status(
            trial.last_result,
            self.max_epochs,
            stopped_on_overfit=self.stopped_on_overfit(trial.trial_id),
        )
        self._changed()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        record = self._record(trial)
        self._finish(record)
        record.status = outcomes.ERRORED
        record.error = trial_error(trial)
        self._changed()

    # ------------------------------------------------------------------ views

    def counts(self) -> Counter:
        return Counter(t.status or "running" for t in self.trials.values())

    def best_trial(self) -> tuple[TrialRecord, dict[str, float]] | None:
        """The trial with the best best-epoch objective, and that epoch's results."""
        best: tuple[TrialRecord, dict[str, float]] | None = None
        for record in self.trials.values():
            row = record.best(self.metric, self.mode)
            if row and (
                best is None
                or outcomes.is_better(row[self.metric], best[1][self.metric], self.mode)
            ):
                best = (record, row)
        return best


def trial_error(trial) -> str:
    """The last line of the traceback Ray saved for an errored trial (the exception's message)."""
    try:
        with open(trial.error_file) as f:
            text = f.read()
    except (OSError, TypeError):
        return "the trial raised an error (no error file was saved)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "the trial raised an error"


class LiveProgress:
    """One rich line: trials running / done / stopped / errored and the best so far."""

    def __init__(self, name: str, num_samples: int, console: Console | None = None):
        self.name, self.num_samples = name, num_samples
        self.console = console or Console()
        self.started = time.monotonic()
        self._live = Live(Text(""), console=self.console, refresh_per_second=4, transient=False)
        self._last_update = 0.0

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)

    def update(self, recorder: StudyRecorder) -> None:
        self._live.update(self.render(recorder))

    def render(self, recorder: StudyRecorder) -> Text:
        c = recorder.counts()
        done = sum(v for k, v in c.items() if k != "running")
        text = Text.assemble(
            (f"{self.name} ", "bold"),
            f"{done}/{self.num_samples} trials done · {c['running']} running · ",
            f"{c[outcomes.STOPPED_BY_ASHA]} stopped by ASHA · ",
        )
        if c[outcomes.STOPPED_ON_OVERFIT]:
            text.append(f"{c[outcomes.STOPPED_ON_OVERFIT]} stopped on overfit · ")
        if c[outcomes.ERRORED]:
            text.append(f"{c[outcomes.ERRORED]} errored · ", style="red")
        best = recorder.best_trial()
        if best:
            record, row = best
            text.append(
                f"best {recorder.metric} {row[recorder.metric]:.4f} "
                f"(trial {record.number}, epoch {int(row[m.EPOCH])}) · ",
                style="green",
            )
        text.append(f"{time.monotonic() - self.started:.0f}s")
        return text
