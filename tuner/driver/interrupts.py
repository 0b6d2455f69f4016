"""Ctrl-C and `tuner stop` at any moment of a study: one message, nothing half-done.

Ray Tune catches the first Ctrl-C of a fit itself and ends it gracefully (the study then ends
interrupted, resumable). Everywhere else this module decides: before Ray saved the study's
first state the claim is released (nothing to resume, nothing left behind); after it, the
message gives the `tuner resume` command; once every trial has run, the study's end is finished
first. `tuner stop` sends SIGTERM, which Ray's driver raises as SystemExit: handled the same way.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune

from tuner.cluster.storage import StudyFolder
from tuner.driver.optuna_storage import optuna_storage
from tuner.errors import StudyError
from tuner.internals.optuna_internals import running_trial
from tuner.spec.job_spec import JobSpec
from tuner.tracking import schema
from tuner.tracking.runs import client_for


@contextlib.contextmanager
def resumable(spec: JobSpec, folder: StudyFolder, *, resumed: bool = False) -> Iterator[None]:
    """Ctrl-C, or `tuner stop` (SIGTERM, which Ray's driver raises as SystemExit), at any moment
    of a claimed study that Ray Tune does not catch itself (starting, writing the results):
    one message with the command that continues the study. Before Ray saved a new study's first
    state there is nothing to continue: the claim is released and the message says so. A
    `resumed` study was saved before: it is never released (a resume interrupted while Ray
    starts leaves it as it was)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        if not resumed and not tune.Tuner.can_restore(folder.location):
            release_claim(spec, folder)
            raise StudyError(
                f"study {spec.name!r} was interrupted before its first trial started: nothing "
                "was kept (no Optuna study, MLflow run or results folder); start it again"
            ) from None
        raise StudyError(
            f"study {spec.name!r} was interrupted; continue it with: "
            f"tuner resume {folder.uri or folder.local}"
        ) from None


def fail_asked_trials(storage: str, execution: str) -> int:
    """Tell Optuna FAIL for every trial of the execution still RUNNING there: on an interrupt,
    the trials the searcher asked for and never told (running, or asked and not yet started),
    marked `schema.INTERRUPTED_ATTR`, so that the team's Optuna study shows no trial alive that
    is not. `tuner resume` asks again for those Ray runs on (`TruthfulOptunaSearch.restore`).
    Returns how many; run beside the MLflow runs' closing (a stopped job is killed soon)."""
    with contextlib.suppress(KeyError):  # no such study: nothing was asked
        study = optuna.load_study(study_name=execution, storage=optuna_storage(storage))
        failed = 0
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = running_trial(study, frozen)
            trial.set_user_attr(schema.INTERRUPTED_ATTR, True)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            failed += 1
        return failed
    return 0


def release_claim(spec: JobSpec, folder: StudyFolder) -> None:
    """Undo an execution Ray never saved: its Optuna study, its MLflow runs, its local folder
    (a remote study's bucket keeps its spec, which no resume can use)."""
    execution = folder.local.name
    with contextlib.suppress(Exception):
        optuna.delete_study(study_name=execution, storage=optuna_storage(spec.search.storage))
    if spec.tracking.enabled:
        with contextlib.suppress(Exception):
            client = client_for(spec.tracking.uri)
            experiment = client.get_experiment_by_name(spec.tracking.experiment)
            if experiment is not None:
                found = client.search_runs(
                    [experiment.experiment_id],
                    filter_string=f"tags.`{schema.EXECUTION_TAG}` = '{execution}'",
                )
                for run in found:
                    client.delete_run(run.info.run_id)
    shutil.rmtree(folder.local, ignore_errors=True)


@contextlib.contextmanager
def ctrl_c_restored() -> Iterator[None]:
    """Around a Ray Tune fit: Ray installs its own Ctrl-C handler (which ends the fit
    gracefully) and leaves it installed after a fit that ended normally, where it would swallow
    the next Ctrl-C; the handler from before the fit comes back after it."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def finishing_first() -> Iterator[None]:
    """Around the end of a study (ranking, results files, report, MLflow), which takes seconds
    and is better finished than cut: the first Ctrl-C says so and lets it finish, a second one
    interrupts it (`tuner resume` then writes the end again)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum: int, frame: Any) -> None:
        sys.stderr.write("Ctrl-C: writing the study's results first; Ctrl-C again to stop now\n")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    handler = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
