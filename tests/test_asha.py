"""tuner/driver/asha.py: ResumableASHA, whose rungs Ray does not restore, rebuilt from the study's
journal, so a resumed trial is judged against everything that ran before the crash."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from tuner.driver.journal import JOURNAL_FILE, append_event
from tuner.driver.schedulers import make_scheduler
from tuner.internals.ray_internals import asha_rungs
from tuner.spec.job_spec import SchedulerSpec


def trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id)


def resumed_asha(journal: Path) -> TrialScheduler:
    """ASHA as Ray restores it: the copy pickled when the study started, its metric set again."""
    section = SchedulerSpec(name="asha", max_epochs=9, grace_period=1, reduction_factor=3)
    restored = pickle.loads(pickle.dumps(make_scheduler(section, journal)))
    restored.set_search_properties("val_loss", "min")
    return restored


def journal_of(tmp_path: Path, curves: dict[str, list[float]]) -> Path:
    journal = tmp_path / JOURNAL_FILE
    for trial_id, curve in curves.items():
        for epoch, value in enumerate(curve, start=1):
            row = {"epoch": epoch, "val_loss": value}
            append_event(journal, {"event": "result", "trial_id": trial_id, "row": row})
    return journal


BEFORE_THE_CRASH = {"a": [0.30, 0.20, 0.10], "b": [0.35, 0.25, 0.15], "c": [0.40, 0.30, 0.20]}


@pytest.mark.parametrize(("value", "action"), [(0.9, "STOP"), (0.05, "CONTINUE")])
def test_a_resumed_trial_is_judged_against_the_rungs_recorded_before_the_crash(
    tmp_path: Path, value: float, action: str
) -> None:
    scheduler = resumed_asha(journal_of(tmp_path, BEFORE_THE_CRASH))
    scheduler.on_trial_add(None, trial("new"))
    decision = scheduler.on_trial_result(None, trial("new"), {"epoch": 1, "val_loss": value})
    assert decision == getattr(TrialScheduler, action)
    recorded = {m: {t: -v for t, v in r.items()} for m, r in asha_rungs(scheduler, "new")}
    assert recorded[1] == {"a": 0.30, "b": 0.35, "c": 0.40, "new": value}
    assert recorded[3] == {"a": 0.10, "b": 0.15, "c": 0.20}


def test_without_the_journal_the_same_trial_would_pass(tmp_path: Path) -> None:
    """The control: an empty rung lets anything through, which is what a restore without the
    rebuild did."""
    scheduler = resumed_asha(tmp_path / "no-journal.jsonl")
    scheduler.on_trial_add(None, trial("new"))
    decision = scheduler.on_trial_result(None, trial("new"), {"epoch": 1, "val_loss": 0.9})
    assert decision == TrialScheduler.CONTINUE


def test_a_restored_trial_is_not_recorded_twice(tmp_path: Path) -> None:
    """A trial that was running at the crash resumes from its checkpoint: its rungs stand."""
    scheduler = resumed_asha(journal_of(tmp_path, BEFORE_THE_CRASH))
    scheduler.on_trial_add(None, trial("a"))
    assert scheduler.on_trial_result(None, trial("a"), {"epoch": 4, "val_loss": 0.09}) == "CONTINUE"
    recorded = {m: r.get("a") for m, r in asha_rungs(scheduler, "a")}
    assert recorded == {9: None, 3: -0.1, 1: -0.3}
