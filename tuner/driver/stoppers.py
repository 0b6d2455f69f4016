"""`scheduler.stop_on_overfit`: stop a trial whose val loss has not improved for N epochs; and
`search.time_budget_s` / `search.patience_trials` / `search.gpu_hours_budget`: stop starting
trials in a study."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune.stopper import Stopper

from trainables import metrics as m
from tuner.cluster.storage import relocated
from tuner.driver.journal import append_event, read_journal, results
from tuner.results import outcomes


class OverfitStopper(Stopper):
    """Early stopping on validation loss, per trial; remembers which trials it stopped."""

    def __init__(
        self,
        patience: int,
        min_delta: float = 0.0,
        metric: str = m.VAL_LOSS,
        journal: Path | None = None,
    ):
        self.patience = patience
        self.min_delta = min_delta
        self.metric = metric
        self.journal = journal  # replayed on restore, so patience counts across a resume
        self._best: dict[str, tuple[float, int]] = {}  # trial -> (best value, its epoch)
        self.stopped: set[str] = set()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.journal = relocated(self.journal)
        for event in results(read_journal(self.journal)):
            if outcomes.is_finite(event["row"].get(self.metric)):
                self._improved(event["trial_id"], event["row"])

    def _improved(self, trial_id: str, result: dict) -> bool:
        """Track the best value; True when this result is a new best."""
        value, epoch = result.get(self.metric), result.get(m.EPOCH, 0)
        best = self._best.get(trial_id)
        if best is None or value < best[0] - self.min_delta:
            self._best[trial_id] = (value, epoch)
            return True
        return False

    def __call__(self, trial_id: str, result: dict) -> bool:
        if not outcomes.is_finite(result.get(self.metric)) or self._improved(trial_id, result):
            return False
        if result.get(m.EPOCH, 0) - self._best[trial_id][1] >= self.patience:
            self.stopped.add(trial_id)
            # Ray keeps this very dict as the trial's last result, so the searcher and the
            # callbacks read why the trial ended from the result itself
            result[m.STOPPED_ON_OVERFIT] = 1
            return True
        return False

    def stop_all(self) -> bool:
        return False

    def has_stopped(self, trial_id: str) -> bool:
        return trial_id in self.stopped


# --------------------------------------------------------------------------- the study


#: journal events of the search as a whole (no trial id): the searcher stopped suggesting, and
#: `tuner resume --set search.num_samples=N` extended the study (patience counts afresh)
SEARCH_STOPPED, SEARCH_EXTENDED = "search_stopped", "search_extended"


def plateau(events: list[dict[str, Any]], metric: str, mode: str) -> tuple[float | None, int]:
    """(best objective, trials finished since it last improved), replayed from journal events:
    every ended trial counts, at its best epoch (as the trials table ranks it); an extension
    starts the count again."""
    curves: dict[str, list[dict[str, Any]]] = {}
    best, since = None, 0
    for event in events:
        kind = event.get("event")
        if kind == "result":
            curves.setdefault(event["trial_id"], []).append(event["row"])
        elif kind == "end":
            row = outcomes.best_epoch(curves.get(event["trial_id"], []), metric, mode)
            best, since = improve(best, since, row[metric] if row else None, mode)
        elif kind == SEARCH_EXTENDED:
            since = 0
    return best, since


def improve(best: float | None, since: int, value: float | None, mode: str) -> tuple:
    """One more finished trial, with its best-epoch `value` (None: it reported none)."""
    if value is not None and outcomes.is_better(value, best, mode):
        return value, 0
    return best, since + 1


def gpu_hours(events: list[dict[str, Any]]) -> dict[str, float]:
    """Each trial's GPU-hours so far (its latest result's), replayed from journal events."""
    hours: dict[str, float] = {}
    for event in events:
        if event.get("event") == "result" and outcomes.is_finite(event["row"].get(m.GPU_HOURS)):
            hours[event["trial_id"]] = float(event["row"][m.GPU_HOURS])
        elif event.get("event") == "superseded":
            hours.pop(event.get("trial_id"), None)
    return hours


def stop_reason(events: list[dict[str, Any]]) -> str | None:
    """The reason the search stopped suggesting, since the study's last extension (None: it
    did not stop early)."""
    reason = None
    for event in events:
        if event.get("event") == SEARCH_STOPPED:
            reason = event["reason"]
        elif event.get("event") == SEARCH_EXTENDED:
            reason = None
    return reason


class StudyStop:
    """`search.time_budget_s`, `search.patience_trials` and `search.gpu_hours_budget`: when the
    search starts no new trial.

    The searcher asks `reason()` before each suggestion, tells `trial_ended` each trial's
    best-epoch objective and `gpu_hours_used` each result's GPU-hours; running trials always
    finish (so the GPU-hours spent end a little above the budget). The clock starts at the first
    suggestion of this driver (like Optuna's `timeout`, a `tuner resume` gets the budget again);
    the GPU-hours are the study's, every driver's; the plateau and the GPU-hours are replayed
    from the journal when Ray restores the searcher.
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        time_budget_s: float | None = None,
        patience_trials: int | None = None,
        journal: Path | None = None,
        gpu_hours_budget: float | None = None,
    ):
        self.metric, self.mode = metric, mode
        self.time_budget_s, self.patience_trials = time_budget_s, patience_trials
        self.gpu_hours_budget = gpu_hours_budget
        self.hours: dict[str, float] = {}  # each trial's GPU-hours so far
        self.journal = journal
        self.best: float | None = None
        self.since_best = 0  # finished trials since the best last improved
        self._clock: float | None = None
        self.stopped: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_clock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        events = read_journal(self.journal)
        self.best, self.since_best = plateau(events, self.metric, self.mode)
        self.stopped = stop_reason(events)
        self.gpu_hours_budget = state.get("gpu_hours_budget")  # none in searchers saved before
        self.hours = gpu_hours(events)

    def trial_ended(self, value: float | None) -> None:
        self.best, self.since_best = improve(self.best, self.since_best, value, self.mode)

    def gpu_hours_used(self, trial_id: str, hours: float) -> None:
        """A result of trial `trial_id`: its GPU-hours so far."""
        self.hours[trial_id] = hours

    def reason(self) -> str | None:
        """Why no new trial should start now (None: it may), journaled the first time."""
        if self.stopped is None:
            self.stopped = self._check()
            if self.stopped is not None and self.journal is not None:
                append_event(
                    self.journal,
                    {"event": SEARCH_STOPPED, "reason": self.stopped, "time": time.time()},
                )
        return self.stopped

    def _check(self) -> str | None:
        now = time.monotonic()
        if self._clock is None:
            self._clock = now
        if self.time_budget_s is not None and now - self._clock >= self.time_budget_s:
            return outcomes.TIME_BUDGET
        if self.patience_trials is not None and self.since_best >= self.patience_trials:
            return outcomes.PATIENCE
        budget = getattr(self, "gpu_hours_budget", None)
        if budget is not None and sum(self.hours.values()) >= budget:
            return outcomes.GPU_HOURS_BUDGET
        return None
