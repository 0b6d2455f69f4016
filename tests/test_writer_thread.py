"""tuner/tracking/writer_thread.py: the MLflow writes of a study on one thread, at most
MAX_WRITER_LAG_S behind the trials, and never holding them for a write that hangs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import EPOCH_1, callbacks, drive, fake_trial, recorded_ops
from tuner.tracking import writer_thread


@pytest.mark.parametrize("max_lag_s", [0.3, 1_000.0])
def test_the_event_loop_waits_for_a_writer_that_falls_behind(
    study_dir: Path, monkeypatch, max_lag_s: float
) -> None:
    """Writes that take 0.1 s each, results queued faster: with a 0.3 s limit the queue stays
    a few writes long; without one (the control) it holds nearly every result."""
    import time

    monkeypatch.setattr(writer_thread, "MAX_WRITER_LAG_S", max_lag_s)
    recorder, tracking, _ = callbacks(study_dir)
    tracking.background, tracking.flush_interval_s = True, 0.0  # each epoch: its own batch
    recorded_ops(tracking, delay_s=0.1)
    trial = fake_trial("t1", 1)
    drive([recorder, tracking], "on_trial_start", trial)
    queued = []
    for epoch in range(1, 21):  # a result every 0.01 s, ten times the writer's pace
        time.sleep(0.01)
        drive([recorder, tracking], "on_trial_result", trial, result={**EPOCH_1, "epoch": epoch})
        queued.append(tracking._writes.queued)
    tracking.wait()
    assert max(queued) <= 8 if max_lag_s < 1 else max(queued) >= 14


def test_a_write_that_hangs_is_not_waited_for(study_dir: Path, monkeypatch) -> None:
    """A server that stops answering holds the writer thread, not the study."""
    import time

    monkeypatch.setattr(writer_thread, "MAX_WRITER_LAG_S", 0.1)
    monkeypatch.setattr(writer_thread, "STUCK_WRITE_S", 0.3)
    recorder, tracking, _ = callbacks(study_dir)
    tracking.background, tracking.flush_interval_s = True, 0.0
    recorded_ops(tracking, delay_s=3.0)
    trial = fake_trial("t1", 1)
    began = time.monotonic()
    drive([recorder, tracking], "on_trial_start", trial)
    for epoch in (1, 2, 3):
        drive([recorder, tracking], "on_trial_result", trial, result={**EPOCH_1, "epoch": epoch})
    held = time.monotonic() - began
    tracking.wait()
    assert held < 2.0, f"the hooks waited {held:.1f} s for a write that hung"
