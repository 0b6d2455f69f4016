"""Faults: a trial's worker killed mid-trial, and the driver killed mid-study then resumed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest
import torch
import yaml
from optuna.trial import TrialState
from ray import tune

from tests.helpers import (
    NUM_TRIALS,
    assert_every_trial_once,
    ctrl_c_reaches_it,
    journal_events,
    killed_mid_study,
    resume_in_a_new_process,
    run_counts,
    tiny_spec,
)
from tuner.driver.journal import JOURNAL_FILE, read_journal
from tuner.driver.study import resume_study, run_study
from tuner.errors import StudyError
from tuner.results import outcomes
from tuner.tracking import schema

pytestmark = pytest.mark.integration  # studies whose drivers are killed and resumed


def trial_workers() -> list[psutil.Process]:
    """The processes of this test session's own Ray (`ray_local`, started in this process: its
    raylet and the workers it forks are our descendants) that run a function trainable's actor.
    Never another Ray's: Ray's state API, which would list actor PIDs, needs the dashboard that
    `ray_local` leaves off (without it, it asks whatever listens on 127.0.0.1:8265)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if " ".join(proc.cmdline()).startswith("ray::ImplicitFunc"):
                found.append(proc)
    return found


@pytest.mark.usefixtures("ray_local")
def test_killed_trial_worker_resumes_from_its_checkpoint(study_dir: Path) -> None:
    spec = tiny_spec(
        name="kill-worker",
        search={"num_samples": 1, "max_concurrent": 1},
        search_space={"hidden_units": 512, "num_layers": 3, "batch_size": 16},  # slow epochs
        scheduler={"name": "fifo", "max_epochs": 10},
        failure={"max_retries": 2},
    )
    killed: list[int] = []

    def kill_after_epoch_3() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            epochs = [
                e["row"]["epoch"]
                for e in journal_events(study_dir / "tuner-results")
                if e["event"] == "result"
            ]
            if epochs and max(epochs) >= 3:
                for proc in trial_workers():
                    proc.send_signal(signal.SIGKILL)
                    killed.append(proc.pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_epoch_3)
    killer.start()
    result = run_study(spec, show_progress=False)
    killer.join()

    assert killed, "no trial worker was found to kill"
    row = result.trials.iloc[0]
    assert row["status"] == outcomes.COMPLETED and row["epochs"] == 10
    epochs = [
        e["row"]["epoch"]
        for e in journal_events(study_dir / "tuner-results")
        if e["event"] == "result"
    ]
    assert epochs.count(1) == 1, "the retried trial started over instead of from its checkpoint"
    assert sorted(set(epochs)) == list(range(1, 11))
    with sqlite3.connect(study_dir / "mlflow.db") as db:
        steps = [
            s
            for (s,) in db.execute(
                "select m.step from metrics m join tags t on t.run_uuid = m.run_uuid "
                "where t.key = 'mlflow.runName' and t.value = 'trial-0001' and m.key = 'val_loss' "
                "order by m.step"
            )
        ]
    assert steps == list(range(1, 11)), "the MLflow curve has a gap or a duplicate"


def test_epochs_only_a_trial_s_checkpoint_remembers_reach_the_journal_and_mlflow(
    tmp_path: Path,
) -> None:
    """The driver killed mid-trial, its journal and MLflow then losing every epoch after the
    first, as when the journal that reached a bucket is older than the checkpoint the trial
    uploaded itself (a CI failure of test_storage): the resumed trial's first result brings the
    rows up to its checkpoint, so the curve is whole in the journal, MLflow and Optuna."""
    spec = {
        "name": "lagging-journal",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search_space": {"hidden_units": 512, "num_layers": 3, "batch_size": 16},
        "search": {"num_samples": 1, "max_concurrent": 1},
        "scheduler": {"name": "fifo", "max_epochs": 10},
    }
    folder = killed_mid_study(
        tmp_path, spec, lambda events: sum(e["event"] == "result" for e in events) >= 6
    )
    journal = folder / JOURNAL_FILE
    kept = [e for e in read_journal(journal) if e["event"] != "result" or e["row"]["epoch"] == 1]
    journal.write_text("".join(json.dumps(e) + "\n" for e in kept))
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        for table in ("metrics", "latest_metrics"):
            db.execute(f"delete from {table} where step > 1")
    checkpoints = sorted(folder.glob("*/checkpoint_*/state.pt"))
    restored_epoch = torch.load(checkpoints[-1], weights_only=False)["epoch"]
    assert restored_epoch >= 2, "no checkpoint past epoch 1: nothing to prove"

    resume_in_a_new_process(folder, tmp_path)
    epochs = [e["row"]["epoch"] for e in read_journal(journal) if e["event"] == "result"]
    assert sorted(set(epochs)) == list(range(1, 11)), epochs
    assert all(epochs.count(e) == 1 for e in range(1, restored_epoch + 1)), epochs
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        steps = [
            s
            for (s,) in db.execute("select step from metrics where key = 'val_loss' order by step")
        ]
    assert steps == list(range(1, 11)), steps
    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    (trial,) = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(trial.intermediate_values) == list(range(1, 11))


