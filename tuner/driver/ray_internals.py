"""Every use of Ray's private API (and of Optuna's), one function or class each
(tests/test_ray_internals.py checks each).

Ray has no public way to do these; pyproject pins Ray to the versions they were tested on. When
Ray changes, the test of the function that broke says which one, and only it needs a new body.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from optuna.storages._cached_storage import _CachedStorage, _StudyInfo


def stop_local_daemons() -> list[str]:
    """Stop two daemons of the local Ray this process started that have no work in a study, yet
    take CPU from the trials: the autoscaler monitor (one machine has nothing to autoscale; it
    also makes `ray.shutdown` wait a second for it) and the log monitor, which reads every
    worker's log ten times a second to forward it to a driver that asks for none. Ray has no
    public switch for either. Returns the daemons it stopped."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    stopped = []
    for stop in ("kill_monitor", "kill_log_monitor"):
        with contextlib.suppress(Exception):
            getattr(node, stop)(check_alive=False)
            stopped.append(stop.removeprefix("kill_"))
    return stopped


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """Around the start of a local Ray: its processes (GCS, raylet, workers, agents) listen on
    127.0.0.1 only. Ray binds them to all interfaces unless the node's IP is a loopback one, and
    it replaces a loopback `_node_ip_address` with the machine's outward IP, except when Ray
    clusters are off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, the default on macOS and Windows).
    Ray reads that variable once, as it is imported, so this sets the constant it was read into,
    for this start only: a driver that attaches to a cluster is unaffected."""
    from ray._private import ray_constants

    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enabled


def restored_callbacks(tuner) -> list:
    """The callbacks a restored `tune.Tuner` unpickled (Tuner has no public getter)."""
    return tuner._local_tuner.get_run_config().callbacks or []


def release_ended_trial(trial) -> None:
    """Drop what Ray Tune keeps of a TERMINATED trial only to update its running averages: a
    window of the last 5 and 10 values of every metric (about 20 KiB a trial of a study's
    driver memory, kept for every trial; the averages themselves stay). A terminated trial is
    never updated again; an errored one may be retried, so is left as it is. Anything without
    Ray's run metadata (a test's stand-in trial) is left alone."""
    metadata = getattr(trial, "run_metadata", None)
    if metadata is not None:
        metadata.metric_n_steps = {}


# --------------------------------------------------------------------------- ASHA


def asha_objective(scheduler) -> tuple[str | None, float | None]:
    """(metric, sign) of an ASHAScheduler: Ray records sign * value at its rungs, a reward
    (sign -1 for mode min); (None, None) before Tune has set the metric."""
    return scheduler._metric, scheduler._metric_op


def asha_rungs(scheduler, trial_id: str | None = None) -> list[tuple[int, dict[str, float]]]:
    """The rungs (milestone, {trial id: recorded value}) of the bracket `trial_id` is in, or of
    the first bracket for a trial the scheduler does not know (one that ended before a
    restore); the dicts are Ray's own, so entries added to them count at the next cutoff."""
    bracket = scheduler._trial_info.get(trial_id) if trial_id else None
    if bracket is None:
        if not scheduler._brackets:
            return []
        bracket = scheduler._brackets[0]
    return bracket._rungs


# --------------------------------------------------------------------------- OptunaSearch


def optuna_study(searcher):
    """The optuna.Study an OptunaSearch asks and tells."""
    return searcher._ot_study


def optuna_trials(searcher) -> dict[str, Any]:
    """Ray trial id -> the optuna.Trial an OptunaSearch asked for it."""
    return searcher._ot_trials


def completed_trials(searcher) -> set[str]:
    """The Ray trial ids an OptunaSearch has already told Optuna about."""
    return searcher._completed_trials


# --------------------------------------------------------------------------- Optuna's storage


