"""A study from its spec, or resumed from its folder: `run_study` and `resume_study`.

Everything that can be wrong with a spec is found in `prepare` and Optuna's storage, before Ray
starts; then the trials' placement and MLflow's store; only then is the execution's name claimed
and its folder made, and a `StudyRun` (tuner.driver.study_run) runs the trials on Ray Tune. The
dataset is loaded once on the driver and reaches every trial through the object store.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pandas as pd
import ray
import yaml

from trainables.loop import TrainingOptions
from trainables.memory import GIB
from trainables.trainable import train_trial
from tuner.cluster.storage import (
    study_folder,
    upload,
)
from tuner.driver import phases
from tuner.driver.gpu_shares import SharePlanner
from tuner.driver.interrupts import resumable
from tuner.driver.journal import JOURNAL_FILE, append_event, read_journal
from tuner.driver.optuna_storage import claim_execution, open_optuna_storage
from tuner.driver.placement import (
    PROBE_TIMEOUT_S,
    alive_nodes,
    check_trials_fit,
    plan_gpu_memory,
)
from tuner.driver.preparation import PreparedStudy, prepare
from tuner.driver.ray_session import QUIET_RAY, ray_session
from tuner.driver.results_folder import (
    SPEC_FILE,
    find_results,
    publish,
    save_spec,
    study_spec,
)
from tuner.driver.stoppers import (
    SEARCH_EXTENDED,
)
from tuner.driver.study_log import StudyLog, logs_to_file
from tuner.driver.study_run import StudyRun, check_tracking
from tuner.driver.warm_start import plan_warm_start
from tuner.errors import SpecError, StudyError
from tuner.internals.ray_internals import (
    align_search_count,
    extend_search,
    requeue_saved_trials,
    saved_trial_statuses,
)
from tuner.results import outcomes
from tuner.results.trials import StudyResult
from tuner.spec.job_spec import (
    JobSpec,
    parse_override,
    read_yaml_file,
    show,
)
from tuner.tracking.buffer import HTTP_SETTINGS

LOG_FILE = "tuner.log"


# --------------------------------------------------------------------------- Ray


def check_cluster_resources(spec: JobSpec) -> int:
    """Refuse a trial size no node can place (a trial runs on one node; a data-parallel one's
    workers where the cluster can place them), instead of pending forever. Returns how many
    trials may run at once (`placement.check_trials_fit`)."""
    return check_trials_fit(spec, alive_nodes(ray.nodes()))


def place_trials(prepared: PreparedStudy) -> TrainingOptions:
    """Check that trials fit a node, and as many as share a GPU fit its memory; the options
    trials train with (where the data lives decided here). Prints what it could not check."""
    spec = prepared.spec
    prepared.trials_at_once = check_cluster_resources(spec)
    memory, source = None, ""
    if spec.resources.gpu_memory_gb is not None:
        memory, source = int(spec.resources.gpu_memory_gb * GIB), "resources.gpu_memory_gb"
    elif spec.resources.largest_gpu > 0 and spec.loop is None:  # a loop's is not estimated
        memory, source = probe_gpu_memory(spec.resources.largest_gpu), "probed"
    packing = plan_gpu_memory(spec, prepared.space, prepared.dataset, memory, source)
    for note in packing.notes:
        print(note)
    if spec.resources.auto_gpu:  # plan_gpu_memory refused it without a memory
        prepared.gpu_memory = memory
        planner = SharePlanner(spec, prepared.dataset, packing.training, memory)
        for line in planner.lines(prepared.space):
            print(line)
        planner.close()
    return packing.training


def probe_gpu_memory(gpu: float, timeout_s: float = PROBE_TIMEOUT_S) -> int | None:
    """The total memory of a GPU Ray would give a trial (a task asking for `gpu` GPU), or None
    where that task finds no CUDA or does not answer within `timeout_s`."""

    @ray.remote(num_gpus=gpu, num_cpus=0, max_retries=0)
    def total_memory() -> int | None:
        import torch

        return torch.cuda.mem_get_info()[1] if torch.cuda.is_available() else None

    ref = total_memory.remote()
    try:
        return ray.get(ref, timeout=timeout_s)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError):
        ray.cancel(ref, force=True)
        return None


def run_study(
    spec: JobSpec,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    show_progress: bool = True,
    trainable: Callable[..., None] = train_trial,
) -> StudyResult:
    """Run a whole study in the foreground and return its ranked trials. `trainable` has
    `train_trial`'s signature; the scale benchmark passes one that trains nothing."""
    phases.reached(phases.BEGAN)
    prepared = prepare(spec)  # bad input: exit 2 before Ray starts
    phases.reached(phases.PREPARED)
    open_optuna_storage(spec)  # a storage that refuses the spec: exit 2, nothing started
    prepared.warm_start = plan_warm_start(spec, prepared.space)
    phases.reached(phases.OPTUNA_READY)
    for line in prepared.warm_start.lines() if prepared.warm_start else []:
        print(line)
    with (
        study_environment(None, spec) as log,
        ray_session(address, num_cpus, meanwhile=lambda: open_tracking_store(spec)),
    ):
        phases.reached(phases.RAY_STARTED)
        training = place_trials(prepared)
        return run_new_study(prepared, log, show_progress, trainable, training)


