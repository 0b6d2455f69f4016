"""Builds and runs a study: spec -> data and space -> Ray Tune (Optuna searcher + ASHA) -> results.

Everything that can be wrong with a spec is found in `prepare`, before Ray starts. The dataset is
loaded once on the driver and reaches every trial through the object store.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import ray
import yaml
from ray import tune

from dashboards.render import write_report
from trainables import metrics as m
from trainables.data import DataOptions
from trainables.loop import TrainingOptions
from trainables.memory import GIB
from trainables.plugins import PluginCode
from trainables.trainable import TrialSettings, train_trial
from tuner.cluster.redaction import redact
from tuner.cluster.storage import (
    StagingMirror,
    StudyFolder,
    restoring_into,
    study_folder,
    upload,
)
from tuner.driver import phases
from tuner.driver.finalist_runs import FinalistRuns, run_finalists
from tuner.driver.gpu_shares import OutOfMemoryRetry, SharePlanner, planner_of
from tuner.driver.interrupts import (
    ctrl_c_restored,
    fail_asked_trials,
    finishing_first,
    resumable,
)
from tuner.driver.journal import JOURNAL_FILE, append_event, read_journal
from tuner.driver.optuna_storage import claim_execution, open_optuna_storage, optuna_storage
from tuner.driver.placement import (
    PROBE_TIMEOUT_S,
    alive_nodes,
    check_fits_one_node,
    plan_gpu_memory,
    training_options,
)
from tuner.driver.preparation import PreparedStudy, prepare
from tuner.driver.progress import LiveProgress, StudyRecorder, trial_dirname
from tuner.driver.ray_session import QUIET_RAY, ray_session
from tuner.driver.results_folder import (
    SPEC_FILE,
    find_results,
    first_line,
    publish,
    save_spec,
    study_spec,
)
from tuner.driver.samplers import make_sampler
from tuner.driver.schedulers import make_scheduler
from tuner.driver.searcher import TruthfulOptunaSearch
from tuner.driver.stoppers import (
    SEARCH_EXTENDED,
    OverfitStopper,
    StudyStop,
    stop_reason,
)
from tuner.driver.study_log import StudyLog, logs_to_file
from tuner.driver.warm_start import WarmStart, plan_warm_start
from tuner.errors import SpecError, StudyError
from tuner.internals.optuna_internals import SoleWriterCache
from tuner.internals.ray_internals import (
    align_search_count,
    extend_search,
    restored_callbacks,
)
from tuner.results import outcomes
from tuner.results.dashboard_data import REPORT_FILE, from_study
from tuner.results.summary import best_config, param_importances, save_results, study_note
from tuner.results.trials import StudyResult, trials_table
from tuner.spec.job_spec import (
    JobSpec,
    parse_override,
    read_yaml_file,
    show,
)
from tuner.spec.spaces import SearchSpace
from tuner.tracking import schema
from tuner.tracking.buffer import HTTP_SETTINGS, is_transient
from tuner.tracking.inputs import dataset_inputs
from tuner.tracking.mlflow_callback import RUN_IDS_FILE, MlflowTracking
from tuner.tracking.runs import client_for, refused_access
from tuner.tracking.study_run import (
    finish_parent_run,
    log_finalists,
    start_parent_run,
    tag_pareto,
)

LOG_FILE = "tuner.log"
DRAIN_AT_END_S = 30.0  # how long a finished study waits for an unreachable MLflow server


# --------------------------------------------------------------------------- Ray


def check_cluster_resources(spec: JobSpec) -> None:
    """Refuse a trial size no node can place (a trial runs on one node), instead of pending
    forever."""
    check_fits_one_node(spec.resources.cpu, spec.resources.largest_gpu, alive_nodes(ray.nodes()))


def place_trials(prepared: PreparedStudy) -> TrainingOptions:
    """Check that trials fit a node, and as many as share a GPU fit its memory; the options
    trials train with (where the data lives decided here). Prints what it could not check."""
    spec = prepared.spec
    check_cluster_resources(spec)
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


def make_searcher(
    spec: JobSpec,
    space: SearchSpace,
    execution: str,
    journal: Path | None = None,
    points: list[dict[str, Any]] | None = None,
) -> TruthfulOptunaSearch:
    """The Optuna searcher; `points` (a warm start) are enqueued as Optuna's first trials."""
    search = spec.search
    study_stop = None
    budgets = (search.time_budget_s, search.patience_trials, search.gpu_hours_budget)
    if any(b is not None for b in budgets):
        study_stop = StudyStop(
            spec.objective.metric,
            spec.objective.mode,
            search.time_budget_s,
            search.patience_trials,
            journal,
            gpu_hours_budget=search.gpu_hours_budget,
        )
    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    return TruthfulOptunaSearch(
        space,
        metric=metrics if spec.multi_objective else metrics[0],
        mode=modes if spec.multi_objective else modes[0],
        points_to_evaluate=points or None,
        sampler=make_sampler(spec.search.algorithm, spec.search.seed),
        storage=SoleWriterCache(optuna_storage(spec.search.storage)),
        study_name=execution,
        max_epochs=spec.scheduler.max_epochs,
        study_stop=study_stop,
    )


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
    prepared = prepare(spec)
    phases.reached(phases.PREPARED)
    with (
        study_environment(None, spec) as log,
        ThreadPoolExecutor(1, thread_name_prefix="stores") as beside_ray,
    ):
        stores = beside_ray.submit(ready_stores, spec, prepared)  # while Ray starts: seconds
        with ray_session(address, num_cpus):
            phases.reached(phases.RAY_STARTED)
            prepared.warm_start = stores.result()
            for line in prepared.warm_start.lines() if prepared.warm_start else []:
                print(line)
            training = place_trials(prepared)
            return run_new_study(prepared, log, show_progress, trainable, training)