def test_driver_killed_mid_study_then_resume_completes_it_once(tmp_path: Path) -> None:
    spec = {
        "name": "crash-me",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search": {"num_samples": NUM_TRIALS, "max_concurrent": 2},
        "scheduler": {"name": "asha", "max_epochs": 12, "grace_period": 2},
    }
    folder = killed_mid_study(
        tmp_path, spec, lambda events: sum(e["event"] == "end" for e in events) >= 3
    )
    before = run_counts(tmp_path / "mlflow.db")
    assert before["RUNNING"] >= 1, before  # what a crash leaves behind

    resumed = resume_in_a_new_process(folder, tmp_path)
    assert "Best: trial" in resumed.stdout

    after = run_counts(tmp_path / "mlflow.db")
    assert after == Counter({"FINISHED": NUM_TRIALS + 1}), after  # the parent + one per trial
    trials = pd.read_csv(folder / "trials.csv")
    assert sorted(trials["trial"]) == list(range(1, NUM_TRIALS + 1))
    assert set(trials["status"]) <= {outcomes.COMPLETED, outcomes.STOPPED_BY_SCHEDULER}
    states, superseded = assert_every_trial_once(
        tmp_path, folder.name, folder / JOURNAL_FILE, trials
    )
    figures = {
        "mlflow_before": dict(before),
        "mlflow_after": dict(after),
        "optuna": {s.name: n for s, n in states.items()},
        "superseded": len(superseded),
    }
    (tmp_path / "figures.json").write_text(json.dumps(figures))
    print(figures)


@pytest.mark.usefixtures("ray_local")
def test_resume_from_saved_trials_one_behind_the_searcher(study_dir: Path) -> None:
    """CI, 2026-12-06: a driver killed while Ray uploaded its folder to a bucket left the saved
    trials one save behind the saved searcher: Ray restored 9 trials, counted 10 created, and
    the resumed study ended 'interrupted after 9 of 10'. Here the newest trial is taken out of
    a finished study's saved trials, as such an upload leaves them."""
    spec = tiny_spec(name="lagging", search={"num_samples": 3, "max_concurrent": 1})
    folder = run_study(spec, show_progress=False).results_path
    (state,) = folder.glob("experiment_state-*.json")
    saved = json.loads(state.read_text())
    lost = json.loads(saved["trial_data"].pop()[0])["trial_id"]
    state.write_text(json.dumps(saved))

    result = resume_study(str(folder), show_progress=False)

    assert result.stop_reason == outcomes.COMPLETED and not result.interrupted
    assert sorted(result.trials["trial"]) == [1, 2, 3]
    assert lost not in set(result.trials["trial_id"])
    assert run_counts(study_dir / "mlflow.db") == Counter({"FINISHED": 4})  # parent + 3 trials
    study = optuna.load_study(
        study_name=result.execution, storage=f"sqlite:///{study_dir / 'optuna.db'}"
    )
    told = [t.user_attrs["tuner.trial_id"] for t in study.trials]
    assert sorted(told) == sorted([*result.trials["trial_id"], lost])  # it keeps what it learned
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}


