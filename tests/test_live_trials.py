"""The next trial to run is the one Ray's FIFO choice names, read from the live trials only."""

from __future__ import annotations

import pickle
import random

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler

from tuner.driver.asha import ResumableASHA
from tuner.driver.live_trials import LiveFIFO

STATUSES = [Trial.PENDING, Trial.RUNNING, Trial.PAUSED, Trial.TERMINATED, Trial.ERROR]


class Controller:
    """What FIFOScheduler reads of Tune's controller: every trial, in order."""

    def __init__(self):
        self.trials: list[Trial] = []

    def get_trials(self) -> list[Trial]:
        return self.trials


def new_trial(controller: Controller, schedulers) -> Trial:
    trial = Trial("trainable", stub=True)
    controller.trials.append(trial)
    for scheduler in schedulers:
        scheduler.on_trial_add(controller, trial)
    return trial


def test_the_choice_is_ray_s_through_a_study_s_life() -> None:
    """Random status changes over 300 trials: at every step both name the same trial."""
    rng = random.Random(0)
    controller, ours, ray = Controller(), LiveFIFO(), FIFOScheduler()
    chosen = set()
    for _ in range(2_000):
        if rng.random() < 0.2:
            new_trial(controller, [ours, ray])
        if controller.trials:
            trial = rng.choice(controller.trials[-40:])
            if trial.status not in (Trial.TERMINATED, Trial.ERROR):
                trial.set_status(rng.choice(STATUSES))
        expected = ray.choose_trial_to_run(controller)
        assert ours.choose_trial_to_run(controller) is expected
        chosen.add(expected.status if expected else None)
    assert chosen == {Trial.PENDING, Trial.PAUSED, None}  # every branch was taken
    assert len(ours._live_trials()) < len(controller.trials) / 3  # the ended ones are dropped


def test_a_trial_added_again_goes_last() -> None:
    controller, ours = Controller(), LiveFIFO()
    first, second = new_trial(controller, [ours]), new_trial(controller, [ours])
    ours.on_trial_add(controller, first)
    assert ours.choose_trial_to_run(controller) is second


def test_asha_chooses_the_same_way_and_pickles_without_trials() -> None:
    controller, ours = Controller(), ResumableASHA(time_attr="epoch", max_t=9)
    ours.set_search_properties("val_loss", "min")
    running, waiting = new_trial(controller, [ours]), new_trial(controller, [ours])
    running.set_status(Trial.RUNNING)
    assert ours.choose_trial_to_run(controller) is waiting
    restored = pickle.loads(pickle.dumps(ours))
    assert restored._live_trials() == {} and restored.choose_trial_to_run(controller) is None