def ready_stores(spec: JobSpec, prepared: PreparedStudy) -> WarmStart | None:
    """Connect to Optuna's storage and MLflow's store (each creates its tables in a new
    database, a second or two on a small machine, which `run_study` spends while Ray starts),
    and plan the warm start from an earlier study in them."""
    open_optuna_storage(spec)
    warm_start = plan_warm_start(spec, prepared.space)
    if spec.tracking.enabled:
        check_tracking(spec)
    phases.reached(phases.STORES_READY)
    return warm_start


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
    results_path = folder.local
    log.write_to(results_path / LOG_FILE)
    save_spec(spec, prepared.plugins, results_path)
    publish(folder)  # a remote study's spec and plug-ins are in the bucket before any trial
    with resumable(spec, folder):
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
    if extended is not None:
        extend_study(results_path, extended)
    created, aligned = align_search_count(results_path)
    if extended is not None or created != aligned:
        upload(folder)  # Ray restores a remote study from its URI: the new counts go there
    with (
        study_environment(results_path, prepared.spec),
        ray_session(address, num_cpus),
    ):
        training = place_trials(prepared)
        with resumable(spec, folder):
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


def check_tracking(spec: JobSpec) -> None:
    """An unreachable MLflow server refuses the study before anything is claimed or trained."""
    with unreachable_tracking(spec):
        client_for(spec.tracking.uri).search_experiments(max_results=1)


@contextlib.contextmanager
def unreachable_tracking(spec: JobSpec) -> Iterator[None]:
    """A transient error from the tracking store, as the StudyError that says what to do."""
    try:
        yield
    except Exception as exc:
        refusal = refused_access(exc, spec.tracking.uri)
        if refusal is not None:
            raise refusal from None
        if not is_transient(exc):
            raise
        raise StudyError(
            f"tracking.uri: the MLflow server at {redact(spec.tracking.uri)} cannot be reached "
            f"({first_line(exc)}); start it, point tracking.uri elsewhere, or set "
            "tracking.enabled: false"
        ) from None


def open_tracking(
    spec: JobSpec,
    execution: str,
    results_path: Path | str,
    plugins: tuple[PluginCode, ...] = (),
    inputs: list[dict] = (),
) -> tuple[str, str]:
    """The study's MLflow experiment and parent run; an unreachable server fails the study here,
    before any training (mid-study outages are buffered instead)."""
    with unreachable_tracking(spec):
        client = client_for(spec.tracking.uri)
        return start_parent_run(client, spec, execution, results_path, plugins, inputs)


