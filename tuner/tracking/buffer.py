"""Tracking writes that survive an MLflow server going away.

`BufferedWriter` sends each write at once, retrying briefly with back-off. When the server stays
unreachable (connection refused, timeouts, 5xx), the write is queued in order, in memory and in a
JSON-lines file in the study folder, and training goes on. Later writes queue behind it; the
queue is retried every few seconds and drained, in order, once the server answers. Runs created
while the server is down get a placeholder id, replaced by the real one when the creation goes
through; the queue on disk is rewritten with the real ids as soon as they are known, so a
later process (`tuner sync` drains a queue that a study left behind) can send the rest. Lines of
the queue file that cannot be read (a torn write, a garbled line) are skipped with a warning and
kept aside in `tracking-buffer.skipped`. The few reads a study needs (after a restore) wait out
an outage too: `BufferedWriter.read`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tuner.errors import StudyError, brief
from tuner.internals.mlflow_internals import upload_artifact
from tuner.tracking.inputs import as_dataset_inputs

log = logging.getLogger(__name__)

T = TypeVar("T")
PENDING = "pending-"  # prefix of a placeholder run id
BUFFER_FILE = "tracking-buffer.jsonl"
SKIPPED_FILE = "tracking-buffer.skipped"  # unreadable lines of the queue file, kept for a person
ARTIFACTS_DIR = "tracking-artifacts"  # files waiting to be uploaded
#: MLflow's switch for its "View run ..." lines at the end of a run on a server
SUPPRESS_URLS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
HTTP_SETTINGS = {
    # our retries replace MLflow's own (7 by default, with back-off factor 2: minutes per call)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # ending a run on a server otherwise fetches the whole run again, to print its URL over the
    # live progress line
    SUPPRESS_URLS: "true",
}
READ_PATIENCE_S = 60.0  # how long a read waits for an unreachable server before failing the study


def is_transient(exc: Exception) -> bool:
    """Worth retrying later: the server is unreachable or failing, not refusing the request."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        message = str(exc)
        unreachable = "Max retries exceeded" in message or "Connection" in message
        return unreachable or exc.get_http_status_code() >= 500
    return isinstance(exc, OSError | TimeoutError)