def open_tracking_store(spec: JobSpec) -> None:
    """While Ray starts: MLflow's store answers (a new SQLite one is made), or the study is
    refused before anything is claimed."""
    if spec.tracking.enabled:
        check_tracking(spec)
    phases.reached(phases.TRACKING_READY)


def run_new_study(
    prepared: PreparedStudy,
    log: StudyLog,
    show_progress: bool,
    trainable: Callable[..., None],
    training: TrainingOptions,
) -> StudyResult:
    """Claim the execution's name, then run the study on the Ray this process holds."""
    spec = prepared.spec
    # only now, every check passed: a refused run leaves no Optuna study and no folder
    execution = claim_execution(spec)
    folder = study_folder(spec.storage, execution)
    with resumable(spec, folder):  # from the claim on: a Ctrl-C while its folder is written too
        log.write_to(folder.local / LOG_FILE)
        save_spec(spec, prepared.plugins, folder.local)
        publish(folder)  # a remote study's spec and plug-ins are in the bucket before any trial
        study = StudyRun.start(prepared, execution, folder, show_progress, trainable, training)
        return study.run()


def resume_study(
    study: str,
    *,
    overrides: list[str] | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    show_progress: bool = True,
) -> StudyResult:
    """Continue an interrupted study (its results folder or URI, or its name or run id in
    MLflow); `overrides` may only be `search.num_samples=N` with N above the study's count: the
    study is extended to N trials, in the same Ray experiment, Optuna study and MLflow parent
    run."""
    phases.reached(phases.BEGAN)
    folder = find_results(study, tracking_uri)
    results_path = folder.local
    spec = study_spec(results_path)
    extended = extension(spec, overrides or [])
    if extended is not None:
        spec = spec.model_copy(
            update={"search": spec.search.model_copy(update={"num_samples": extended})}
        )
    prepared = prepare(spec)
    open_optuna_storage(prepared.spec)

    def mend_saved_state() -> None:  # while Ray starts
        if extended is not None:
            extend_study(results_path, extended)
        missed = rerun_trials_the_journal_missed(results_path)
        created, aligned = align_search_count(results_path)
        if extended is not None or missed or created != aligned:
            upload(folder)  # Ray restores a remote study from its URI: the new counts go there

    with (
        resumable(spec, folder, resumed=True),  # from Ray's start on
        study_environment(results_path, prepared.spec),
        ray_session(address, num_cpus, meanwhile=mend_saved_state),
    ):
        training = place_trials(prepared)
        run = StudyRun.restore(prepared, folder, show_progress, training)
        return run.run()


def extension(spec: JobSpec, overrides: list[str]) -> int | None:
    """The trial count `tuner resume --set` asks for (None: no --set); anything but a larger
    `search.num_samples` is a SpecError."""
    count = None
    for text in overrides:
        keys, value = parse_override(text)
        if keys != ["search", "num_samples"]:
            raise SpecError(
                f"--set {text}: tuner resume takes only search.num_samples (to add trials to the "
                "study); every other key stays as the study saved it"
            )
        if not isinstance(value, int) or isinstance(value, bool):
            raise SpecError(
                f"--set search.num_samples: must be a whole number of trials but got {show(value)}"
            )
        if value <= spec.search.num_samples:
            raise SpecError(
                f"--set search.num_samples={value}: must be above the study's "
                f"{spec.search.num_samples} trials (resume --set adds trials to a study)"
            )
        count = value
    return count