def trial_settings(
    spec: JobSpec,
    training: TrainingOptions | None = None,
    plugins: tuple[PluginCode, ...] = (),
) -> TrialSettings:
    """What every trial of the study shares; `training` as `place_trials` decided (default: the
    spec's, data on the device); the plug-ins `prepare` imported."""
    return TrialSettings(
        model=spec.model,
        max_epochs=spec.scheduler.max_epochs,
        seed=spec.search.seed,
        cpus=spec.resources.cpu,
        training=training or training_options(spec),
        plugins=plugins,
        measure_latency=any(o.metric == m.INFERENCE_MS for o in spec.objectives),
        loop=spec.loop,
        required_metrics=tuple(o.metric for o in spec.objectives),
        retry_out_of_memory=spec.resources.auto_gpu,
    )


def make_trainable(
    prepared: PreparedStudy,
    trainable: Callable[..., None] = train_trial,
    training: TrainingOptions | None = None,
    with_test: bool = False,
):
    """The function trainable with its data (object store, once), its resources and its
    settings. The search's data holds no test split; the finalists' (`with_test`) does. With
    `resources.gpu: auto` the resources are a function of each trial's config (`SharePlanner`)."""
    spec = prepared.spec
    settings = trial_settings(spec, training, prepared.plugins)
    data = prepared.dataset if with_test else prepared.dataset.without_test()
    resources: Any = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if spec.resources.auto_gpu and prepared.gpu_memory is not None:
        resources = SharePlanner(spec, prepared.dataset, settings.training, prepared.gpu_memory)
    elif spec.resources.auto_gpu:  # not placed (`place_trials` refuses auto without a memory)
        resources["gpu"] = spec.resources.largest_gpu
    return tune.with_resources(
        tune.with_parameters(trainable, data=data, settings=settings), resources
    )


def watch_peaks(trainable: Any, recorder: StudyRecorder) -> SharePlanner | None:
    """`gpu: auto`: the planner corrects its estimates by the peaks the recorder sees; the
    study keeps it (Ray's copies of it find it by id only while it lives)."""
    planner = planner_of(trainable)
    if planner is not None:
        planner.recorder = recorder
    return planner


