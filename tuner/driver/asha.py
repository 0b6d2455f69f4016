"""ASHA that picks up its rung history when Ray restores a study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from trainables import metrics as m
from tuner.cluster.storage import relocated
from tuner.driver.journal import read_journal, results
from tuner.driver.live_trials import LiveTrialsFirst
from tuner.internals.ray_internals import asha_objective, asha_rungs
from tuner.results import outcomes


class ResumableASHA(LiveTrialsFirst, ASHAScheduler):
    """ASHA that rebuilds its rungs from the study journal when Ray restores the experiment.

    Ray pickles the scheduler with the Tuner when the study starts and restores that empty copy,
    so a resumed study would otherwise compare new arrivals at a rung with nobody: every trial
    would pass. On the first result after a restore, each journaled trial's value at each rung it
    reached is recorded again, in the bracket the trial belongs to. The next trial to run is
    chosen from the live trials (LiveTrialsFirst).
    """

    def __init__(self, *args: Any, journal: Path | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.journal = journal
        self._restored = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.journal = relocated(self.journal)
        self._restored = True  # prime on the first result: the metric is set by then

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._restored:
            self._restored = False
            self.prime(read_journal(self.journal))
        return super().on_trial_result(tune_controller, trial, result)

    def prime(self, events: list[dict[str, Any]]) -> int:
        """Record past results at the rungs they reached, as Ray records them (in its highest
        milestone not yet recorded that the epoch has reached); returns the entries made."""
        metric, sign = asha_objective(self)
        if metric is None:
            return 0
        entries = 0
        for event in sorted(results(events), key=lambda e: e["row"].get(m.EPOCH, 0)):
            row, trial_id = event["row"], event["trial_id"]
            epoch, value = row.get(m.EPOCH, 0), row.get(metric)
            if not outcomes.is_finite(value):
                continue
            for milestone, recorded in asha_rungs(self, trial_id):  # highest milestone first
                if epoch < milestone or trial_id in recorded:
                    continue
                recorded[trial_id] = sign * value
                entries += 1
                break
        return entries
