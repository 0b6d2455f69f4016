"""The MLflow server goes away mid-study: training goes on, nothing is lost."""

from __future__ import annotations

import functools
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import tuner.driver.study_run
import tuner.tracking.mlflow_callback
from tests.helpers import (
    EPOCH_1,
    OutageProxy,
    drive,
    fake_trial,
    free_port,
    start_mlflow_server,
    stop,
    tiny_spec,
)
from tuner.cli import app
from tuner.driver.journal import JOURNAL_FILE, read_journal
from tuner.driver.progress import StudyRecorder
from tuner.driver.study import LOG_FILE, require_success, run_study
from tuner.errors import StudyError
from tuner.results.trials import StudyResult
from tuner.tracking.buffer import BUFFER_FILE, HTTP_SETTINGS, BufferedWriter
from tuner.tracking.mlflow_callback import RUN_IDS_FILE, MlflowTracking, load_run_ids
from tuner.tracking.runs import client_for
from tuner.tracking.schema import PARENT_TAG
from tuner.tracking.study_run import start_parent_run

OUTAGE_S = 15
SLOW_EPOCHS = {"hidden_units": 512, "num_layers": 3, "batch_size": 16}  # ~0.3 s an epoch


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 that can be stopped and started again, same port."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_mlflow_server(self.folder, self.port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            stop(self.process)


@pytest.fixture
def server(tmp_path: Path):
    folder = tmp_path / "server"
    folder.mkdir()
    server = MlflowServer(folder)
    server.start()
    yield server
    server.stop()


def outage_spec(server: MlflowServer, name: str, trials: int):
    return tiny_spec(
        name=name,
        search={"num_samples": trials, "max_concurrent": 2},
        search_space=SLOW_EPOCHS,
        scheduler={"name": "fifo", "max_epochs": 8},
        tracking={"uri": server.uri},
    )


def results_seen(study_dir: Path) -> int:
    journals = list((study_dir / "tuner-results").glob(f"*/{JOURNAL_FILE}"))
    return sum(e["event"] == "result" for e in read_journal(journals[0])) if journals else 0


def cut_server(server: MlflowServer, study_dir: Path, restart_after_s: float | None) -> dict:
    """In a thread: stop the server once training is under way; start it again later."""
    events: dict = {}

    def run() -> None:
        deadline = time.monotonic() + 120
        while results_seen(study_dir) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        server.stop()
        events["results_before"] = results_seen(study_dir)
        if restart_after_s is not None:
            time.sleep(restart_after_s)
            events["results_during"] = results_seen(study_dir) - events["results_before"]
            server.start()

    thread = threading.Thread(target=run)
    thread.start()
    events["thread"] = thread
    return events


def assert_complete_in_mlflow(uri: str, result: StudyResult) -> int:
    """Every trial's run FINISHED with every epoch; returns how many metric points that is."""
    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    )
    assert len(children) == len(result.trials)
    epochs = result.trials.set_index("trial_id")["epochs"]
    points = 0
    for child in children:
        assert child.info.status == "FINISHED", child.info.run_name
        assert child.data.tags["trial_status"] == "completed"
        expected = list(range(1, int(epochs[child.data.tags["tuner.trial_id"]]) + 1))
        for key in ("train_loss", "val_loss", "val_acc"):
            steps = [p.step for p in client.get_metric_history(child.info.run_id, key)]
            assert steps == expected, (child.info.run_name, key, steps)
            points += len(steps)
        assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["learning_curve.png"]
        contexts = [t.value for i in child.inputs.dataset_inputs for t in i.tags]
        assert sorted(contexts) == ["training", "validation"], child.info.run_name  # not lost
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    return points


@pytest.mark.usefixtures("ray_local")
def test_server_down_for_15_s_mid_study_loses_nothing(server: MlflowServer, study_dir: Path):
    spec = outage_spec(server, "outage", trials=16)
    events = cut_server(server, study_dir, restart_after_s=OUTAGE_S)
    result = run_study(spec, show_progress=False)
    events["thread"].join()

    assert events["results_during"] > 0, "no epoch finished while the server was down"
    assert result.tracking_buffered == 0
    assert not (result.results_path / "tracking-buffer.jsonl").exists()
    points = assert_complete_in_mlflow(server.uri, result)
    log = (result.results_path / LOG_FILE).read_text()
    buffered = [int(n) for n in re.findall(r"(\d+) writes buffered", log)]
    assert buffered, "the outage never reached the buffer"
    print(
        f"outage: {events['results_during']} epochs trained while down; up to "
        f"{max(buffered)} writes buffered; {points} curve points in MLflow"
    )


