"""A study run on Ray Tune: the Tuner with its trainable, Optuna searcher, scheduler, stoppers
and callbacks (the journal's recorder, MLflow's tracking), started new or restored, then its end:
the trials ranked, saved and reported, the finalists re-run, MLflow's runs closed, the results
folder uploaded. `tuner.driver.study` prepares it and holds the Ray it runs on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from dashboards.render import write_report
from trainables import metrics as m
from trainables.data import DataOptions
from trainables.data_parallel import DRIVER_RESOURCES, train_data_parallel
from trainables.loop import TrainingOptions
from trainables.plugins import PluginCode
from trainables.trainable import TrialSettings, train_trial
from tuner.cluster.redaction import redact
from tuner.cluster.storage import (
    StagingMirror,
    StudyFolder,
    restoring_into,
    upload,
)
from tuner.driver import phases
from tuner.driver.finalist_runs import FinalistRuns, run_finalists
from tuner.driver.gpu_shares import OutOfMemoryRetry, SharePlanner, planner_of
from tuner.driver.interrupts import (
    ctrl_c_restored,
    fail_asked_trials,
    finishing_first,
)
from tuner.driver.journal import JOURNAL_FILE, read_journal
from tuner.driver.optuna_storage import optuna_storage
from tuner.driver.placement import (
    training_options,
)
from tuner.driver.preparation import PreparedStudy
from tuner.driver.progress import LiveProgress, StudyRecorder, trial_dirname
from tuner.driver.results_folder import (
    first_line,
    publish,
)
from tuner.driver.samplers import make_sampler
from tuner.driver.schedulers import make_scheduler
from tuner.driver.searcher import TruthfulOptunaSearch
from tuner.driver.stoppers import (
    OverfitStopper,
    StudyStop,
    stop_reason,
)
from tuner.errors import StudyError
from tuner.internals.optuna_internals import SoleWriterCache
from tuner.internals.ray_internals import (
    restored_callbacks,
    waiting_for_its_function,
)
from tuner.results import outcomes
from tuner.results.dashboard_data import REPORT_FILE, from_study
from tuner.results.summary import best_config, param_importances, save_results, study_note
from tuner.results.trials import StudyResult, trials_table
from tuner.spec.job_spec import (
    JobSpec,
)
from tuner.spec.spaces import SearchSpace
from tuner.tracking import schema
from tuner.tracking.buffer import is_transient
from tuner.tracking.inputs import dataset_inputs
from tuner.tracking.mlflow_callback import RUN_IDS_FILE, MlflowTracking
from tuner.tracking.runs import client_for, refused_access
from tuner.tracking.study_run import (
    finish_parent_run,
    log_finalists,
    start_parent_run,
    tag_pareto,
)

#: how long a stopped data-parallel trial is given to stop its workers (`trainables.data_parallel`:
#: after the epoch they are in) before Tune ends its actor
WORKERS_GRACE_S = 60.0
DRAIN_AT_END_S = 30.0  # how long a finished study waits for an unreachable MLflow server
log = logging.getLogger(__name__)


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
        workers=spec.resources.workers,
        placement=spec.resources.placement,
        gpus=spec.resources.largest_gpu,
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
    if spec.resources.workers > 1 and trainable is train_trial:  # Ray Train holds the workers'
        function = tune.with_parameters(train_data_parallel, data=data, settings=settings)
        patient = waiting_for_its_function(function, WORKERS_GRACE_S)
        return tune.with_resources(patient, dict(DRIVER_RESOURCES))
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
                max_concurrent_trials=prepared.max_concurrent,
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
            with finishing_first():  # the fit is over: a Ctrl-C now lets the end be written
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
            # the handler from before comes back last, after the live line's end
            with ctrl_c_restored(), self.progress or contextlib.nullcontext():
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
                self.close_runs_killed()
            failing.join()
            raise

    def close_runs_killed(self) -> None:
        """After Ctrl-C, `tuner stop` or a crash: the parent run KILLED first (the study's
        status, and Ray kills a stopped job's driver `jobs.STOP_WAIT_S` after SIGTERM), then
        every trial's run, its queued writes first; a write that fails here is logged, not
        raised over what stopped the study."""
        writer = self.tracking.writer
        writer.set_terminated(self.parent_run_id, status="KILLED")
        try:
            self.tracking.close_open_runs("KILLED")
        except Exception as exc:
            log.warning("MLflow: the trials' runs could not all be closed: %s", first_line(exc))
        finally:
            writer.drain_until(DRAIN_AT_END_S)

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
            max_concurrent=self.prepared.max_concurrent,
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
