"""tuner/driver/stoppers.py: OverfitStopper stops a trial after `patience` epochs without
improvement."""

from __future__ import annotations

import math

import pytest

from tuner.driver.stoppers import OverfitStopper


def feed(stopper: OverfitStopper, trial_id: str, curve: list[float]) -> list[bool]:
    """The stopper's decision after each epoch of `curve` (epochs 1..n)."""
    return [stopper(trial_id, {"epoch": e, "val_loss": v}) for e, v in enumerate(curve, start=1)]


def first_stop(decisions: list[bool]) -> int | None:
    """The epoch at which the stopper first said stop, or None."""
    return next((epoch for epoch, stop in enumerate(decisions, start=1) if stop), None)


@pytest.mark.parametrize("patience", [1, 2, 3, 5])
def test_stops_after_patience_epochs_without_improvement(patience: int) -> None:
    stopper = OverfitStopper(patience=patience)
    curve = [1.0, 0.5] + [0.6 + 0.01 * i for i in range(patience + 3)]  # best at epoch 2
    decisions = feed(stopper, "t", curve)
    assert first_stop(decisions) == 2 + patience
    assert not any(decisions[: 1 + patience])


def test_improvement_resets_the_count() -> None:
    stopper = OverfitStopper(patience=3)
    # best 0.5 at 2; worse at 3, 4; new best at 5; worse at 6, 7, 8 -> stop at 8
    decisions = feed(stopper, "t", [1.0, 0.5, 0.6, 0.7, 0.4, 0.45, 0.5, 0.55, 0.6])
    assert first_stop(decisions) == 8


def test_steadily_improving_trial_is_never_stopped() -> None:
    stopper = OverfitStopper(patience=1)
    assert not any(feed(stopper, "t", [1.0 / e for e in range(1, 30)]))
    assert not stopper.has_stopped("t")


def test_equal_value_is_not_an_improvement() -> None:
    stopper = OverfitStopper(patience=2)
    assert first_stop(feed(stopper, "t", [0.5, 0.5, 0.5, 0.5])) == 3


def test_min_delta() -> None:
    stopper = OverfitStopper(patience=2, min_delta=0.05)
    # 0.48 and 0.46 improve by less than 0.05 over 0.5: they do not count as new bests
    assert first_stop(feed(stopper, "small", [0.5, 0.48, 0.46])) == 3
    # 0.44 improves by 0.06: a new best at epoch 2, so the trial goes on
    assert first_stop(feed(stopper, "big", [0.5, 0.44, 0.46, 0.47])) == 4


def test_min_delta_measures_from_the_best_not_the_previous_epoch() -> None:
    stopper = OverfitStopper(patience=3, min_delta=0.1)
    # small steps of 0.04 add up: 0.5 -> 0.38 beats the best by more than min_delta at epoch 4
    decisions = feed(stopper, "t", [0.5, 0.46, 0.42, 0.38, 0.37, 0.36, 0.35])
    assert first_stop(decisions) == 7


def test_trials_are_independent() -> None:
    stopper = OverfitStopper(patience=2)
    good = [1.0, 0.8, 0.6, 0.4, 0.2]
    bad = [0.5, 0.6, 0.7, 0.8, 0.9]
    decisions: dict[str, list[bool]] = {"good": [], "bad": []}
    for epoch in range(1, 6):  # interleaved, as results arrive from concurrent trials
        decisions["good"].append(stopper("good", {"epoch": epoch, "val_loss": good[epoch - 1]}))
        decisions["bad"].append(stopper("bad", {"epoch": epoch, "val_loss": bad[epoch - 1]}))
    assert first_stop(decisions["bad"]) == 3
    assert not any(decisions["good"])
    assert stopper.has_stopped("bad")
    assert not stopper.has_stopped("good")


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, None, "0.1"])
def test_ignores_non_finite_and_missing_values(bad_value: object) -> None:
    stopper = OverfitStopper(patience=3)
    assert not stopper("t", {"epoch": 1, "val_loss": 0.5})
    assert not stopper("t", {"epoch": 2, "val_loss": bad_value})
    assert not stopper("t", {"epoch": 3, "val_loss": 0.4})  # still improves on 0.5
    assert not stopper("t", {"epoch": 4, "val_loss": bad_value})
    assert not stopper("t", {"epoch": 5, "val_loss": 0.45})
    assert stopper("t", {"epoch": 6, "val_loss": 0.45})  # epoch 3 was the last best


def test_nan_first_does_not_become_the_best() -> None:
    stopper = OverfitStopper(patience=1)
    assert not stopper("t", {"epoch": 1, "val_loss": math.nan})
    assert not stopper("t", {"epoch": 2, "val_loss": 0.9})
    assert stopper("t", {"epoch": 3, "val_loss": 0.95})


def test_result_without_metric_key() -> None:
    stopper = OverfitStopper(patience=1)
    assert not stopper("t", {"epoch": 1})
    assert not stopper.has_stopped("t")


def test_has_stopped_and_stop_all() -> None:
    stopper = OverfitStopper(patience=1)
    assert not stopper.has_stopped("t")
    feed(stopper, "t", [0.5, 0.6])
    assert stopper.has_stopped("t")
    assert stopper.stopped == {"t"}
    assert not stopper.has_stopped("other")
    assert stopper.stop_all() is False


def test_custom_metric() -> None:
    stopper = OverfitStopper(patience=1, metric="train_loss")
    assert not stopper("t", {"epoch": 1, "train_loss": 0.5, "val_loss": 9.0})
    assert stopper("t", {"epoch": 2, "train_loss": 0.6, "val_loss": 0.1})


def test_defaults() -> None:
    stopper = OverfitStopper(patience=4)
    assert stopper.patience == 4
    assert stopper.min_delta == 0.0
    assert stopper.metric == "val_loss"


def test_study_stop_replays_patience_from_the_journal_and_an_extension_resets_it(
    tmp_path,
) -> None:
    """StudyStop, as Ray restores it: the plateau and the stop come back from the journal."""
    import pickle

    from tuner.driver.journal import append_event
    from tuner.driver.stoppers import SEARCH_EXTENDED, StudyStop
    from tuner.results.outcomes import PATIENCE

    journal = tmp_path / "trials.jsonl"
    for trial, curve in (("a", [0.9, 0.5]), ("b", [0.7, 0.6]), ("c", [0.8, float("nan")])):
        for epoch, value in enumerate(curve, start=1):
            row = {"epoch": epoch, "val_loss": value}
            append_event(journal, {"event": "result", "trial_id": trial, "row": row})
        append_event(journal, {"event": "end", "trial_id": trial})
    stop = StudyStop("val_loss", "min", patience_trials=2, journal=journal)
    assert stop.reason() is None  # nothing told it yet
    restored = pickle.loads(pickle.dumps(stop))
    assert (restored.best, restored.since_best) == (0.5, 2)  # b and c did not beat a's 0.5
    assert restored.reason() == PATIENCE
    assert pickle.loads(pickle.dumps(restored)).reason() == PATIENCE  # journaled: it stays
    append_event(journal, {"event": SEARCH_EXTENDED, "num_samples": 9})
    extended = pickle.loads(pickle.dumps(restored))
    assert (extended.since_best, extended.reason()) == (0, None)
    extended.trial_ended(0.4)
    extended.trial_ended(None)  # reported nothing
    assert (extended.best, extended.since_best) == (0.4, 1)
