"""The trial scheduler: ASHA (able to pick up its rung history on resume) or FIFO."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from trainables import metrics as m
from tuner import outcomes
from tuner.progress import read_journal
from tuner.spec import JobSpec


class ResumableASHA(ASHAScheduler):
    """ASHA that rebuilds its rungs from the study journal when Ray restores the experiment.

    Ray pickles the scheduler with the Tuner when the study starts and restores that empty copy,
    so a resumed study would otherwise compare new arrivals at a rung with nobody: every trial
    would pass. `__setstate__` replays each journaled trial's value at each rung it reached.
    """

    def __init__(self, *args: Any, journal: Path | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.journal = journal
        self._restored = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._restored = True  # prime on the first result: the metric is set by then

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._restored:
            self._restored = False
            self.prime(read_journal(self.journal))
        return super().on_trial_result(tune_controller, trial, result)

    def prime(self, events: list[dict[str, Any]]) -> int:
        """Record past results at the rungs they reached; returns how many entries it made."""
        if self._metric is None or not self._brackets:
            return 0
        bracket, entries = self._brackets[0], 0  # the default single bracket
        for event in events:
            row = event.get("row") or {}
            value, epoch = row.get(self._metric), row.get(m.EPOCH)
            if event.get("event") != "result" or not outcomes.is_finite(value):
                continue
            for milestone, recorded in bracket._rungs:
                if epoch == milestone and event["trial_id"] not in recorded:
                    recorded[event["trial_id"]] = self._metric_op * value
                    entries += 1
        return entries


def make_scheduler(spec: JobSpec, journal: Path | None = None) -> TrialScheduler:
    s = spec.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    return ResumableASHA(
        time_attr=m.EPOCH,
        max_t=s.max_epochs,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        journal=journal,
    )
