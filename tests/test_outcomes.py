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
    oom = {"epoch": 3, "val_loss": float("nan"), "out_of_memory": 0.25}
    assert outcomes.trial_status(oom, max_epochs) == outcomes.OUT_OF_MEMORY
    assert outcomes.trial_status({**oom, "out_of_memory": 0.0}, max_epochs) == "out_of_memory"


def test_an_out_of_memory_error_is_known_by_its_text() -> None:
    assert outcomes.is_out_of_memory(
        "trainables.usage.TrialOutOfMemory: CUDA out of memory at GPU share 0.25: Tried to ..."
    )
    assert outcomes.is_out_of_memory("torch.OutOfMemoryError: CUDA out of memory. Tried to")
    assert not outcomes.is_out_of_memory("ValueError: bad config")
    assert not outcomes.is_out_of_memory(None)


def test_a_study_stop_reason_is_one_of_five() -> None:
    assert outcomes.STOP_REASONS == (
        "completed",
        "time_budget",
        "patience",
        "gpu_hours_budget",
        "interrupted",
    )