class StudyRun:
    """One execution of a study: the Tuner, its recorder and its tracking callback."""

    def __init__(
        self,
        prepared: PreparedStudy,
        folder: StudyFolder,
        tuner: tune.Tuner,
        recorder: StudyRecorder,
        tracking: MlflowTracking | None,
        show_progress: bool,
        trainable: Callable[..., None] = train_trial,
        training: TrainingOptions | None = None,
    ):
        self.prepared, self.spec = prepared, prepared.spec
        self.trainable, self.training = trainable, training  # the finalists train the same way
        self.finalist_runs: FinalistRuns | None = None
        self.folder, self.results_path = folder, folder.local
        self.execution = folder.local.name
        self.tuner, self.recorder, self.tracking = tuner, recorder, tracking
        self.progress = (
            LiveProgress(self.spec.name, self.spec.search.num_samples, self.spec.scheduler.name)
            if show_progress
            else None
        )
        recorder.on_change = self.progress.update if self.progress else None
        self.started = time.monotonic()
        self.planner: SharePlanner | None = None  # `gpu: auto`'s, kept alive while the study runs

    @property
    def parent_run_id(self) -> str | None:
        return self.tracking.parent_run_id if self.tracking else None

    @classmethod
    def start(
        cls,
        prepared: PreparedStudy,
        execution: str,
        folder: StudyFolder,
        show_progress: bool,
        trainable: Callable[..., None] = train_trial,
        training: TrainingOptions | None = None,
    ) -> StudyRun:
        spec = prepared.spec
        results_path = folder.local
        journal = results_path / JOURNAL_FILE
        overfit = spec.scheduler.stop_on_overfit
        stopper = (
            OverfitStopper(overfit.patience, overfit.min_delta, journal=journal)
            if overfit
            else None
        )
        recorder = StudyRecorder(
            spec.objective.metric, spec.objective.mode, spec.scheduler.max_epochs, journal
        )
        tracking = None
        if spec.tracking.enabled:
            # described once per study (a hash of the arrays), logged on the parent and each trial
            inputs = dataset_inputs(prepared.dataset, DataOptions(**spec.dataset.model_dump()))
            experiment_id, parent_id = open_tracking(
                spec, execution, folder.location, prepared.plugins, inputs
            )
            tracking = MlflowTracking(
                spec,
                recorder,
                parent_id,
                experiment_id,
                results_path / RUN_IDS_FILE,
                background=True,
                inputs=inputs,
            )
            if prepared.warm_start:
                tracking.writer.set_tag(parent_id, schema.WARM_START_TAG, prepared.warm_start.tag())
        trainable_with_resources = make_trainable(prepared, trainable, training)
        planner = watch_peaks(trainable_with_resources, recorder)
        tuner = tune.Tuner(
            trainable_with_resources,
            tune_config=tune.TuneConfig(
                metric=spec.objective.metric,
                mode=spec.objective.mode,
                search_alg=make_searcher(
                    spec,
                    prepared.space,
                    execution,
                    journal,
                    prepared.warm_start.points if prepared.warm_start else None,
                ),
                scheduler=make_scheduler(spec.scheduler, journal),
                num_samples=spec.search.num_samples,
                max_concurrent_trials=spec.search.max_concurrent,
                reuse_actors=True,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=execution,
                storage_path=spec.storage,
                stop=stopper,
                failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
                # 2, not 1: Ray's saved experiment state can lag one checkpoint behind a trial;
                # keeping one deleted the file a restore then asked for
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[recorder]
                + ([OutOfMemoryRetry()] if spec.resources.auto_gpu else [])
                + ([tracking] if tracking else [])
                + ([StagingMirror(results_path)] if folder.uri else []),
                verbose=0,
                log_to_file=True,
            ),
        )
        run = cls(prepared, folder, tuner, recorder, tracking, show_progress, trainable, training)
        run.planner = planner
        return run

    @classmethod
    def restore(
        cls,
        prepared: PreparedStudy,
        folder: StudyFolder,
        show_progress: bool,
        training: TrainingOptions | None = None,
    ) -> StudyRun:
        """Ray restores the Tuner with the callbacks it pickled when the study started; they
        replay the journal and reload the MLflow run ids themselves (see their __setstate__),
        from the folder the study is in now."""
        trainable = make_trainable(prepared, training=training)
        with restoring_into(folder.local):
            known = {t.trial_id for t in tune.ExperimentAnalysis(folder.location).trials}
            tuner = tune.Tuner.restore(
                folder.location,
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
            )
        callbacks = restored_callbacks(tuner)
        recorder = next(c for c in callbacks if isinstance(c, StudyRecorder))
        planner = watch_peaks(trainable, recorder)
        tracking = next((c for c in callbacks if isinstance(c, MlflowTracking)), None)
        unknown = set(recorder.trials) - known
        recorder.forget(unknown)
        if tracking:
            tracking.writer.update_run(tracking.parent_run_id, status="RUNNING")
            recorder.forget_unseen(tracking.claim_orphans() - unknown)
            if prepared.spec.search.num_samples > tracking.spec.search.num_samples:  # extended
                tracking.writer.set_tag(
                    tracking.parent_run_id,
                    schema.EXTENDED_TAG,
                    str(prepared.spec.search.num_samples),
                )
            tracking.supersede(unknown)
            tracking.reconcile()
        run = cls(prepared, folder, tuner, recorder, tracking, show_progress, training=training)
        run.planner = planner
        return run

    def run(self) -> StudyResult:
        """Fit (and re-run the finalists), then rank, save, report and close the MLflow runs;
        a remote study's files are uploaded last."""
        try:
            self.fit()
            trials = trials_table(self.recorder.trials.values(), self.spec)
            interrupted = self.interrupted()
            if interrupted:
                self.fail_asked_trials()
            if self.spec.selection is not None and not interrupted:
                with ctrl_c_restored():
                    self.guarded(lambda: self.run_finalists(trials))
        except BaseException:
            with contextlib.suppress(Exception):
                upload(self.folder)
            raise
        phases.reached(phases.TRIALS_DONE)
        with finishing_first():
            return self.conclude(trials, interrupted)

    def conclude(self, trials: pd.DataFrame, interrupted: bool) -> StudyResult:
        """Rank, save, report, close the MLflow runs and upload: the end of `run`."""
        result = StudyResult(
            self.spec,
            self.execution,
            self.results_path,
            trials,
            time.monotonic() - self.started,
            self.parent_run_id,
            interrupted=interrupted,
            finalists=self.finalist_runs.finalists if self.finalist_runs else None,
            results_uri=self.folder.uri,
            stop_reason=self.stop_reason(),
        )
        save_results(result)
        importances = param_importances(result, self.prepared.space)
        report = write_report(
            from_study(
                self.spec,
                self.execution,
                trials,
                self.recorder,
                importances,
                result.finalists.table if result.finalists is not None else None,
            ),
            self.results_path / REPORT_FILE,
        )
        phases.reached(phases.RESULTS_WRITTEN)
        self.finish(result, importances, report)
        publish(self.folder)
        phases.reached(phases.ENDED)
        return result

    def fit(self) -> None:
        """Run every trial; on Ctrl-C or a crash, leave no MLflow run RUNNING."""

        def fit() -> None:
            with self.progress or contextlib.nullcontext(), ctrl_c_restored():
                phases.reached(phases.TRIALS_LAUNCHED)
                self.tuner.fit()

        self.guarded(fit)

    def guarded(self, work: Callable[[], None]) -> None:
        """Run `work`; on Ctrl-C or a crash, leave no Optuna trial or MLflow run RUNNING."""
        try:
            work()
        except BaseException:
            # side by side: Ray kills a stopped job soon after SIGTERM (jobs.STOP_WAIT_S)
            failing = threading.Thread(target=self.fail_asked_trials, name="optuna-fail")
            failing.start()
            if self.tracking:
                self.tracking.close_open_runs("KILLED")
                self.tracking.writer.set_terminated(self.parent_run_id, status="KILLED")
                self.tracking.writer.drain_until(DRAIN_AT_END_S)
            failing.join()
            raise

    def fail_asked_trials(self) -> None:
        """Optuna's trials this study asked for and will not tell: FAIL (`interrupts`)."""
        with contextlib.suppress(Exception):  # the study's end must not fail on it
            fail_asked_trials(self.spec.search.storage, self.execution)

    def run_finalists(self, trials: pd.DataFrame) -> None:
        """Train the best trials again with new seeds (`selection`), on this study's cluster."""
        self.finalist_runs = run_finalists(
            self.spec,
            make_trainable(self.prepared, self.trainable, self.training, with_test=True),
            self.folder.location,
            trials,
            {t.trial_id: t.config for t in self.recorder.trials.values()},
            self.tracking.run_ids if self.tracking else {},
            announce=self.progress is not None,
        )

    def interrupted(self) -> bool:
        """Ray Tune returns normally after Ctrl-C; unfinished or unstarted trials tell (unless
        the time budget or patience stopped the search)."""
        trials = self.recorder.trials.values()
        unfinished = any(t.status is None for t in trials)
        unstarted = len(trials) < self.spec.search.num_samples
        return unfinished or (unstarted and self.search_stopped() is None)

    def search_stopped(self) -> str | None:
        """time_budget or patience when either stopped the search (the searcher journals it)."""
        return stop_reason(read_journal(self.results_path / JOURNAL_FILE))

    def stop_reason(self) -> str:
        """Why the study ended: completed, time_budget, patience or interrupted."""
        if self.interrupted():
            return outcomes.INTERRUPTED
        return self.search_stopped() or outcomes.COMPLETED

    def finish(
        self, result: StudyResult, importances: dict[str, float] | None, report: Path
    ) -> None:
        """Close the parent run with the results table, best config, importances, dashboard."""
        if not self.tracking:
            return
        writer = self.tracking.writer
        self.tracking.close_open_runs("KILLED")
        note = study_note(result, report.name)
        config = best_config(result)
        finish_parent_run(writer, self.parent_run_id, result, config, importances, note)
        tag_pareto(writer, self.tracking.run_ids, result.trials)
        if result.finalists is not None:
            log_finalists(
                writer,
                self.tracking.experiment_id,
                self.parent_run_id,
                self.spec,
                result.finalists,
                self.finalist_runs.curves if self.finalist_runs else {},
            )
        writer.set_tag(self.parent_run_id, schema.STOP_REASON_TAG, result.stop_reason)
        writer.log_artifact(self.parent_run_id, report)
        writer.set_terminated(
            self.parent_run_id, status="KILLED" if result.interrupted else "FINISHED"
        )
        if not writer.drain_until(DRAIN_AT_END_S):
            result.tracking_buffered = len(writer.queue)


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
