"""The driver's record of a running study, and the one live line a user watches.

`StudyRecorder` is a Ray Tune callback on the driver: it keeps every trial's config and per-epoch
results in memory (a few numbers per epoch) and decides each trial's status when it ends. The
summary, and tracking later on, read from it instead of parsing Ray's result files.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.text import Text

from trainables import metrics as m
from trainables.trainable import DEVICE, FINALIST, GPU_IDS, NODE_ID, WORKER_NODES
from tuner.cluster.storage import relocated
from tuner.driver import phases
from tuner.driver.journal import append_event, read_journal
from tuner.internals.ray_internals import release_ended_trial
from tuner.results import outcomes
from tuner.results.trials import TrialRecord

REPORTED = (
    m.EPOCH,
    *m.CURVES,
    m.COMPILE_TIME_S,
    m.DIVERGED,
    m.TEST_LOSS,
    m.TEST_ACC,
    *m.MODEL_COSTS,
    *m.USAGE,
    m.OUT_OF_MEMORY,
)
UPDATE_EVERY_S = 0.25  # the live line's refresh period (rich redraws it 4 times a second)


def trial_number(trial) -> int:
    """Ray's 1-based trial counter (the N of trial folders), in the order trials were suggested."""
    prefix = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return int(prefix) if prefix.isdigit() else 0


def trial_dirname(trial) -> str:
    """Short trial folder names (`trial_0003_ab12cd34`) instead of Ray's config-laden ones."""
    return f"trial_{trial_number(trial):04d}_{trial.trial_id}"


