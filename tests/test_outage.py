"""The MLflow server goes away mid-study: training goes on, nothing is lost."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import tuner.study
from tests.conftest import free_port, server_env, spawn, stop, tiny_spec, wait_for_http
from tuner.cli import app
from tuner.progress import read_journal
from tuner.study import JOURNAL_FILE, LOG_FILE, StudyResult, run_study
from tuner.tracking import PARENT_TAG

OUTAGE_S = 15
SLOW_EPOCHS = {"hidden_units": 512, "num_layers": 3, "batch_size": 16}  # ~0.3 s an epoch


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 that can be stopped and started again, same port."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = spawn(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.folder / 'server.db'}",
                "--artifacts-destination",
                str(self.folder / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.folder,
            env=server_env(),
        )
        wait_for_http(f"{self.uri}/health", self.process)

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
    monkeypatch.setattr(tuner.study, "DRAIN_AT_END_S", 1.0)  # don't wait for the server
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
