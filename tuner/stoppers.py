"""`scheduler.stop_on_overfit`: stop a trial whose val loss has not improved for N epochs."""

from __future__ import annotations

from ray.tune.stopper import Stopper

from trainables import metrics as m
from tuner import outcomes


class OverfitStopper(Stopper):
    """Early stopping on validation loss, per trial; remembers which trials it stopped."""

    def __init__(self, patience: int, min_delta: float = 0.0, metric: str = m.VAL_LOSS):
        self.patience = patience
        self.min_delta = min_delta
        self.metric = metric
        self._best: dict[str, tuple[float, int]] = {}  # trial -> (best value, its epoch)
        self.stopped: set[str] = set()

    def __call__(self, trial_id: str, result: dict) -> bool:
        value, epoch = result.get(self.metric), result.get(m.EPOCH, 0)
        if not outcomes.is_finite(value):
            return False
        best = self._best.get(trial_id)
        if best is None or value < best[0] - self.min_delta:
            self._best[trial_id] = (value, epoch)
            return False
        if epoch - best[1] >= self.patience:
            self.stopped.add(trial_id)
            return True
        return False

    def stop_all(self) -> bool:
        return False

    def has_stopped(self, trial_id: str) -> bool:
        return trial_id in self.stopped