@pytest.mark.usefixtures("ray_local")
def test_a_ctrl_c_before_ray_restores_a_resume_says_how_to_continue(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume interrupted while Ray starts (before Ray restored the study): the study stays
    saved, and the message is the command that continues it, not a bare 'interrupted'."""
    spec = tiny_spec(name="resumed-then-stopped", search={"num_samples": 1})
    folder = run_study(spec, show_progress=False).results_path

    def ctrl_c(*args) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("tuner.driver.study.place_trials", ctrl_c)
    with pytest.raises(StudyError, match=f"continue it with: tuner resume {folder}$"):
        resume_study(str(folder), show_progress=False)
    monkeypatch.undo()

    assert tune.Tuner.can_restore(str(folder))  # still saved: Ray can restore it
    result = resume_study(str(folder), show_progress=False)
    assert sorted(result.trials["trial"]) == [1] and not result.interrupted


@pytest.mark.usefixtures("ray_local")
def test_a_trial_failing_past_its_retries_is_errored_and_the_study_goes_on(
    study_dir: Path,
) -> None:
    """Trial 1's worker dies twice with max_retries 1: errored with its message; trial 2 is
    unaffected and the study succeeds, saying what failed."""
    from tuner.driver.study import require_success
    from tuner.results.summary import summary_lines

    spec = tiny_spec(
        name="fail-past-retries",
        search={"num_samples": 2, "max_concurrent": 1},
        search_space={"hidden_units": 512, "num_layers": 3, "batch_size": 16},
        scheduler={"name": "fifo", "max_epochs": 6},
        failure={"max_retries": 1},
    )
    kills: list[int] = []

    def kill_trial_1_twice() -> None:
        """Kill trial 1's worker whenever it has reported a new epoch, twice."""
        seen, deadline = 1, time.monotonic() + 120
        while time.monotonic() < deadline and len(kills) < 2:
            events = journal_events(study_dir / "tuner-results")
            if any(e["event"] == "end" for e in events):
                return
            reported = sum(e["event"] == "result" and e["number"] == 1 for e in events)
            if reported > seen:
                for proc in trial_workers():
                    if proc.pid not in kills:
                        proc.send_signal(signal.SIGKILL)
                        kills.append(proc.pid)
                seen = reported
            time.sleep(0.05)

    killer = threading.Thread(target=kill_trial_1_twice)
    killer.start()
    result = run_study(spec, show_progress=False)
    killer.join()

    assert len(kills) == 2, kills
    by_number = result.trials.set_index("trial")
    assert by_number.loc[1, "status"] == outcomes.ERRORED
    assert by_number.loc[1, "error"], "the errored trial has no message"
    assert by_number.loc[2, "status"] == outcomes.COMPLETED
    require_success(result)  # one trial finished: the study succeeded
    lines = " ".join(summary_lines(result))
    assert "1 errored" in lines and "Trial 1 failed after its retries:" in lines


# --------------------------------------------------------------------------- Ctrl-C at any moment

INTERRUPTED_TRIALS = 4


def results_folders(cwd: Path) -> list[Path]:
    return sorted((cwd / "tuner-results").glob("*/"))


def spec_loaded(cwd: Path, output: list[str]) -> bool:
    """The CLI printed the study's first line: the spec is read, Ray not started yet."""
    return bool(output)


def claimed(cwd: Path, output: list[str]) -> bool:
    """The execution is claimed: its folder exists (before any trial reports)."""
    return bool(results_folders(cwd))


def training(cwd: Path, output: list[str]) -> bool:
    return any(e["event"] == "result" for e in journal_events(cwd / "tuner-results"))


def ending(cwd: Path, output: list[str]) -> bool:
    """Every trial has ended: the driver is ranking, reporting and closing the runs."""
    ends = [e for e in journal_events(cwd / "tuner-results") if e["event"] == "end"]
    return len(ends) >= INTERRUPTED_TRIALS


@pytest.mark.parametrize(
    "reached",
    [spec_loaded, claimed, training, ending],
    ids=["before_ray", "trials_starting", "training", "writing_results"],
)
def test_ctrl_c_at_any_moment_ends_in_one_message_and_resume_completes_the_study(
    tmp_path: Path, reached
) -> None:
    """SIGINT to the driver's process group, as a terminal sends it: exit 1, no traceback, and
    the `tuner resume` command, which then finishes the study; before Ray saved the study's
    first state, a message that nothing was kept (and nothing is); once every trial has run,
    the study's end is written first and the study completes."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "ctrl-c",
                "model": "mlp",
                "dataset": {"name": "digits"},
                "search": {"num_samples": INTERRUPTED_TRIALS, "max_concurrent": 2},
                "scheduler": {"name": "fifo", "max_epochs": 4},
            }
        )
    )
    driver = subprocess.Popen(
        [sys.executable, "-m", "tuner", "run", str(spec)],
        cwd=tmp_path,
        start_new_session=True,
        preexec_fn=ctrl_c_reaches_it,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(driver.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not reached(tmp_path, lines) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, f"the study ended before it was interrupted: {lines}"
    os.killpg(driver.pid, signal.SIGINT)
    driver.wait(timeout=120)
    reader.join(timeout=10)
    output = "".join(lines)

    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    if reached is ending:  # every trial has run: the study's end is finished, not cut
        assert driver.returncode == 0, output
        assert "Stop reason: completed (4 of 4 trials ran)" in output, output
        return
    assert driver.returncode == 1, output
    if "tuner resume" not in output:  # interrupted before Ray saved the study's first state
        assert reached in (spec_loaded, claimed), output
        assert "interrupted" in output and results_folders(tmp_path) == [], output
        return
    (folder,) = results_folders(tmp_path)
    assert f"tuner resume {folder}" in " ".join(output.split()), output
    # no Optuna trial left RUNNING by a study that is not running: those it had asked for
    # (running or not yet started) are FAIL, marked interrupted
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    stopped = optuna.load_study(study_name=folder.name, storage=storage).trials
    assert TrialState.RUNNING not in {t.state for t in stopped}, stopped
    interrupted = [t for t in stopped if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get(schema.INTERRUPTED_ATTR) for t in interrupted), interrupted
    resume_in_a_new_process(folder, tmp_path)
    trials = pd.read_csv(folder / "trials.csv")
    assert sorted(trials["trial"]) == list(range(1, INTERRUPTED_TRIALS + 1))
    assert outcomes.INTERRUPTED not in set(trials["status"])
    # Optuna told each trial once, the interrupted ones again under a new number (same params)
    after = optuna.load_study(study_name=folder.name, storage=storage).trials
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    told = sorted(t.user_attrs[schema.TRIAL_ID_TAG] for t in complete)
    assert told == sorted(trials["trial_id"]), (told, after)
    assert {t.number for t in after if t.state == TrialState.FAIL} == {
        t.number for t in interrupted
    }
    params = {t.user_attrs[schema.TRIAL_ID_TAG]: t.params for t in complete}
    for attempt in interrupted:
        trial_id = attempt.user_attrs.get(schema.TRIAL_ID_TAG)
        assert trial_id is None or params.get(trial_id, attempt.params) == attempt.params
