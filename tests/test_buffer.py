"""BufferedWriter against a real MLflow store (SQLite) and a server address nobody listens on:
writes wait on disk during an outage, a partial drain leaves a queue a later process can send,
and a corrupt queue file keeps its readable writes and says what it skipped."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.helpers import free_port
from tuner.tracking.buffer import BUFFER_FILE, HTTP_SETTINGS, PENDING, SKIPPED_FILE, BufferedWriter


class Server:
    """The writer's MLflow client: the real store while up; while down, a client of an address
    nobody listens on (connection refused, as in an outage). `up_for(n)` answers n more
    requests, then goes down: the server coming back for part of a queue."""

    def __init__(self, store: MlflowClient, dead: MlflowClient):
        self.store, self.dead = store, dead
        self.answers: int | None = None  # requests left to answer; None: up for good
        self.refusals = 0  # requests to refuse first (a blip)

    def up(self) -> None:
        self.answers = None

    def down(self) -> None:
        self.answers = 0

    def up_for(self, requests: int) -> None:
        self.answers = requests

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.store, name)
        if not callable(real):
            return real  # tracking_uri

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.refusals > 0:
                self.refusals -= 1
            elif self.answers is None or self.answers > 0:
                if self.answers is not None:
                    self.answers -= 1
                return real(*args, **kwargs)
            return getattr(self.dead, name)(*args, **kwargs)

        return call


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    """One SQLite store for the module (creating one takes seconds); an experiment per test."""
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")


@pytest.fixture
def server(store: MlflowClient, monkeypatch: pytest.MonkeyPatch) -> Server:
    for name, value in HTTP_SETTINGS.items():  # no MLflow retries: refused at once
        monkeypatch.setenv(name, value)
    return Server(store, MlflowClient(f"http://127.0.0.1:{free_port()}"))


@pytest.fixture
def experiment(server: Server, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    name = request.node.name
    return server.store.create_experiment(name, (tmp_path / "artifacts").as_uri())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "study"


def writer_for(server: Server, folder: Path, retry_every_s: float = 0.0) -> BufferedWriter:
    return BufferedWriter(server, folder, attempts=1, backoff_s=0.0, retry_every_s=retry_every_s)


def epoch(step: int) -> Metric:
    return Metric("val_loss", 1.0 / step, 1_000 + step, step)


def queued_lines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / BUFFER_FILE).read_text().splitlines()]


def curve(server: Server, run_id: str) -> list[int]:
    return [int(p.step) for p in server.store.get_metric_history(run_id, "val_loss")]


def only_run(server: Server, experiment: str):
    (run,) = server.store.search_runs([experiment])
    return run


def test_writes_during_an_outage_wait_on_disk_and_arrive_in_order(
    server: Server, experiment: str, folder: Path
) -> None:
    server.down()
    writer = writer_for(server, folder)
    placeholder = writer.create_run(experiment, "trial-0001", {"tuner.trial_id": "t1"})
    assert placeholder.startswith(PENDING)
    writer.log_batch(placeholder, metrics=[epoch(1)])
    writer.set_tag(placeholder, "trial_status", "running")
    writer.set_tag(placeholder, "trial_status", "completed")
    writer.set_terminated(placeholder, "FINISHED")
    assert [op["op"] for op in queued_lines(folder)] == [
        "create_run",
        "log_batch",
        "log_batch",
        "log_batch",
        "set_terminated",
    ]
    assert writer.buffered_total == 5
    assert server.store.search_runs([experiment]) == []

    resolutions: list[dict[str, str]] = []
    writer.on_resolve = lambda resolved: resolutions.append(dict(resolved))
    server.up()
    assert writer.drain()
    assert not (folder / BUFFER_FILE).exists()
    run = only_run(server, experiment)
    assert resolutions[-1] == {placeholder: run.info.run_id}
    assert run.info.run_name == "trial-0001" and run.info.status == "FINISHED"
    assert run.data.tags["trial_status"] == "completed"  # sent in the order written
    assert curve(server, run.info.run_id) == [1]


def test_nothing_overtakes_a_waiting_queue(server: Server, experiment: str, folder: Path) -> None:
    """A write made once the server is back, before the queue's next retry, waits behind it."""
    writer = writer_for(server, folder, retry_every_s=3600)
    run_id = writer.create_run(experiment, "trial-0001", {})
    assert not run_id.startswith(PENDING)
    writer.set_tag(run_id, "trial_status", "a")
    server.down()
    writer.set_tag(run_id, "trial_status", "b")
    server.up()
    writer.set_tag(run_id, "trial_status", "c")
    waiting = [op["tags"] for op in queued_lines(folder)]
    assert waiting == [[["trial_status", "b"]], [["trial_status", "c"]]]
    assert server.store.get_run(run_id).data.tags["trial_status"] == "a"
    assert writer.drain()
    assert server.store.get_run(run_id).data.tags["trial_status"] == "c"


def test_a_refused_write_is_raised_not_queued(server: Server, folder: Path) -> None:
    writer = writer_for(server, folder)
    with pytest.raises(MlflowException):
        writer.set_terminated("0" * 32, "FINISHED")  # no such run: the server answered no
    assert writer.queue == [] and not (folder / BUFFER_FILE).exists()