class BufferedWriter:
    """The MLflow writes tracking needs, queued on disk while the server is unreachable."""

    def __init__(
        self,
        client,
        folder: Path,
        attempts: int = 2,
        backoff_s: float = 0.5,
        retry_every_s: float = 5.0,
        read_patience_s: float = READ_PATIENCE_S,
    ):
        self.client = client
        self.folder = folder
        self.path = folder / BUFFER_FILE
        self.attempts, self.backoff_s, self.retry_every_s = attempts, backoff_s, retry_every_s
        self.read_patience_s = read_patience_s
        self.queue: list[dict[str, Any]] = load_queue(self.path, folder / SKIPPED_FILE)
        self.resolved: dict[str, str] = {}  # placeholder -> real run id
        self.artifact_uris: dict[str, str] = {}  # run id -> where its artifacts go
        self.buffered_total = 0  # writes that had to wait, over this writer's life
        self._next_retry = 0.0
        self.on_resolve: Callable[[dict[str, str]], None] | None = None

    # ------------------------------------------------------------------ the writes

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        op = {
            "op": "create_run",
            "experiment_id": experiment_id,
            "run_name": run_name,
            "tags": tags,
            "placeholder": f"{PENDING}{time.time_ns()}",
        }
        # sent now, or while draining the queue it joined (then it has its real id already)
        return self._write(op) or self.real_id(op["placeholder"])

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        op = {
            "op": "log_batch",
            "run_id": run_id,
            "metrics": [[x.key, x.value, x.timestamp, x.step] for x in metrics],
            "params": [[p.key, p.value] for p in params],
            "tags": [[t.key, t.value] for t in tags],
        }
        if op["metrics"] or op["params"] or op["tags"]:
            self._write(op)

    def set_terminated(self, run_id: str, status: str) -> None:
        self._write({"op": "set_terminated", "run_id": run_id, "status": status})

    def update_run(self, run_id: str, status: str) -> None:
        self._write({"op": "update_run", "run_id": run_id, "status": status})

    def log_inputs(self, run_id: str, inputs: list[dict[str, Any]]) -> None:
        """Dataset inputs as `tracking.inputs.dataset_inputs` describes them (JSON, so they can wait
        in the queue file)."""
        if inputs:
            self._write({"op": "log_inputs", "run_id": run_id, "inputs": inputs})

    def delete_run(self, run_id: str) -> None:
        self._write({"op": "delete_run", "run_id": run_id})

    def log_artifact(self, run_id: str, local_path: Path, artifact_path: str | None = None) -> None:
        self._write(
            {
                "op": "log_artifact",
                "run_id": run_id,
                "path": str(local_path),
                "artifact_path": artifact_path,
            }
        )

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        from mlflow.entities import RunTag

        self.log_batch(run_id, tags=[RunTag(key, value)])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.log_file(run_id, artifact_file, lambda path: path.write_text(text))

    def log_dict(self, run_id: str, dictionary: dict, artifact_file: str) -> None:
        self.log_text(run_id, json.dumps(dictionary, indent=2), artifact_file)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        self.log_file(run_id, artifact_file, lambda path: figure.savefig(path))

    def log_file(self, run_id: str, name: str, write: Callable[[Path], None]) -> None:
        """Write the file into the study folder first, so that it outlives an outage."""
        path = self.folder / ARTIFACTS_DIR / str(time.time_ns()) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        self.log_artifact(run_id, path)

    # ------------------------------------------------------------------ sending and queueing

    def _write(self, op: dict[str, Any]) -> str | None:
        if self.queue:  # keep the order: nothing overtakes what is waiting
            self._enqueue(op)
            self.drain(force=False)
            return None
        for attempt in range(self.attempts):
            try:
                return self._send(op)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("MLflow write failed (%s), attempt %d: %s", op["op"], attempt + 1, exc)
                time.sleep(self.backoff_s * 2**attempt)
        self._enqueue(op)
        self._next_retry = time.monotonic() + self.retry_every_s
        return None

    def _enqueue(self, op: dict[str, Any]) -> None:
        op = self._with_real_ids(op)  # the caller may not have heard of a resolved placeholder
        self.queue.append(op)
        self.buffered_total += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(op) + "\n")

    def drain(self, force: bool = True) -> bool:
        """Send what is queued, in order, until done or the server fails again; True if empty."""
        if not self.queue or (not force and time.monotonic() < self._next_retry):
            return not self.queue
        sent = 0
        try:
            for op in self.queue:
                self._send(op)
                sent += 1
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._next_retry = time.monotonic() + self.retry_every_s
            log.warning("MLflow still unreachable; %d writes buffered", len(self.queue) - sent)
        finally:
            if sent:
                # the ids of runs created just now replace their placeholders in what is left,
                # on disk too: a later process could not resolve them
                self.queue = [self._with_real_ids(op) for op in self.queue[sent:]]
                save_queue(self.path, self.queue)
        if sent and self.on_resolve and self.resolved:
            self.on_resolve(self.resolved)
        return not self.queue

    def drain_until(self, timeout_s: float) -> bool:
        """At the end of a study: keep retrying for a while before leaving a buffer behind."""
        deadline = time.monotonic() + timeout_s
        while not self.drain() and time.monotonic() < deadline:
            time.sleep(min(self.retry_every_s, max(0.0, deadline - time.monotonic())))
        return not self.queue

    def read(self, call: Callable[..., T], *args: Any) -> T:
        """A read the driver cannot go on without, e.g. `read(client.get_run, run_id)`. Like a
        write, it waits out an outage: it first sends what is queued (so that it sees those
        writes), and retries with back-off while the server is unreachable, for up to
        `read_patience_s`; then it fails the study."""
        deadline = time.monotonic() + self.read_patience_s
        delay = self.backoff_s
        while True:
            error: Exception | None = None
            try:
                if self.drain():
                    return call(*args)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                error = exc
            if time.monotonic() + delay > deadline:
                raise StudyError(
                    f"the MLflow server did not answer for {self.read_patience_s:g} s (a read, "
                    f"{getattr(call, '__name__', call)}, with {len(self.queue)} writes buffered): "
                    f"{brief(str(error or 'unreachable'), 300)}; try again once it answers"
                ) from error
            log.warning("MLflow read waits for the server (%s)", error or "writes buffered")
            time.sleep(delay)
            delay = min(2 * delay, self.retry_every_s)

    def real_id(self, run_id: str) -> str:
        return self.resolved.get(run_id, run_id)

    def _with_real_ids(self, op: dict[str, Any]) -> dict[str, Any]:
        """The op with every placeholder this writer has resolved replaced by the run's id."""
        if not self.resolved:
            return op
        op = dict(op)
        if "run_id" in op:
            op["run_id"] = self.real_id(op["run_id"])
        if op["op"] == "create_run":  # a child's parent tag
            op["tags"] = {k: self.real_id(v) for k, v in op["tags"].items()}
        return op

    def _send(self, op: dict[str, Any]) -> str | None:
        from mlflow.entities import Metric, Param, RunTag

        kind = op["op"]
        if kind == "create_run":
            tags = {k: self.real_id(v) for k, v in op["tags"].items()}  # a pending parent id
            run = self.client.create_run(op["experiment_id"], run_name=op["run_name"], tags=tags)
            self.resolved[op["placeholder"]] = run.info.run_id
            self.artifact_uris[run.info.run_id] = run.info.artifact_uri
            return run.info.run_id
        run_id = self.real_id(op["run_id"])
        if run_id.startswith(PENDING):
            raise RuntimeError(f"run {run_id} was never created")  # a corrupted buffer
        if kind == "log_batch":
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]],
                params=[Param(k, v) for k, v in op["params"]],
                tags=[RunTag(k, v) for k, v in op["tags"]],
            )
        elif kind == "set_terminated":
            self.client.set_terminated(run_id, status=op["status"])
        elif kind == "update_run":
            self.client.update_run(run_id, status=op["status"])
        elif kind == "delete_run":
            self.client.delete_run(run_id)
        elif kind == "log_inputs":
            self.client.log_inputs(run_id, datasets=as_dataset_inputs(op["inputs"]))
        elif kind == "log_artifact":
            self._log_artifact(run_id, op["path"], op.get("artifact_path"))
        return None

    def _log_artifact(self, run_id: str, path: str, artifact_path: str | None) -> None:
        """Upload a file; for a run this writer created, straight to the artifact location the
        server returned then (see `upload_artifact`)."""
        uri = self.artifact_uris.get(run_id)
        if uri is None:
            self.client.log_artifact(run_id, path, artifact_path)
            return
        upload_artifact(uri, self.client.tracking_uri, path, artifact_path)