@pytest.mark.usefixtures("ray_local")
def test_buffer_left_behind_is_sent_by_tuner_sync(
    server: MlflowServer, study_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(tuner.driver.study_run, "DRAIN_AT_END_S", 1.0)  # don't wait for the server
    spec = outage_spec(server, "sync-later", trials=6)
    events = cut_server(server, study_dir, restart_after_s=None)
    result = run_study(spec, show_progress=False)
    events["thread"].join()
    assert result.tracking_buffered > 0
    assert (result.results_path / "tracking-buffer.jsonl").is_file()

    server.start()
    synced = CliRunner().invoke(app, ["sync", str(result.results_path)])
    assert synced.exit_code == 0, synced.output
    assert f"Sent {result.tracking_buffered} buffered MLflow writes; 0 still buffered" in (
        synced.output
    )
    assert not (result.results_path / "tracking-buffer.jsonl").exists()
    assert_complete_in_mlflow(server.uri, result)


# --------------------------------------------------------------------------- outages at each phase


OUTAGE_MIN_S = 1.0
RETRY_EVERY_S = 1.0  # the writer's retries, 5 s in a study: the test waits less for the drain
PHASES = (
    "start",  # the parent run exists; no trial has a run yet
    "mid_training",  # a trial's first epoch is in
    # the writer, behind (a slow server), creates a trial's run after its first epoch; then the
    # server dies (a study once failed on a read of the run's metric history)
    "writer_behind",
    "last_trial_ending",  # the last trial's summary, figure and end
    "parent_closing",  # the parent run's results, report artifact and end
    "report",  # the dashboard is being written
)


@pytest.fixture
def proxy(mlflow_server: str) -> Iterator[OutageProxy]:
    proxy = OutageProxy(mlflow_server)
    yield proxy
    proxy.close()


def on_call(monkeypatch, owner, name: str, action: Callable, after: bool = False) -> None:
    """Run `action(*args)` before (or after) each call of `owner.name`."""
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        if not after:
            action(*args, **kwargs)
        result = original(*args, **kwargs)
        if after:
            action(*args, **kwargs)
        return result

    monkeypatch.setattr(owner, name, wrapped)


def place_outage(phase: str, proxy: OutageProxy, monkeypatch, study_dir: Path, trials: int):
    """Start the outage from a hook at that phase of the study, not after a guessed delay."""

    def outage(*_args, **_kwargs) -> None:
        if not proxy.outages:
            proxy.outage(OUTAGE_MIN_S)

    if phase == "start":
        on_call(monkeypatch, tuner.driver.study_run, "open_tracking", outage, after=True)
    elif phase == "mid_training":
        on_call(monkeypatch, MlflowTracking, "on_trial_result", outage)
    elif phase == "writer_behind":

        def after_first_epoch(tracking: MlflowTracking, record) -> None:
            deadline = time.monotonic() + 60
            while not trial_results(study_dir, record.trial_id) and time.monotonic() < deadline:
                time.sleep(0.05)

        on_call(monkeypatch, MlflowTracking, "_create_child", after_first_epoch)
        on_call(monkeypatch, MlflowTracking, "_create_child", outage, after=True)
    elif phase == "last_trial_ending":

        def if_last(tracking: MlflowTracking, *_args, **_kwargs) -> None:
            ended = [r for r in tracking.recorder.trials.values() if r.status is not None]
            if len(ended) == trials:
                outage()

        on_call(monkeypatch, MlflowTracking, "on_trial_complete", if_last)
    elif phase == "parent_closing":
        on_call(monkeypatch, tuner.driver.study_run, "finish_parent_run", outage)
    elif phase == "report":
        on_call(monkeypatch, tuner.driver.study_run, "write_report", outage)
    else:
        raise ValueError(f"phase must be one of {PHASES} but got {phase!r}")


def trial_results(study_dir: Path, trial_id: str) -> int:
    journals = list((study_dir / "tuner-results").glob(f"*/{JOURNAL_FILE}"))
    events = read_journal(journals[0]) if journals else []
    return sum(e["event"] == "result" and e["trial_id"] == trial_id for e in events)


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("phase", PHASES)
def test_an_outage_at_any_phase_of_a_study_loses_nothing(
    phase: str, proxy: OutageProxy, mlflow_server: str, study_dir: Path, monkeypatch
):
    trials = 2
    spec = tiny_spec(
        name=f"phase-{phase}",
        search={"num_samples": trials, "max_concurrent": 2},
        tracking={"uri": proxy.uri},
    )
    quick = functools.partial(BufferedWriter, retry_every_s=RETRY_EVERY_S)
    monkeypatch.setattr(tuner.tracking.mlflow_callback, "BufferedWriter", quick)
    place_outage(phase, proxy, monkeypatch, study_dir, trials)
    result = run_study(spec, show_progress=False)

    require_success(result)
    assert proxy.outages == 1 and proxy.turned_away > 0, "the outage was never seen"
    assert result.tracking_buffered == 0
    assert not (result.results_path / BUFFER_FILE).exists()
    assert_complete_in_mlflow(mlflow_server, result)
    client = MlflowClient(mlflow_server)
    parent = result.parent_run_id
    assert client.get_run(parent).data.metrics["trials_total"] == trials
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"spec.yaml", "results.csv", "results.parquet", "best_config.yaml"} <= artifacts
    saved = load_run_ids(result.results_path / RUN_IDS_FILE)
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
    )
    assert sorted(saved.values()) == sorted(c.info.run_id for c in children)