def test_a_partial_drain_leaves_a_queue_a_later_process_can_send(
    server: Server, experiment: str, folder: Path
) -> None:
    server.down()
    writer = writer_for(server, folder)
    resolutions: list[dict[str, str]] = []
    writer.on_resolve = lambda resolved: resolutions.append(dict(resolved))
    placeholder = writer.create_run(experiment, "trial-0001", {})
    for step in (1, 2):
        writer.log_batch(placeholder, metrics=[epoch(step)])
    writer.set_terminated(placeholder, "FINISHED")

    server.up_for(2)  # the run's creation and its first epoch go through, then it fails again
    assert not writer.drain()
    run = only_run(server, experiment)
    real = run.info.run_id
    assert run.info.status == "RUNNING" and curve(server, real) == [1]
    assert len(writer.queue) == 2
    # who keeps run ids (mlflow_runs.json) hears the real id now, not only once the queue is
    # empty: this process may end before that
    assert resolutions == [{placeholder: real}]
    # a write from a caller that still holds the placeholder, while the server is down again
    writer.log_batch(placeholder, metrics=[epoch(3)])
    left = queued_lines(folder)
    assert [op["op"] for op in left] == ["log_batch", "set_terminated", "log_batch"]
    assert {op["run_id"] for op in left} == {real}, "a placeholder left in the queue file"

    # the study ended there; `tuner sync` later, in a new process, with the server back
    server.up()
    later = writer_for(server, folder)
    assert len(later.queue) == 3
    assert later.drain()
    assert curve(server, real) == [1, 2, 3], "an epoch was lost or sent twice"
    assert server.store.get_run(real).info.status == "FINISHED"
    assert not (folder / BUFFER_FILE).exists()


def test_a_corrupt_queue_file_keeps_the_readable_writes_and_says_what_it_skipped(
    server: Server, experiment: str, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.down()
    writer = writer_for(server, folder)
    placeholder = writer.create_run(experiment, "trial-0001", {})
    for step in (1, 2, 3):
        writer.log_batch(placeholder, metrics=[epoch(step)])
    writer.set_terminated(placeholder, "FINISHED")
    create, first, second, third, end = (folder / BUFFER_FILE).read_bytes().splitlines()
    garbled = [
        b"\xff\xfe\x00\x13 not text",  # not UTF-8
        b'{"op": "log_batch", "run_id": "x", "metrics": [[',  # torn mid-line
        b'{"op": "explode", "run_id": "x"}',  # not a write this writer knows
        b'["log_batch"]',  # JSON, but not a write
    ]
    torn_last = third[: len(third) // 2]  # a crash mid-write: no newline either
    lines = [create, garbled[0], first, garbled[1], garbled[2], second, garbled[3], end]
    (folder / BUFFER_FILE).write_bytes(b"\n".join([*lines, torn_last]))

    with caplog.at_level(logging.WARNING, logger="tuner.tracking.buffer"):
        reopened = writer_for(server, folder)
    assert [op["op"] for op in reopened.queue] == [
        "create_run",
        "log_batch",
        "log_batch",
        "set_terminated",
    ]
    message = caplog.text
    assert "skipped 5 unreadable line(s), kept the 4 other write(s)" in message, message
    for number in (2, 4, 5, 7, 9):
        assert f"{number}: b" in message, message
    assert SKIPPED_FILE in message
    assert (folder / SKIPPED_FILE).read_bytes().splitlines() == [
        *garbled[:3],
        garbled[3],
        torn_last,
    ]
    # the file now holds only the readable writes, so the next one does not join the torn line
    assert len(queued_lines(folder)) == 4
    reopened.log_batch(placeholder, metrics=[epoch(4)])
    assert len(writer_for(server, folder).queue) == 5

    server.up()
    assert reopened.drain()
    run = only_run(server, experiment)
    assert curve(server, run.info.run_id) == [1, 2, 4]
    assert run.info.status == "FINISHED"


def test_an_empty_or_blank_queue_file_is_no_queue(server: Server, folder: Path) -> None:
    folder.mkdir()
    (folder / BUFFER_FILE).write_text("\n\n")
    writer = writer_for(server, folder)
    assert writer.queue == [] and writer.drain()
    assert not (folder / SKIPPED_FILE).exists()


def test_a_write_refused_once_goes_through_on_its_next_attempt(
    server: Server, experiment: str, folder: Path
) -> None:
    writer = BufferedWriter(server, folder, attempts=2, backoff_s=0.01)
    server.refusals = 1
    run_id = writer.create_run(experiment, "trial-0001", {})
    assert not run_id.startswith(PENDING) and writer.queue == []
    assert only_run(server, experiment).info.run_id == run_id
    assert not (folder / BUFFER_FILE).exists()


def test_dataset_inputs_of_a_run_created_in_an_outage_wait_and_arrive(
    server: Server, experiment: str, folder: Path
) -> None:
    from trainables.data import DataOptions, load_dataset
    from tuner.tracking.inputs import dataset_inputs, digests

    options = DataOptions(name="digits")
    inputs = dataset_inputs(load_dataset(options), options)
    server.down()
    writer = writer_for(server, folder)
    placeholder = writer.create_run(experiment, "trial-0001", {"tuner.trial_id": "t1"})
    writer.log_inputs(placeholder, inputs)
    assert [op["op"] for op in queued_lines(folder)] == ["create_run", "log_inputs"]
    later = writer_for(server, folder)  # another process (tuner sync) reads the queue file
    server.up()
    assert later.drain()
    run = only_run(server, experiment)
    logged = {
        tag.value: item.dataset.digest
        for item in run.inputs.dataset_inputs
        for tag in item.tags
        if tag.key == "mlflow.data.context"
    }
    assert logged == digests(inputs)
    assert {item.dataset.name for item in run.inputs.dataset_inputs} == {"digits"}
