"""Optuna samplers that Ray can pickle.

Ray pickles the searcher, its sampler included, when the Tuner is made and at every experiment
snapshot, and `tuner resume` unpickles it. Since Optuna 5.1 the genetic-algorithm samplers
(NSGA-II) hold a `threading.Lock`, which pickle refuses. These subclasses pickle without their
locks and make new ones when unpickled; nothing else of the sampler changes.
"""

from __future__ import annotations

import threading
from typing import Any

import optuna

#: the lock types pickle refuses, each by the name of what makes a new one in `threading`
_LOCK_KINDS = {type(threading.Lock()): "Lock", type(threading.RLock()): "RLock"}
_DROPPED = "_tuner_dropped_locks"


class WithoutLocks:
    """Pickles the instance's attributes less its locks; unpickling makes them anew."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        locks = {name: _LOCK_KINDS[type(v)] for name, v in state.items() if type(v) in _LOCK_KINDS}
        for name in locks:
            del state[name]
        state[_DROPPED] = locks
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        locks = state.pop(_DROPPED, {})
        self.__dict__.update(state)
        for name, kind in locks.items():
            setattr(self, name, getattr(threading, kind)())


class NSGAIISampler(WithoutLocks, optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable."""