class StudyRecorder(Callback):
    """Collects results as they arrive and calls `on_change` after each event.

    Every event is also appended to a JSON-lines journal in the Ray run folder. When Ray restores
    the experiment (`tuner resume`), it unpickles this callback as it was when the study started;
    `__setstate__` replays the journal, so trials that finished before the crash keep their curves.
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        max_epochs: int,
        journal: Path | None = None,
        on_change: Callable[[StudyRecorder], None] | None = None,
    ):
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.journal = journal
        self.on_change = on_change
        self.trials: dict[str, TrialRecord] = {}
        self.finished = 0  # trials that have ended: counted, not recounted at every end

    def __getstate__(self) -> dict[str, Any]:
        """Ray pickles callbacks into every experiment snapshot. The records stay behind (a
        restore replays the journal), so a snapshot costs the same at trial 10 and trial 1,000;
        so does the live display."""
        return {**self.__dict__, "on_change": None, "trials": {}, "finished": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.journal = relocated(self.journal)
        self.trials, self.finished = {}, 0
        for event in read_journal(self.journal):
            self._apply(event)

    # ------------------------------------------------------------------ events

    def _apply(self, event: dict[str, Any]) -> TrialRecord | None:
        """One journal event into the in-memory records (the only place records change);
        events of the search as a whole (no trial id) are not the recorder's."""
        trial_id = event.get("trial_id")
        if trial_id is None:
            return None
        if event["event"] == "superseded":
            gone = self.trials.pop(trial_id, None)
            self.finished -= gone is not None and gone.finished is not None
            return gone
        if trial_id not in self.trials:
            self.trials[trial_id] = TrialRecord(trial_id, event["number"], event["config"])
        record = self.trials[trial_id]
        if event["event"] == "result":
            record.epochs[int(event["row"][m.EPOCH])] = event["row"]
            record.node = event.get("node") or record.node
            record.gpu_ids = event.get(GPU_IDS, record.gpu_ids)
            record.device = event.get(DEVICE) or record.device
            record.worker_nodes = event.get(WORKER_NODES) or record.worker_nodes
        elif event["event"] == "end":
            record.status, record.error = event["status"], event.get("error")
            if record.finished is None:
                self.finished += 1
                record.finished = self.finished
            else:  # ended again (a restore): after every other
                record.finished = self.finished + 1
        return record

    def _event(self, trial, kind: str, **fields: Any) -> None:
        self._log(
            {
                "event": kind,
                "trial_id": trial.trial_id,
                "number": trial_number(trial),
                "config": {k: v for k, v in trial.config.items() if not k.startswith("_")},
                "time": time.time(),
                **fields,
            }
        )

    def _log(self, event: dict[str, Any]) -> None:
        self._apply(event)
        if self.journal is not None:
            append_event(self.journal, event)
        if self.on_change:
            self.on_change(self)

    def forget(self, trial_ids: set[str]) -> None:
        """Drop trials that Ray's restored state does not know (they started after its last
        snapshot, so Ray runs their slot again as new trials); journaled, so replays agree."""
        for trial_id in trial_ids & set(self.trials):
            self._log({"event": "superseded", "trial_id": trial_id})

    def forget_unseen(self, trial_ids: set[str]) -> None:
        """Journal as superseded trials the journal never saw, whose MLflow runs a restore found
        and superseded: they started after the journal's last copy reached a remote storage, and
        may have ended (told to Optuna) before the crash. The journal stays the full record."""
        for trial_id in trial_ids - set(self.trials):
            self._log({"event": "superseded", "trial_id": trial_id})

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        phases.reached(phases.FIRST_TRIAL_STARTED)
        self._event(trial, "start")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        phases.reached(phases.FIRST_EPOCH)
        for earlier in result.get(m.EARLIER_EPOCHS) or ():  # a restored trial's, to its checkpoint
            record = self.trials.get(trial.trial_id)
            if m.EPOCH in earlier and (
                record is None or int(earlier[m.EPOCH]) not in record.epochs
            ):
                self._result(trial, earlier, result)
        self._result(trial, result, result)

    def _result(self, trial, values: dict[str, Any], result: dict[str, Any]) -> None:
        """Journal one epoch's row out of `values`, placed where `result` says."""
        row = {k: values[k] for k in REPORTED if k in values}
        if m.EPOCH in row:
            placement = {k: result[k] for k in (GPU_IDS, DEVICE, WORKER_NODES) if k in result}
            self._event(trial, "result", row=row, node=result.get(NODE_ID), **placement)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        status = outcomes.trial_status(trial.last_result, self.max_epochs)
        self._event(trial, "end", status=status)
        release_ended_trial(trial)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        """Ray retries the trial from its last checkpoint: journaled with the error it had (an
        out-of-memory one says at which GPU share)."""
        self._event(trial, "retry", error=trial_error(trial))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = trial_error(trial)
        status = outcomes.OUT_OF_MEMORY if outcomes.is_out_of_memory(error) else outcomes.ERRORED
        self._event(trial, "end", status=status, error=error)

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

    def __init__(
        self, name: str, num_samples: int, scheduler: str = "asha", console: Console | None = None
    ):
        self.name, self.num_samples, self.scheduler = name, num_samples, scheduler
        self.console = console or Console()
        self.started = time.monotonic()
        self._live = Live(Text(""), console=self.console, refresh_per_second=4, transient=False)
        self._last_update = float("-inf")
        self._recorder: StudyRecorder | None = None

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._recorder is not None:  # the last events, which a throttled update skipped
            self._live.update(self.render(self._recorder))
        self._live.__exit__(*exc)
        if not self.console.is_terminal:  # rich ends a terminal's line itself, not a pipe's
            self.console.line()

    def update(self, recorder: StudyRecorder) -> None:
        """At most as often as the line is redrawn: rendering reads every trial, and an update
        per result made a study of thousands of trials quadratic."""
        self._recorder = recorder
        now = time.monotonic()
        if now - self._last_update >= UPDATE_EVERY_S:
            self._last_update = now
            self._live.update(self.render(recorder))

    def render(self, recorder: StudyRecorder) -> Text:
        c = recorder.counts()
        done = sum(v for k, v in c.items() if k != "running")
        phrases = [
            Text.assemble((self.name, "bold"), f" {done}/{self.num_samples} trials done"),
            Text(f"{c['running']} running"),
        ]
        if c[outcomes.STOPPED_BY_SCHEDULER]:
            phrases.append(
                Text(f"{c[outcomes.STOPPED_BY_SCHEDULER]} stopped early by {self.scheduler}")
            )
        if c[outcomes.STOPPED_ON_OVERFIT]:
            phrases.append(Text(f"{c[outcomes.STOPPED_ON_OVERFIT]} stopped on overfit"))
        if c[outcomes.ERRORED]:
            phrases.append(Text(f"{c[outcomes.ERRORED]} errored", style="red"))
        if c[outcomes.OUT_OF_MEMORY]:
            phrases.append(Text(f"{c[outcomes.OUT_OF_MEMORY]} out of memory", style="red"))
        best = recorder.best_trial()
        if best:
            record, row = best
            phrases.append(
                Text(
                    f"best {recorder.metric} {row[recorder.metric]:.4f} "
                    f"(trial {record.number}, epoch {int(row[m.EPOCH])})",
                    style="green",
                )
            )
        phrases.append(Text(f"{time.monotonic() - self.started:.0f}s"))
        return self.fit(phrases)

    def fit(self, phrases: list[Text]) -> Text:
        """The phrases joined by " · ", on as few lines as the console's width allows, a line
        break only between two phrases (rich would break inside one: "best\nval_loss")."""
        fitted, used = Text(), 0
        for phrase in phrases:
            separator = " · " if used else ""
            if used and used + len(separator) + len(phrase) > self.console.width:
                fitted.append("\n")
                separator, used = "", 0
            fitted.append(separator)
            fitted.append(phrase)
            used += len(separator) + len(phrase)
        return fitted


class FinalistRecorder(StudyRecorder):
    """The finalists' recorder: also keeps each re-run's plan (`trainables.trainable.FINALIST`:
    the tuned trial, the seed, the epochs), which the records' configs leave out. A re-run that
    trained the epochs it was given counts as completed."""

    def __init__(self, metric: str, mode: str, journal: Path | None = None):
        super().__init__(metric, mode, max_epochs=1, journal=journal)
        self.plans: dict[str, dict[str, Any]] = {}

    def _event(self, trial, kind: str, **fields: Any) -> None:
        self.plans.setdefault(trial.trial_id, dict(trial.config.get(FINALIST, {})))
        super()._event(trial, kind, **fields)