def test_a_restored_study_waits_out_an_outage_for_what_it_reads(
    proxy: OutageProxy, mlflow_server: str, study_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """After a restore, `reconcile` asks whether a trial's run is still RUNNING, and a reopened
    run which epochs it has: with the server down, both wait for it instead of failing."""
    for name, value in HTTP_SETTINGS.items():  # as in a study: no MLflow retries of its own
        monkeypatch.setenv(name, value)
    spec = tiny_spec(name="restore-outage", tracking={"uri": proxy.uri})
    experiment_id, parent_id = start_parent_run(
        client_for(proxy.uri), spec, "restore-outage-x", study_dir
    )
    recorder = StudyRecorder("val_loss", "min", max_epochs=2)
    tracking = MlflowTracking(spec, recorder, parent_id, experiment_id, study_dir / RUN_IDS_FILE)
    ended, running = fake_trial("t1", 1), fake_trial("t2", 2)
    for trial in (ended, running):
        drive([recorder, tracking], "on_trial_start", trial)
        drive([recorder, tracking], "on_trial_result", trial, result=EPOCH_1)
    tracking.flush()
    drive([recorder], "on_trial_complete", ended)  # the driver died before closing its run

    restored = MlflowTracking(spec, recorder, parent_id, experiment_id, study_dir / RUN_IDS_FILE)
    proxy.outage(OUTAGE_MIN_S)
    restored.reconcile()  # reads t1's run status (and t1's history as it reopens t1's run)
    assert proxy.turned_away > 0, "the outage was never seen"
    turned_away = proxy.turned_away
    on_call(monkeypatch, MlflowTracking, "_resync", lambda *_: proxy.outage(OUTAGE_MIN_S))
    drive([recorder, restored], "on_trial_result", running, result={**EPOCH_1, "epoch": 2})
    drive([recorder, restored], "on_trial_complete", running)

    assert proxy.turned_away > turned_away, "the second outage was never seen"
    client = MlflowClient(mlflow_server)
    for trial, steps in ((ended, [1]), (running, [1, 2])):
        run = client.get_run(restored.run_ids[trial.trial_id])
        assert run.info.status == "FINISHED"
        assert [p.step for p in client.get_metric_history(run.info.run_id, "val_loss")] == steps


# ------------------------------------------------------------------- reads, without a server


class FlakyClient:
    """What BufferedWriter calls of an MlflowClient; the server is away for the first calls."""

    tracking_uri = "http://127.0.0.1:1"

    def __init__(self, away_for_calls: int):
        self.away_for_calls = away_for_calls
        self.calls: list[tuple[str, str]] = []

    def _answer(self, name: str, arg: str) -> None:
        if self.away_for_calls > 0:
            self.away_for_calls -= 1
            raise MlflowException(f"API request to {self.tracking_uri} failed: Connection refused")
        self.calls.append((name, arg))

    def create_run(self, experiment_id: str, run_name: str, tags: dict):
        self._answer("create_run", run_name)
        return SimpleNamespace(info=SimpleNamespace(run_id=f"id-{run_name}", artifact_uri=""))

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        self._answer("log_batch", run_id)

    def delete_run(self, run_id: str) -> None:
        self._answer("delete_run", run_id)

    def get_run(self, run_id: str) -> str:
        self._answer("get_run", run_id)
        return f"run {run_id}"


def quick_writer(client: FlakyClient, folder: Path, **timings: float) -> BufferedWriter:
    return BufferedWriter(client, folder, backoff_s=0.01, retry_every_s=0.05, **timings)


def test_a_read_waits_for_the_server_and_for_the_writes_queued_before_it(tmp_path: Path):
    client = FlakyClient(away_for_calls=5)
    writer = quick_writer(client, tmp_path)
    writer.delete_run("r1")  # buffered: the server is away
    assert writer.queue and client.calls == []
    assert writer.read(client.get_run, "r1") == "run r1"
    assert client.calls == [("delete_run", "r1"), ("get_run", "r1")]
    assert writer.queue == [] and not (tmp_path / BUFFER_FILE).exists()


def test_a_read_fails_the_study_once_the_server_stays_away_too_long(tmp_path: Path):
    client = FlakyClient(away_for_calls=10**6)
    writer = quick_writer(client, tmp_path, read_patience_s=0.3)
    started = time.monotonic()
    with pytest.raises(StudyError, match=r"did not answer for 0.3 s \(a read, get_run"):
        writer.read(client.get_run, "r1")
    assert time.monotonic() - started < 2


def test_a_run_created_as_the_queue_drains_gets_its_real_id(tmp_path: Path):
    """Not a placeholder that nothing would resolve (it would end up in mlflow_runs.json)."""
    client = FlakyClient(away_for_calls=2)
    writer = quick_writer(client, tmp_path)
    writer.set_tag("r0", "trial_status", "running")  # buffered
    time.sleep(writer.retry_every_s)
    assert writer.create_run("0", "trial-0001", {}) == "id-trial-0001"
    assert client.calls == [("log_batch", "r0"), ("create_run", "trial-0001")]
