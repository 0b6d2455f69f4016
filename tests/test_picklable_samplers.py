"""tuner/driver/picklable_samplers.py: a sampler pickles without its locks and makes new ones
when unpickled; the NSGA-II it wraps pickles where Optuna's refuses, and a pickled copy goes on
sampling exactly as the sampler would have."""

from __future__ import annotations

import pickle
import threading

import optuna
import pytest

from tuner.driver.picklable_samplers import NSGAIISampler, WithoutLocks

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


class Holder(WithoutLocks):
    def __init__(self) -> None:
        self.lock, self.rlock, self.value = threading.Lock(), threading.RLock(), 3


def test_a_sampler_without_locks_makes_new_ones_when_unpickled() -> None:
    holder = Holder()
    holder.lock.acquire()  # a held lock is not carried over: the copy's is free
    copy = pickle.loads(pickle.dumps(holder))
    assert copy.value == 3
    assert copy.lock.acquire(blocking=False) and copy.rlock.acquire(blocking=False)
    assert copy.lock is not holder.lock
    assert type(copy.rlock) is type(threading.RLock())


def test_pickling_leaves_the_original_and_its_locks_untouched() -> None:
    holder = Holder()
    lock = holder.lock
    state = holder.__getstate__()
    assert "lock" not in state and "rlock" not in state and state["value"] == 3
    assert holder.lock is lock and vars(holder).keys() == {"lock", "rlock", "value"}
    copy = pickle.loads(pickle.dumps(holder))
    assert vars(copy).keys() == {"lock", "rlock", "value"}  # no bookkeeping attribute left


def test_nsga2_pickles_where_optunas_own_refuses() -> None:
    with pytest.raises(TypeError, match="lock"):
        pickle.dumps(optuna.samplers.NSGAIISampler(seed=0))
    sampler = NSGAIISampler(seed=0, population_size=4)
    copy = pickle.loads(pickle.dumps(sampler))
    assert isinstance(copy, optuna.samplers.NSGAIISampler)
    assert copy._population_size == 4


def objectives(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", -2, 2)
    layers = trial.suggest_int("layers", 1, 4)
    return x**2 + layers, (x - 1) ** 2 - layers


def searched(sampler: optuna.samplers.BaseSampler, trials: int, pickle_after: int | None = None):
    """The params of a two-objective search's trials, its sampler swapped for an unpickled copy
    of itself after `pickle_after` trials (as `tuner resume` restores it)."""
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for number in range(trials):
        if number == pickle_after:
            study.sampler = pickle.loads(pickle.dumps(study.sampler))
        study.optimize(objectives, n_trials=1)
    return [t.params for t in study.trials]


def test_an_unpickled_nsga2_samples_what_the_original_would_have() -> None:
    # population 4: by trial 6 the sampler is breeding a generation, not sampling at random
    expected = searched(NSGAIISampler(seed=7, population_size=4), trials=14)
    assert searched(NSGAIISampler(seed=7, population_size=4), 14, pickle_after=6) == expected
    assert len({repr(p) for p in expected}) > 1
    assert expected != searched(NSGAIISampler(seed=8, population_size=4), trials=14)
