"""Each use of Ray's private API (tuner/internals/ray_internals.py) against the installed Ray:
when Ray changes, the test of the function that broke names it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tests.helpers import printed_json, save_ray_trials
from tuner.internals.ray_internals import (
    IDLE_DAEMONS,
    align_search_count,
    asha_objective,
    asha_rungs,
    completed_trials,
    extend_search,
    held_resources,
    loopback_node,
    no_sigterm_warning_off_the_main_thread,
    optuna_study,
    optuna_trials,
    release_ended_trial,
    requeue_saved_trials,
    resources_of,
    restored_callbacks,
    retry_last_time,
    saved_trial_ids,
    saved_trial_statuses,
    without_idle_daemons,
)

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


#: a local Ray's daemons by what their command line runs
DAEMON_SCRIPTS = {
    "monitor": "/autoscaler/_private/monitor.py",
    "log_monitor": "/_private/log_monitor.py",
    "dashboard": "/dashboard/dashboard.py",
    "raylet": "/raylet",
    "gcs_server": "/gcs_server",
}

#: a local Ray started as a study starts it, in a fresh process; its daemons, found by script
LEAN_RAY = """
import json, psutil, ray
from tuner.driver.ray_session import ray_session

with ray_session(num_cpus=1):
    assert ray.get(ray.remote(lambda: 7).remote()) == 7
    print("CMDLINES", json.dumps([" ".join(p.cmdline()) for p in psutil.Process().children(True)]))
"""


@pytest.mark.integration  # a local Ray started in its own process
def test_a_local_ray_starts_without_its_idle_daemons(tmp_path: Path) -> None:
    from ray._private.node import Node

    originals = {name: getattr(Node, name) for name in IDLE_DAEMONS}
    cmdlines = printed_json(LEAN_RAY, "CMDLINES", tmp_path)
    running = {
        name for name, script in DAEMON_SCRIPTS.items() if any(script in c for c in cmdlines)
    }
    assert running == {"raylet", "gcs_server"}, cmdlines
    with without_idle_daemons():
        assert all(getattr(Node, name)(None) is None for name in IDLE_DAEMONS)
    assert {name: getattr(Node, name) for name in IDLE_DAEMONS} == originals


def test_loopback_node_turns_ray_clusters_off_for_one_start() -> None:
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    with loopback_node():
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert before == ray_constants.ENABLE_RAY_CLUSTER


def test_the_sigterm_warning_of_ray_init_off_the_main_thread_is_dropped() -> None:
    """Ray's `init` says, on its module's logger, that it set no SIGTERM handler off the main
    thread: that logger and message are what the filter drops, and nothing else."""
    import inspect
    import logging

    from ray._private import worker

    assert worker.logger.name == "ray._private.worker"
    assert '"SIGTERM handler is not set because' in inspect.getsource(worker.init)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    worker.logger.addHandler(handler)
    try:
        with no_sigterm_warning_off_the_main_thread():
            worker.logger.warning("SIGTERM handler is not set because current thread is ...")
            worker.logger.warning("another warning")
        worker.logger.warning("SIGTERM handler is not set, outside")
    finally:
        worker.logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == [
        "another warning",
        "SIGTERM handler is not set, outside",
    ]


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


@pytest.mark.parametrize("saved_trials", [2, 4])
def test_align_search_count_counts_the_trials_ray_saved(tmp_path: Path, saved_trials: int) -> None:
    from ray.tune.experiment import Experiment
    from ray.tune.search import SearchGenerator

    generator = SearchGenerator(_NoState(metric="val_loss", mode="min"))
    generator.add_configurations([Experiment("x", lambda config: None, num_samples=5)])
    generator._counter = 3  # three trials created when the generator was saved
    generator.save_to_dir(str(tmp_path), session_str="2025-01-01_00-00-00")
    save_ray_trials(tmp_path, [f"t{n}" for n in range(saved_trials)])

    assert saved_trial_ids(tmp_path) == [f"t{n}" for n in range(saved_trials)]
    assert align_search_count(tmp_path) == (3, saved_trials)

    restored = SearchGenerator(_NoState(metric="val_loss", mode="min"))
    restored.restore_from_dir(str(tmp_path))
    assert restored._counter == saved_trials and not restored.is_finished()


def test_a_requeued_trial_is_restored_pending_and_takes_new_results(tmp_path: Path) -> None:
    """A finished trial whose windows `release_ended_trial` dropped, marked to run again: Ray's
    own loader restores it PENDING, and a new result updates its averages (Ray raised KeyError
    'epoch' on a finished trial's released windows)."""
    import json

    from ray.tune.experiment import Trial

    finished = Trial("trainable", stub=True, trial_id="done")
    for step, value in enumerate([0.9, 0.5], start=1):
        finished.run_metadata.update_metric("epoch", step, step=step)
        finished.run_metadata.update_metric("val_loss", value, step=step)
    finished.set_status(Trial.TERMINATED)
    release_ended_trial(finished)
    other = Trial("trainable", stub=True, trial_id="other")
    for saved in (finished, other):
        saved.create_placement_group_factory()  # as Ray does before it saves a trial
    other.set_status(Trial.TERMINATED)
    state = {"trial_data": [list(t.get_json_state()) for t in (finished, other)]}
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))

    assert saved_trial_statuses(tmp_path) == {"done": "TERMINATED", "other": "TERMINATED"}
    assert requeue_saved_trials(tmp_path, {"done", "unknown"}) == ["done"]
    assert saved_trial_statuses(tmp_path) == {"done": "PENDING", "other": "TERMINATED"}
    assert saved_trial_ids(tmp_path) == ["done", "other"]

    trial_json, metadata_json = json.loads(
        (tmp_path / "experiment_state-2026-01-01_00-00-00.json").read_text()
    )["trial_data"][0]
    restored = Trial.from_json_state(trial_json, stub=True)
    restored.restore_run_metadata(metadata_json)
    assert restored.status == Trial.PENDING
    restored.run_metadata.update_metric("val_loss", 0.4, step=3)
    assert restored.run_metadata.metric_analysis["val_loss"]["last"] == pytest.approx(0.4)
    assert requeue_saved_trials(tmp_path / "empty", {"done"}) == []


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