def extend_study(results_path: Path, num_samples: int) -> None:
    """Let the saved study run up to `num_samples` trials: Ray's saved trial count, the saved
    spec, and a journal event after which `search.patience_trials` counts afresh."""
    extend_search(results_path, num_samples)
    raw = read_yaml_file(results_path / SPEC_FILE, "study spec")
    raw["search"]["num_samples"] = num_samples
    (results_path / SPEC_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    append_event(
        results_path / JOURNAL_FILE,
        {"event": SEARCH_EXTENDED, "num_samples": num_samples, "time": time.time()},
    )


def rerun_trials_the_journal_missed(results_path: Path) -> list[str]:
    """Trials Ray's saved state holds as finished whose end the journal lacks run again.

    A remote study's journal reaches the bucket in the same upload as Ray's state, but an upload
    the next snapshot overlaps can carry a newer state than journal (`StagingMirror`). Ray would
    not run such a trial again and nothing would journal its end or its missing epochs: the
    study would stay one trial short, interrupted at every resume. Marked unfinished, it goes on
    from its last checkpoint like a trial that was running at the crash (the epochs to that
    checkpoint reach the journal and MLflow with its next result); Optuna keeps the verdict it
    was told, if it was told one. Returns the trials marked."""
    statuses = saved_trial_statuses(results_path) or {}
    events = read_journal(results_path / JOURNAL_FILE)
    ended = {e["trial_id"] for e in events if e["event"] == "end"}
    missed = {t for t, status in statuses.items() if status == "TERMINATED"} - ended
    return requeue_saved_trials(results_path, missed)


def snapshot_period_s(num_samples: int) -> float | str:
    """How often Ray saves the experiment state that `tuner resume` restores. Ray's default is
    10 s or more; a trial that starts after the last snapshot runs again on resume, so small
    studies snapshot twice a second. A snapshot costs about half a millisecond per trial (every
    trial's state as JSON), so large studies snapshot less often, keeping it to a few per cent of
    the driver's time (1,000 trials: every 10 s). Beyond 1,000 trials a snapshot takes seconds
    and Ray's "auto" period (19 times the last snapshot's duration, at least 10 s) keeps it to
    5 per cent however many trials have accumulated."""
    if num_samples > 1000:
        return "auto"
    return min(10.0, max(0.5, num_samples / 100))


@contextlib.contextmanager
def study_environment(results_path: Path | None, spec: JobSpec) -> Iterator[StudyLog]:
    """Quiet Ray output, logs to the study's log file (in `results_path`, or where
    `StudyLog.write_to` says once the folder exists), Optuna's experimental warnings off."""
    os.environ.update(QUIET_RAY)
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = str(snapshot_period_s(spec.search.num_samples))
    os.environ.update(HTTP_SETTINGS)
    log_file = results_path / LOG_FILE if results_path is not None else None
    with logs_to_file(log_file) as log, warnings.catch_warnings(), phases.logged():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield log


# --------------------------------------------------------------------------- results


def require_success(result: StudyResult) -> None:
    """An interrupted study, or one where no trial produced a finite objective, failed."""
    if result.interrupted:
        statuses = result.trials["status"] if len(result.trials) else pd.Series(dtype=object)
        done = int((statuses != outcomes.INTERRUPTED).sum())
        raise StudyError(
            f"study {result.spec.name!r} was interrupted after {done} of "
            f"{result.spec.search.num_samples} trials finished; continue it with: "
            f"tuner resume {result.results_uri or result.results_path}"
        )
    if result.best is None:
        errors = result.trials.get("error", pd.Series(dtype=object)).dropna().unique().tolist()
        reason = f"; errors: {errors[:3]}" if errors else ""
        raise StudyError(
            f"study {result.spec.name!r}: none of {len(result.trials)} trials produced a finite "
            f"{result.spec.objective.metric}{reason}. Logs: {result.results_path / LOG_FILE}"
        )
