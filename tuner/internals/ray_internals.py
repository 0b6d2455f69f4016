"""Every use of Ray's private API, one function each (tests/test_ray_internals.py checks each).

Ray has no public way to do these; pyproject pins Ray to the versions they were tested on. When
Ray changes, the test of the function that broke says which one, and only it needs a new body.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

#: the daemons of a local Ray that have no work in a study: the autoscaler monitor (one machine has
#: nothing to autoscale; it also made `ray.shutdown` wait a second for it), the log monitor (it
#: reads every worker's log ten times a second to forward it to a driver that asks for none) and
#: the dashboard's head, which with `include_dashboard=False` serves only usage statistics
IDLE_DAEMONS = ("start_monitor", "start_log_monitor", "start_api_server")


@contextlib.contextmanager
def without_idle_daemons() -> Iterator[None]:
    """Around the start of a local Ray: its `IDLE_DAEMONS` are not started. Each is a Python
    process that imports Ray, about a core-second on a small machine while the GCS, the raylet
    and the agents start too (a local Ray started in 1.8-2.1 s without them against 2.9-4.2 s
    with them, on 2 cores). Ray has no public switch for them: this skips the `Node` methods
    that start them, for this start only."""
    from ray._private.node import Node

    originals = {name: getattr(Node, name) for name in IDLE_DAEMONS}

    def skipped(self: Node, *args: Any, **kwargs: Any) -> None:
        return None

    for name in IDLE_DAEMONS:
        setattr(Node, name, skipped)
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(Node, name, method)


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


@contextlib.contextmanager
def no_sigterm_warning_off_the_main_thread() -> Iterator[None]:
    """Around `ray.init` on a thread other than the main one: Ray then sets no SIGTERM handler
    (the caller sets it) and logs a warning saying so, which would reach the user's terminal.
    That warning comes from Ray's private module `ray._private.worker`'s logger."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SIGTERM handler is not set")

    logger = logging.getLogger("ray._private.worker")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def waiting_for_its_function(trainable: Any, grace_s: float) -> type:
    """Ray Tune's class for the function trainable `trainable`, whose stop (and reset, when Tune
    reuses the actor) waits up to `grace_s` for the function to return. Tune's own waits 0 s
    (2 s on a reset) and then ends the actor: what the function started and is still winding
    down ends with it. A data-parallel trial's Ray Train run is such a thing: cut off, its
    workers' placement group outlives it until Ray Train's PlacementGroupCleaner removes it, and
    that cleaner fails where several Ray instances share a machine (it asks the state API
    without an address), so the next trial's workers would wait for CPUs nobody uses. Given the
    time, the function stops its workers and Ray Train removes the group itself."""
    import threading

    from ray.train._internal import session as sessions
    from ray.tune.trainable.function_trainable import wrap_function

    def wait(self) -> None:
        session = sessions.get_session()
        if session is None or not session.training_started:
            return
        session.stop_event.set()  # as Tune's own stop does: the function's next report exits
        session.continue_lock.release()
        threading.Thread.join(session.training_thread, grace_s)  # only wait: errors are Tune's

    base = wrap_function(trainable)

    def cleanup(self) -> None:
        wait(self)
        base.cleanup(self)

    def reset_config(self, new_config: dict) -> bool:
        wait(self)
        return base.reset_config(self, new_config)

    return type(base.__name__, (base,), {"cleanup": cleanup, "reset_config": reset_config})


def restored_callbacks(tuner) -> list:
    """The callbacks a restored `tune.Tuner` unpickled (Tuner has no public getter)."""
    return tuner._local_tuner.get_run_config().callbacks or []


def release_ended_trial(trial) -> None:
    """Drop what Ray Tune keeps of a TERMINATED trial only to update its running averages: a
    window of the last 5 and 10 values of every metric (about 20 KiB a trial of a study's
    driver memory, kept for every trial; the averages themselves stay). A terminated trial is
    never updated again (unless a resume runs it again: `requeue_saved_trials` clears its
    averages); an errored one may be retried, so is left as it is. Anything without
    Ray's run metadata (a test's stand-in trial) is left alone."""
    metadata = getattr(trial, "run_metadata", None)
    if metadata is not None:
        metadata.metric_n_steps = {}


# --------------------------------------------------------------------------- ASHA


def resources_of(trainable) -> Any:
    """What `tune.with_resources` attached to `trainable`: a dict, a PlacementGroupFactory or a
    function of the config (None: nothing attached). Ray keeps it as a private attribute."""
    return getattr(trainable, "_resources", None)


def held_resources(trial) -> dict[str, float]:
    """What a trial asks Ray for: {"CPU": ..., "GPU": ...} (its placement group's bundle)."""
    return dict(trial.placement_group_factory.required_resources)