def test_a_pending_trial_s_resources_grow_and_its_retry_becomes_its_last() -> None:
    from ray.tune.experiment import Trial

    trial = Trial(
        "trainable",
        stub=True,
        placement_group_factory=tune.PlacementGroupFactory([{"CPU": 1, "GPU": 0.25}]),
        max_failures=3,
    )
    trial.create_placement_group_factory()  # as Ray does once the trial's config is resolved
    assert held_resources(trial) == {"CPU": 1, "GPU": 0.25}
    trial.run_metadata.num_failures = 1
    retry_last_time(trial, {"cpu": 1, "gpu": 0.5})
    assert held_resources(trial) == {"CPU": 1, "GPU": 0.5}
    assert trial.max_failures == 1  # the failure so far: this retry is the last
    retry_last_time(trial)  # resources kept
    assert held_resources(trial) == {"CPU": 1, "GPU": 0.5}


def test_the_resources_with_resources_attached_are_found_again() -> None:
    def planner(config: dict) -> tune.PlacementGroupFactory:
        return tune.PlacementGroupFactory([{"CPU": 1}])

    def train(config: dict) -> None: ...

    wrapped = tune.with_resources(tune.with_parameters(train, data=1), planner)
    assert resources_of(wrapped) is planner
    assert resources_of(train) is None


def test_a_patient_trainable_waits_for_its_function_to_return_on_stop_and_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The class Tune would make of the function, its stop and reset waiting (here up to 5 s)
    for the function's thread, which Tune's own do not: the thread is set to stop as Tune does
    and joined before Tune's cleanup runs."""
    import threading
    import time

    from ray.tune.trainable.function_trainable import FunctionTrainable

    from tuner.internals import ray_internals

    def function(config: dict) -> None: ...

    cls = ray_internals.waiting_for_its_function(function, 5.0)
    assert issubclass(cls, FunctionTrainable)
    ended: list[float] = []
    stop_event = threading.Event()

    def train() -> None:
        stop_event.wait(10)
        time.sleep(0.3)  # what a data-parallel trial's workers take to stop
        ended.append(time.monotonic())

    thread = threading.Thread(target=train)
    thread.start()
    session = SimpleNamespace(
        training_started=True,
        stop_event=stop_event,
        continue_lock=threading.Semaphore(0),
        training_thread=thread,
    )
    monkeypatch.setattr("ray.train._internal.session.get_session", lambda: session)
    monkeypatch.setattr(FunctionTrainable, "cleanup", lambda self: ended.append(-1.0))
    cls.cleanup(object.__new__(cls))
    assert len(ended) == 2 and ended[1] == -1.0  # the function returned before Tune's cleanup