#: the fields each kind of write needs (`artifact_path` of log_artifact may be missing)
OP_FIELDS = {
    "create_run": ("experiment_id", "run_name", "tags", "placeholder"),
    "log_batch": ("run_id", "metrics", "params", "tags"),
    "set_terminated": ("run_id", "status"),
    "update_run": ("run_id", "status"),
    "delete_run": ("run_id",),
    "log_inputs": ("run_id", "inputs"),
    "log_artifact": ("run_id", "path"),
}


def parse_op(line: bytes) -> dict[str, Any] | None:
    """One line of the queue file as a write, or None if it is not one (torn, garbled)."""
    try:
        op = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(op, dict) or op.get("op") not in OP_FIELDS:
        return None
    return op if all(field in op for field in OP_FIELDS[op["op"]]) else None


def load_queue(path: Path, skipped_path: Path | None = None) -> list[dict[str, Any]]:
    """The writes queued in `path`. Lines that are not writes (a torn last line from a crash
    mid-write, a garbled one) are skipped with a warning that names them, appended to
    `skipped_path`, and the file is rewritten without them, so that the next write appended
    does not join a torn line."""
    if not path.is_file():
        return []
    ops, skipped = [], []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        op = parse_op(line)
        if op is None:
            skipped.append((number, line))
        else:
            ops.append(op)
    if skipped:
        where = ", ".join(f"{n}: {line[:60]!r}" for n, line in skipped)
        kept = f"; kept aside in {skipped_path}" if skipped_path else ""
        log.warning(
            "%s: skipped %d unreadable line(s), kept the %d other write(s); lines %s%s",
            path,
            len(skipped),
            len(ops),
            where,
            kept,
        )
        if skipped_path:
            with open(skipped_path, "ab") as f:
                f.write(b"".join(line + b"\n" for _, line in skipped))
        save_queue(path, ops)
    return ops


def save_queue(path: Path, queue: list[dict[str, Any]]) -> None:
    if not queue:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(op) + "\n" for op in queue))
    tmp.replace(path)
