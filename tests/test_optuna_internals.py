"""Each use of Optuna's private API (tuner/internals/optuna_internals.py) against the installed
Optuna: when Optuna changes, the test of the function that broke names it."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage

from tuner.internals.optuna_internals import SoleWriterCache, report_curve, running_trial

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.mark.parametrize("in_rdb", [True, False])
def test_report_curve_stores_every_step_of_a_running_trial(tmp_path: Path, in_rdb: bool):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}" if in_rdb else None
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    report_curve(trial, {1: 0.5})
    report_curve(trial, {1: 0.4, 2: 0.3})  # a value stored before is overwritten
    study.tell(trial, 0.3)
    assert study.trials[0].intermediate_values == {1: 0.4, 2: 0.3}


def test_report_curve_refuses_a_finished_trial(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trial = study.ask()
    study.tell(trial, 0.3)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        report_curve(trial, {1: 0.5})
    assert study.trials[0].intermediate_values == {}


def test_running_trial_is_the_trial_ask_returned(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    asked = study.ask()
    (frozen,) = study.get_trials(deepcopy=False)
    trial = running_trial(study, frozen)
    assert trial.number == asked.number
    report_curve(trial, {1: 0.5})
    study.tell(trial, 0.4)
    (told,) = study.trials
    assert told.state == optuna.trial.TrialState.COMPLETE and told.intermediate_values == {1: 0.5}


class CountingReads(optuna.storages.RDBStorage):
    """An RDBStorage that records the trial ids each cache read asks for."""

    def __init__(self, url: str):
        super().__init__(url)
        self.reads: list[tuple[set[int], int]] = []

    def _get_trials(self, study_id, states, included_trial_ids, trial_id_greater_than):
        self.reads.append((set(included_trial_ids), trial_id_greater_than))
        return super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)


def run_trials(study: optuna.Study, running: int, told: int) -> list[optuna.Trial]:
    """Ask `running + told` trials (each with a param, a user attribute and a curve) and tell
    `told` of them; returns the ones left running."""
    trials = [
        study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        for _ in range(running + told)
    ]
    for trial in trials:
        trial.set_user_attr("tuner.trial_id", f"t{trial.number}")
        report_curve(trial, {1: trial.params["x"], 2: trial.params["x"] / 2})
    for trial in trials[running:]:
        study.tell(trial, trial.params["x"] / 2)
    return trials[:running]


def test_the_sole_writer_cache_sees_what_optuna_s_own_cache_sees(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    ours = optuna.create_study(storage=SoleWriterCache(RDBStorage(url)), study_name="s")
    running = run_trials(ours, running=5, told=7)
    ours.tell(running[0], state=optuna.trial.TrialState.PRUNED)
    fresh = optuna.load_study(study_name="s", storage=url)  # Optuna's cache, reading anew

    def seen(study):
        return [
            (t.number, t.state, t.params, t.values, t.intermediate_values, t.user_attrs)
            for t in study.get_trials(deepcopy=False)
        ]

    assert seen(ours) == seen(fresh)
    assert [t.state for t in ours.get_trials()].count(optuna.trial.TrialState.RUNNING) == 4
    enqueued = optuna.load_study(study_name="s", storage=url)
    enqueued.enqueue_trial({"x": 0.25})  # another process's new trial: read by its id
    assert ours.ask({"x": optuna.distributions.FloatDistribution(0, 1)}).params == {"x": 0.25}


def test_the_sole_writer_cache_rereads_only_the_trials_it_wrote(tmp_path: Path) -> None:
    backend = CountingReads(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=SoleWriterCache(backend), study_name="s")
    run_trials(study, running=64, told=0)
    study.get_trials(deepcopy=False)  # as the driver's next ask would, after those writes
    backend.reads.clear()
    trial = study.ask()  # Optuna's own cache re-reads all 64 running trials here
    assert backend.reads[0][0] == set()
    study.tell(trial, 0.5)
    study.ask()
    assert set().union(*(ids for ids, _ in backend.reads)) <= {trial._trial_id}
    assert study.trials[trial.number].value == 0.5


def test_the_sole_writer_cache_never_reads_a_trial_again_as_new(tmp_path: Path) -> None:
    backend = CountingReads(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=SoleWriterCache(backend), study_name="s")
    running = run_trials(study, running=10, told=0)
    study.get_trials(deepcopy=False)
    newest = running[-1]._trial_id
    running[0].set_user_attr("note", "written")  # an old trial, re-read by its id alone
    study.get_trials(deepcopy=False)
    study.get_trials(deepcopy=False)
    assert backend.reads[-2:] == [({running[0]._trial_id}, newest), (set(), newest)]
    assert study.trials[0].user_attrs["note"] == "written"


def test_the_sole_writer_cache_pickles_without_its_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=SoleWriterCache(RDBStorage(url)), study_name="s")
    run_trials(study, running=0, told=20)
    restored = pickle.loads(pickle.dumps(study._storage))
    assert restored._studies == {} and len(pickle.dumps(study._storage)) < 2_000
    again = optuna.load_study(study_name="s", storage=restored)
    assert [t.value for t in again.trials] == [t.value for t in study.trials]
