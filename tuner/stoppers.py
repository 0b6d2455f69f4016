"""`scheduler.stop_on_overfit`: stop a trial whose val loss has not improved for N epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.stopper import Stopper

from trainables import metrics as m
from tuner import outcomes
from tuner.journal import read_journal, relocated, results


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
