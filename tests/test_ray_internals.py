"""Each use of Ray's private API (tuner/driver/ray_internals.py) against the installed Ray: when Ray
changes, the test of the function that broke names it."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import optuna
import psutil
import pytest
from optuna.storages import RDBStorage
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from tuner.driver.journal import JOURNAL_FILE, append_event
from tuner.driver.ray_internals import (
    SoleWriterCache,
    asha_objective,
    asha_rungs,
    completed_trials,
    extend_search,
    loopback_node,
    optuna_study,
    optuna_trials,
    release_ended_trial,
    report_curve,
    restored_callbacks,
    stop_local_daemons,
)
from tuner.driver.schedulers import make_scheduler
from tuner.spec.job_spec import SchedulerSpec

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id)


def asha(mode: str = "min", **kwargs) -> ASHAScheduler:
    scheduler = ASHAScheduler(time_attr="epoch", max_t=9, grace_period=1, reduction_factor=3)
    scheduler.set_search_properties("val_loss", mode)
    return scheduler


def test_asha_objective() -> None:
    assert asha_objective(asha("max")) == ("val_loss", 1.0)
    assert asha_objective(asha("min")) == ("val_loss", -1.0)  # Ray keeps rewards: higher wins
    fresh = ASHAScheduler(time_attr="epoch", max_t=9)
    assert asha_objective(fresh) == (None, None)


def test_asha_rungs_are_the_dicts_ray_records_into() -> None:
    scheduler = asha("max")
    scheduler.on_trial_add(None, trial("a"))
    scheduler.on_trial_result(None, trial("a"), {"epoch": 1, "val_loss": 0.5})
    rungs = asha_rungs(scheduler, "a")
    assert [milestone for milestone, _ in rungs] == [9, 3, 1]  # highest first
    assert rungs[-1][1] == {"a": 0.5}
    assert asha_rungs(scheduler, "unknown") is rungs  # one bracket: the first


def test_optuna_search_internals(tmp_path: Path) -> None:
    searcher = OptunaSearch(
        {"lr": tune.loguniform(1e-4, 1e-1)},
        metric="val_loss",
        mode="min",
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"),
        study_name="internals",
    )
    assert isinstance(optuna_study(searcher), optuna.Study)
    config = searcher.suggest("t1")
    assert set(optuna_trials(searcher)) == {"t1"}
    assert optuna_trials(searcher)["t1"].params == config
    searcher.on_trial_complete("t1", {"val_loss": 0.3})
    assert completed_trials(searcher) == {"t1"}


def test_restored_callbacks() -> None:
    callback = tune.Callback()
    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(callbacks=[callback]))
    assert restored_callbacks(tuner) == [callback]


def own_daemons() -> set[str]:
    """Ray's monitor scripts among this process's own children (the fixture's local Ray)."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:  # exited meanwhile (a zombie until Ray reaps it)
            continue
        found |= {name for name in ("log_monitor.py", "monitor.py") if f"/{name}" in cmdline}
    return found


@pytest.mark.usefixtures("ray_local")
def test_stop_local_daemons() -> None:
    before = own_daemons()
    stopped = stop_local_daemons()
    assert set(stopped) == {"monitor", "log_monitor"}
    assert before - own_daemons() == before  # whichever were running are gone


# --------------------------------------------------------------------------- ASHA's resume step


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


def test_loopback_node_turns_ray_clusters_off_for_one_start() -> None:
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    with loopback_node():
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert before == ray_constants.ENABLE_RAY_CLUSTER


class _NoState(tune.search.Searcher):
    def suggest(self, trial_id: str) -> dict:
        return {}

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(b"")

    def restore(self, checkpoint_path: str) -> None:
        pass


def test_extend_search_raises_the_count_ray_restores(tmp_path: Path) -> None:
    from ray.tune.experiment import Experiment
    from ray.tune.search import SearchGenerator

    generator = SearchGenerator(_NoState(metric="val_loss", mode="min"))
    generator.add_configurations([Experiment("x", lambda config: None, num_samples=2)])
    generator._counter, generator._finished = 2, True  # as a searcher that said FINISHED
    generator.save_to_dir(str(tmp_path), session_str="2025-01-01_00-00-00")
    assert generator.is_finished()

    assert extend_search(tmp_path, 5) == 2

    restored = SearchGenerator(_NoState(metric="val_loss", mode="min"))
    restored.restore_from_dir(str(tmp_path))
    assert restored.total_samples == 5 and not restored.is_finished()


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


def test_an_ended_trial_keeps_its_averages_not_their_windows() -> None:
    from ray.tune.experiment import Trial

    trial = Trial("trainable", stub=True)
    for step, value in enumerate([0.9, 0.5, 0.4], start=1):
        trial.run_metadata.update_metric("val_loss", value, step=step)
    before = len(trial.run_metadata.get_json_state())
    release_ended_trial(trial)
    assert trial.run_metadata.metric_n_steps == {}
    assert trial.run_metadata.metric_analysis["val_loss"]["last-5-avg"] == pytest.approx(0.6)
    assert len(trial.run_metadata.get_json_state()) < before
    release_ended_trial(SimpleNamespace(trial_id="a stand-in"))  # nothing to release