def report_curve(trial, values: dict[int, float]) -> None:
    """Optuna's `Trial.report` of every (step, value) at once: on an RDB storage one transaction
    of two reads (the trial, its stored values) and the writes, through Optuna's private models
    (its public API commits once per value, and its private per-value write reads twice per
    value); any other storage value by value. Values already stored are overwritten."""
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    storage = getattr(trial.storage, "_backend", trial.storage)  # _CachedStorage wraps an RDB
    if not isinstance(storage, RDBStorage):
        for step, value in values.items():
            storage.set_trial_intermediate_value(trial._trial_id, step, value)
        return
    model = models.TrialIntermediateValueModel
    with _create_scoped_session(storage.scoped_session, True) as session:
        stored_trial = models.TrialModel.find_or_raise_by_id(trial._trial_id, session)
        storage.check_trial_is_updatable(trial._trial_id, stored_trial.state)
        stored = {row.step: row for row in stored_trial.intermediate_values}
        for step, value in values.items():
            number, kind = model.intermediate_value_to_stored_repr(value)
            row = stored.get(step)
            if row is None:
                row = model(trial_id=trial._trial_id, step=step)
                session.add(row)
            row.intermediate_value, row.intermediate_value_type = number, kind
    if isinstance(trial.storage, SoleWriterCache):
        trial.storage.wrote(trial._trial_id)


class SoleWriterCache(_CachedStorage):
    """Optuna's trial cache (`_CachedStorage`, over an RDBStorage) for a study this process
    alone writes, as a driver writes its execution's study.

    Optuna's cache re-reads every unfinished trial from the database at each `ask`, `tell` and
    sampler read, since another process may have changed it: with 64 trials running that was
    37% of a driver's time. This one re-reads only the trials this process wrote since its last
    read, and every trial created since (by any process). It pickles without its cache (Ray
    pickles the searcher at every experiment snapshot; Optuna's pickled every trial read)."""

    def __init__(self, backend) -> None:
        super().__init__(backend)
        self._written: set[int] = set()
        self._newest_read: dict[int, int] = {}  # study id -> the highest trial id read

    def __getstate__(self) -> dict[str, Any]:
        return {"_backend": self._backend}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_backend"])

    def wrote(self, trial_id: int) -> None:
        with self._lock:
            self._written.add(trial_id)

    def set_trial_param(self, trial_id: int, *args: Any, **kwargs: Any) -> None:
        super().set_trial_param(trial_id, *args, **kwargs)
        self.wrote(trial_id)

    def set_trial_state_values(self, trial_id: int, *args: Any, **kwargs: Any) -> bool:
        try:
            return super().set_trial_state_values(trial_id, *args, **kwargs)
        finally:
            self.wrote(trial_id)

    def set_trial_intermediate_value(self, trial_id: int, *args: Any, **kwargs: Any) -> None:
        super().set_trial_intermediate_value(trial_id, *args, **kwargs)
        self.wrote(trial_id)

    def set_trial_user_attr(self, trial_id: int, *args: Any, **kwargs: Any) -> None:
        super().set_trial_user_attr(trial_id, *args, **kwargs)
        self.wrote(trial_id)

    def set_trial_system_attr(self, trial_id: int, *args: Any, **kwargs: Any) -> None:
        super().set_trial_system_attr(trial_id, *args, **kwargs)
        self.wrote(trial_id)

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        with self._lock:
            study = self._studies.setdefault(study_id, _StudyInfo())
            changed = study.unfinished_trial_ids & self._written
            newest = self._newest_read.get(study_id, -1)
            trials = self._backend._get_trials(study_id, None, changed, newest)
            read = {trial._trial_id for trial in trials}
            self._written -= changed | read
            self._newest_read[study_id] = max(read | {newest})  # a re-read old trial: no step back
            self._add_trials_to_cache(study_id, trials)
            finished = {trial._trial_id for trial in trials if trial.state.is_finished()}
            study.unfinished_trial_ids = (study.unfinished_trial_ids | read) - finished


# --------------------------------------------------------------------------- extending a study


def extend_search(results_path, num_samples: int) -> int:
    """Let a saved Ray experiment create trials up to `num_samples` in all when it is restored:
    Ray restores its search generator's trial count (`total_samples`) from its newest state
    file, not from the Tuner's config, and a generator whose searcher said FINISHED stays
    finished. Rewrites that file; returns the count it held."""
    import os
    from pathlib import Path

    import ray.cloudpickle as cloudpickle
    from ray.tune.search.search_generator import SearchGenerator
    from ray.tune.utils.util import _atomic_save

    pattern = SearchGenerator.CKPT_FILE_TMPL.format("*")
    newest = max(Path(results_path).glob(pattern), key=lambda p: p.name)  # Ray's own pick
    state = cloudpickle.loads(newest.read_bytes())
    before = state["total_samples"]
    state["total_samples"], state["finished"] = num_samples, False
    _atomic_save(state, os.fspath(newest.parent), newest.name, f"tmp-{newest.name}")
    return before