def retry_last_time(trial, resources: dict[str, float] | None = None) -> None:
    """A trial Ray is about to retry (`on_trial_recover`): let this retry be its last
    (`max_failures` at the failures so far), asking for `resources` ({"cpu", "gpu"}) when
    given. Ray Tune has no public way to change a pending trial's resources or retries
    (`Trial.update_resources` is marked experimental)."""
    if resources is not None:
        trial.update_resources(resources)
    trial.max_failures = trial.run_metadata.num_failures


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


# ------------------------------------------------------------------------- restoring a saved study


def saved_trial_ids(experiment_dir) -> list[str] | None:
    """The trials a restore of a saved Ray experiment will know: those in its newest experiment
    state file (Ray's own pick, by name); None when the folder has none."""
    saved = saved_trial_statuses(experiment_dir)
    return None if saved is None else list(saved)


def saved_trial_statuses(experiment_dir) -> dict[str, str] | None:
    """Trial id -> the status (PENDING, RUNNING, TERMINATED, ERROR...) of each trial a restore
    of a saved Ray experiment will know; None when the folder has no saved state."""
    import json

    newest = _newest_experiment_state(experiment_dir)
    if newest is None:
        return None
    trials = (json.loads(trial) for trial, _ in json.loads(newest.read_text())["trial_data"])
    return {trial["trial_id"]: trial["status"] for trial in trials}


def requeue_saved_trials(experiment_dir, trial_ids: set[str]) -> list[str]:
    """Mark trials of a saved Ray experiment's newest state file PENDING, whatever their status:
    a restore with `resume_unfinished` runs them again from their last checkpoint, under the
    same id and number. Their running averages start afresh (a finished trial's windows were
    released: `release_ended_trial`). Returns the ids it marked."""
    import json

    newest = _newest_experiment_state(experiment_dir)
    if newest is None or not trial_ids:
        return []
    state = json.loads(newest.read_text())
    marked = []
    for pair in state["trial_data"]:
        trial = json.loads(pair[0])
        if trial["trial_id"] in trial_ids:
            trial["status"] = "PENDING"
            metadata = json.loads(pair[1])
            metadata["metric_analysis"], metadata["metric_n_steps"] = {}, {}
            pair[0], pair[1] = json.dumps(trial), json.dumps(metadata)
            marked.append(trial["trial_id"])
    if marked:
        temporary = newest.with_name(f"tmp-{newest.name}")
        temporary.write_text(json.dumps(state))
        temporary.replace(newest)
    return marked


def _newest_experiment_state(experiment_dir):
    """The experiment state file a restore reads (Ray's own pick: the newest by name)."""
    from pathlib import Path

    from ray.tune.execution.tune_controller import TuneController

    pattern = TuneController.CKPT_FILE_TMPL.format("*")
    files = sorted(Path(experiment_dir).glob(pattern), key=lambda p: p.name)
    return files[-1] if files else None


def extend_search(results_path, num_samples: int) -> int:
    """Let a saved Ray experiment create trials up to `num_samples` in all when it is restored:
    Ray restores its search generator's trial count (`total_samples`) from its newest state
    file, not from the Tuner's config, and a generator whose searcher said FINISHED stays
    finished. Rewrites that file; returns the count it held."""

    def extend(state: dict) -> int:
        before = state["total_samples"]
        state["total_samples"], state["finished"] = num_samples, False
        return before

    return _rewrite_search_state(results_path, extend)


def align_search_count(results_path) -> tuple[int, int]:
    """Make a saved Ray experiment's count of trials created agree with the trials it saved.

    Ray saves the trials and the search generator in two files, and uploads the folder to a
    bucket while it saves again: a driver killed then can leave a bucket whose trials lag its
    generator by one. Restored as it is, Ray counts a trial it never restores as created and
    ends one trial short; the other way round, it creates one trial too many. Rewrites the
    generator's file; returns (count before, count after)."""
    saved = saved_trial_ids(results_path)

    def align(state: dict) -> tuple[int, int]:
        before = state["counter"]
        state["counter"] = before if saved is None else len(saved)
        return before, state["counter"]

    return _rewrite_search_state(results_path, align)


def _rewrite_search_state(results_path, change):
    """Apply `change` to the newest saved state of a Ray search generator; returns its result."""
    import os
    from pathlib import Path

    import ray.cloudpickle as cloudpickle
    from ray.tune.search.search_generator import SearchGenerator
    from ray.tune.utils.util import _atomic_save

    pattern = SearchGenerator.CKPT_FILE_TMPL.format("*")
    newest = max(Path(results_path).glob(pattern), key=lambda p: p.name)  # Ray's own pick
    state = cloudpickle.loads(newest.read_bytes())
    outcome = change(state)
    _atomic_save(state, os.fspath(newest.parent), newest.name, f"tmp-{newest.name}")
    return outcome
