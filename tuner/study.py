"""Builds and runs a study: spec -> data and space -> Ray Tune (Optuna searcher + ASHA) -> results.

Everything that can be wrong with a spec is found in `prepare`, before Ray starts. The dataset is
loaded once on the driver and reaches every trial through the object store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from dashboards.report import write_report
from trainables import metrics as m
from trainables.data import DataOptions, Dataset, DatasetError, load_dataset
from trainables.loop import TrainingRun
from trainables.trainable import TrialSettings, train_trial
from tuner import diagnostics, outcomes
from tuner.errors import SpecError, StudyError
from tuner.progress import LiveProgress, StudyRecorder, trial_dirname
from tuner.report import REPORT_FILE, from_study
from tuner.searcher import TruthfulOptunaSearch
from tuner.spaces import CategoricalParam, SearchSpace, load_space, make_sampler
from tuner.spec import JobSpec
from tuner.stoppers import OverfitStopper
from tuner.summary import param_importances, save_results
from tuner.tracking import (
    RUN_IDS_FILE,
    MlflowTracking,
    client_for,
    finish_parent_run,
    start_parent_run,
)

log = logging.getLogger(__name__)
LOG_FILE = "tuner.log"
#: Tune's own console output off (the live line replaces it); its warnings go to LOG_FILE.
QUIET_RAY = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


@dataclass
class PreparedStudy:
    """A spec with its data loaded and its search space compiled: ready for Ray."""

    spec: JobSpec
    dataset: Dataset
    space: SearchSpace


@dataclass
class StudyResult:
    """What a finished study hands back: its trials ranked by best-epoch objective."""

    spec: JobSpec
    execution: str  # this execution's name: Ray run folder and Optuna study name
    results_path: Path
    trials: pd.DataFrame  # one row per trial, best first
    wall_time_s: float
    parent_run_id: str | None = None  # the MLflow parent run (None with tracking disabled)
    interrupted: bool = False  # stopped by Ctrl-C before every trial finished

    @property
    def best(self) -> pd.Series | None:
        ranked = self.trials.dropna(subset=["best_" + self.spec.objective.metric])
        return None if ranked.empty else ranked.iloc[0]

    def status_counts(self) -> dict[str, int]:
        return self.trials["status"].value_counts().to_dict() if len(self.trials) else {}


# --------------------------------------------------------------------------- before Ray


def prepare(spec: JobSpec) -> PreparedStudy:
    """Load the data, compile the space and build the model once; any problem is a SpecError."""
    try:
        dataset = load_dataset(DataOptions(**spec.dataset.model_dump()))
    except DatasetError as exc:
        raise SpecError(str(exc)) from None
    if spec.objective.metric in m.CLASSIFICATION_ONLY and dataset.task == "regression":
        raise SpecError(
            f"objective.metric: {spec.objective.metric!r} needs a classification dataset, but "
            f"dataset {dataset.name!r} has a regression target; use val_loss"
        )
    space = load_space(spec.search_space, spec.model)
    check_model_builds(spec.model, space, dataset)
    return PreparedStudy(spec, dataset, space)


def check_model_builds(model: str, space: SearchSpace, dataset: Dataset) -> None:
    """Build the model with each categorical choice and constant of the space, on 2 samples."""
    probes: list[dict[str, Any]] = [dict(space.constants)]
    for name, param in space.params.items():
        if isinstance(param, CategoricalParam):
            probes += [{**space.constants, name: choice} for choice in param.choices]
    tiny = Dataset(
        dataset.name,
        dataset.layout,
        dataset.x_train[:2],
        dataset.y_train[:2],
        dataset.x_val[:2],
        dataset.y_val[:2],
        dataset.num_classes,
    )
    for hparams in probes:
        try:
            TrainingRun(model, hparams, tiny).run_epoch()
        except (ValueError, TypeError, RuntimeError) as exc:
            raise SpecError(
                f"search_space: model {model!r} cannot be built on dataset {dataset.name!r} "
                f"with {hparams}: {exc}"
            ) from None


# --------------------------------------------------------------------------- Ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Start a local Ray (or attach to `address`), unless this process already has one."""
    if ray.is_initialized():
        yield
        return
    if address and address.startswith(("http://", "https://")):
        raise SpecError(
            f"--address {address!r} is a Ray Jobs server; `tuner run` needs 'auto' or a "
            "ray://HEAD:10001 address (use `tuner submit` for the Jobs server)"
        )
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(address="local", num_cpus=num_cpus, **quiet)
    try:
        yield
    finally:
        ray.shutdown()


