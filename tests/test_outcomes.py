"""tuner/results/outcomes.py: how a trial ended, read from its last result, and a study's stop
reasons."""

from __future__ import annotations

from tuner.results import outcomes


def test_statuses_are_a_trial_s_last_result_read_one_way() -> None:
    max_epochs = 5
    assert outcomes.trial_status({"epoch": 2, "diverged": 1}, max_epochs) == outcomes.DIVERGED
    assert outcomes.trial_status({"epoch": 5}, max_epochs) == outcomes.COMPLETED
    assert outcomes.trial_status({"epoch": 2}, max_epochs) == outcomes.STOPPED_BY_SCHEDULER
    assert outcomes.trial_status(None, max_epochs) == outcomes.STOPPED_BY_SCHEDULER
    assert outcomes.trial_status({"epoch": 2}, max_epochs, errored=True) == outcomes.ERRORED


def test_a_study_stop_reason_is_one_of_four() -> None:
    assert outcomes.STOP_REASONS == ("completed", "time_budget", "patience", "interrupted")
