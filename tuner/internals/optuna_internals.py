"""Every use of Optuna's private API, one function or class each (tests/test_optuna_internals.py
checks each).

Optuna has no public way to write a trial's whole curve at once or to cache the trials of a study
that one process alone writes; pyproject pins Optuna to the minor version these were tested on.
"""

from __future__ import annotations

from typing import Any

from optuna.storages._cached_storage import _CachedStorage, _StudyInfo


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


def running_trial(study, frozen):
    """The `optuna.Trial` to report to and tell for a stored RUNNING trial, as `study.ask()`
    returned it: Optuna has no public way back from a FrozenTrial to its Trial."""
    from optuna.trial import Trial

    return Trial(study, frozen._trial_id)


def asked_again(study, frozen, without: str):
    """A new RUNNING trial with `frozen`'s parameters and user attributes (but `without`), as
    the `optuna.Trial` to report to and tell: `add_trial` and `create_trial` are public, the
    way back to a Trial is `running_trial`'s."""
    from optuna.trial import TrialState, create_trial

    attrs = {k: v for k, v in frozen.user_attrs.items() if k != without}
    template = create_trial(
        state=TrialState.RUNNING,
        params=frozen.params,
        distributions=frozen.distributions,
        user_attrs=attrs,
    )
    study.add_trial(template)
    newest = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))[-1]
    return running_trial(study, newest)


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