def check_cluster_resources(spec: JobSpec) -> None:
    """Refuse a trial size the cluster cannot place, instead of pending forever."""
    available = ray.cluster_resources()
    cpus, gpus = available.get("CPU", 0), available.get("GPU", 0)
    if spec.resources.gpu > gpus:
        raise SpecError(
            f"resources.gpu: each trial asks for {spec.resources.gpu} GPU but the cluster has "
            f"{gpus:g} GPU (CPU {cpus:g}); set resources.gpu to 0 or run on a GPU cluster"
        )
    if spec.resources.cpu > cpus:
        raise SpecError(
            f"resources.cpu: each trial asks for {spec.resources.cpu:g} CPU but the cluster has "
            f"{cpus:g} CPU"
        )


def make_scheduler(spec: JobSpec) -> TrialScheduler:
    s = spec.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=m.EPOCH,
        max_t=s.max_epochs,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


def make_searcher(
    spec: JobSpec, space: SearchSpace, execution: str, stopper: OverfitStopper | None
) -> TruthfulOptunaSearch:
    storage_url = spec.search.storage
    if storage_url.startswith("sqlite:///"):
        Path(storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return TruthfulOptunaSearch(
        space,
        metric=spec.objective.metric,
        mode=spec.objective.mode,
        sampler=make_sampler(spec.search.algorithm, spec.search.seed),
        storage=optuna.storages.RDBStorage(storage_url),
        study_name=execution,
        max_epochs=spec.scheduler.max_epochs,
        stopped_on_overfit=stopper.has_stopped if stopper else None,
    )


def execution_name(spec: JobSpec) -> str:
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


@contextlib.contextmanager
def logs_to_file(path: Path) -> Iterator[None]:
    """Send Ray's, Optuna's and Python's warnings to the study's log file, not the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(n) for n in ("ray", "optuna", "py.warnings", "tuner")]
    saved = [(lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
    logging.captureWarnings(True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for lg, (handlers, propagate) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
        handler.close()


def run_study(
    spec: JobSpec,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    show_progress: bool = True,
) -> StudyResult:
    """Run a whole study in the foreground and return its ranked trials."""
    prepared = prepare(spec)
    execution = execution_name(spec)
    results_path = Path(spec.storage) / execution
    started = time.monotonic()
    os.environ.update(QUIET_RAY)
    with logs_to_file(results_path / LOG_FILE), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        with ray_session(address, num_cpus):
            check_cluster_resources(spec)
            study = StudyRun(prepared, execution, results_path, show_progress)
            study.fit()
        trials = trials_table(study.recorder, spec)
        result = StudyResult(
            spec,
            execution,
            results_path,
            trials,
            time.monotonic() - started,
            study.parent_run_id,
            interrupted=study.interrupted(),
        )
        save_results(result)
        importances = param_importances(result, prepared.space)
        report = write_report(
            from_study(spec, execution, trials, study.recorder, importances),
            results_path / REPORT_FILE,
        )
        study.finish(result, importances, report)
    return result


class StudyRun:
    """One execution of a study: the recorder, the tracking callback, the Tuner around them."""

    def __init__(
        self, prepared: PreparedStudy, execution: str, results_path: Path, show_progress: bool
    ):
        spec = self.spec = prepared.spec
        self.prepared, self.execution = prepared, execution
        overfit = spec.scheduler.stop_on_overfit
        self.stopper = OverfitStopper(overfit.patience, overfit.min_delta) if overfit else None
        self.progress = LiveProgress(spec.name, spec.search.num_samples) if show_progress else None
        self.recorder = StudyRecorder(
            spec.objective.metric,
            spec.objective.mode,
            spec.scheduler.max_epochs,
            stopped_on_overfit=self.stopper.has_stopped if self.stopper else None,
            on_change=self.progress.update if self.progress else None,
        )
        self.tracking: MlflowTracking | None = None
        self.parent_run_id: str | None = None
        if spec.tracking.enabled:
            client = client_for(spec.tracking.uri)
            experiment_id, self.parent_run_id = start_parent_run(
                client, spec, execution, results_path
            )
            self.tracking = MlflowTracking(
                spec,
                self.recorder,
                self.parent_run_id,
                experiment_id,
                results_path / RUN_IDS_FILE,
            )

    def fit(self) -> None:
        """Run every trial; on Ctrl-C or a crash, leave no MLflow run RUNNING."""
        try:
            with self.progress or contextlib.nullcontext():
                self._tuner().fit()
        except BaseException:
            if self.tracking:
                self.tracking.close_open_runs("KILLED")
                self.tracking.client.set_terminated(self.parent_run_id, status="KILLED")
            raise

    def interrupted(self) -> bool:
        """Ray Tune returns normally after Ctrl-C; unfinished or unstarted trials tell."""
        trials = self.recorder.trials.values()
        unfinished = any(t.status is None for t in trials)
        return unfinished or len(trials) < self.spec.search.num_samples

    def finish(
        self, result: StudyResult, importances: dict[str, float] | None, report: Path
    ) -> None:
        """Close the parent run with the results table, best config, importances, dashboard."""
        if not self.tracking:
            return
        self.tracking.close_open_runs("KILLED")
        finish_parent_run(self.tracking.client, self.parent_run_id, result, importances)
        self.tracking.client.log_artifact(self.parent_run_id, str(report))
        status = "KILLED" if result.interrupted else "FINISHED"
        self.tracking.client.set_terminated(self.parent_run_id, status=status)

    def _tuner(self) -> tune.Tuner:
        spec = self.spec
        settings = TrialSettings(
            model=spec.model,
            max_epochs=spec.scheduler.max_epochs,
            seed=spec.search.seed,
            cpus=spec.resources.cpu,
        )
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, data=self.prepared.dataset, settings=settings),
            {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
        )
        callbacks = [self.recorder] + ([self.tracking] if self.tracking else [])
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=spec.objective.metric,
                mode=spec.objective.mode,
                search_alg=make_searcher(spec, self.prepared.space, self.execution, self.stopper),
                scheduler=make_scheduler(spec),
                num_samples=spec.search.num_samples,
                max_concurrent_trials=spec.search.max_concurrent,
                reuse_actors=True,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=self.execution,
                storage_path=spec.storage,
                stop=self.stopper,
                failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=callbacks,
                verbose=0,
                log_to_file=True,
            ),
        )


# --------------------------------------------------------------------------- results

SUMMARY_METRICS = (m.VAL_LOSS, m.VAL_ACC, m.TRAIN_LOSS, m.TRAIN_ACC, m.GENERALIZATION_GAP)


def trials_table(recorder: StudyRecorder, spec: JobSpec) -> pd.DataFrame:
    """One row per trial: status, diagnosis, best epoch and its metrics, config; best first."""
    metric, mode = spec.objective.metric, spec.objective.mode
    rows = []
    for record in recorder.trials.values():
        best = record.best(metric, mode) or {}
        verdict = diagnostics.diagnose(record.history, spec.diagnostics)
        row = {
            "trial": record.number,
            "trial_id": record.trial_id,
            "status": record.status or outcomes.INTERRUPTED,
            "diagnosis": verdict.diagnosis,
            "epochs": max(record.epochs, default=0),
            "best_epoch": best.get(m.EPOCH),
            **{f"best_{k}": best.get(k) for k in SUMMARY_METRICS},
            "overfit_score": verdict.overfit_score,
            "error": record.error,
            "node": record.node,
            **{f"config.{k}": v for k, v in record.config.items()},
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(
        ["best_" + metric, "trial"], ascending=[mode == "min", True], na_position="last"
    ).reset_index(drop=True)


def require_success(result: StudyResult) -> None:
    """An interrupted study, or one where no trial produced a finite objective, failed."""
    if result.interrupted:
        statuses = result.trials["status"] if len(result.trials) else pd.Series(dtype=object)
        done = int((statuses != outcomes.INTERRUPTED).sum())
        raise StudyError(
            f"study {result.spec.name!r} was interrupted after {done} of "
            f"{result.spec.search.num_samples} trials finished; Ray saved its state in "
            f"{result.results_path}"
        )
    if result.best is None:
        errors = result.trials.get("error", pd.Series(dtype=object)).dropna().unique().tolist()
        reason = f"; errors: {errors[:3]}" if errors else ""
        raise StudyError(
            f"study {result.spec.name!r}: none of {len(result.trials)} trials produced a finite "
            f"{result.spec.objective.metric}{reason}. Logs: {result.results_path / LOG_FILE}"
        )
