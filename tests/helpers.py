"""What the tests share, in one place (no test file imports another): what they start, real and
on 127.0.0.1 (a PostgreSQL from the `pgserver` wheel, run as an unprivileged user with password
authentication; an S3-compatible object store, moto's server mode; `mlflow server`s; Ray heads
and clusters with token auth; a headless Chromium) and the small builders several test files use
(a tiny spec, MLflow studies written by hand, fake Ray trials, image folders). `make test`
installs the servers (the `cluster` and `dev` extras) and, as root, creates the unprivileged
user PostgreSQL runs as; a missing part fails the test that needs it. Registered as a pytest
plug-in by conftest.py, so its fixtures need no import."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import re
import secrets
import selectors
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import numpy as np
import optuna
import pandas as pd
import psutil
import pytest
import yaml
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from trainables.data import Dataset
from tuner.cli import app
from tuner.driver.journal import JOURNAL_FILE, read_journal
from tuner.driver.progress import StudyRecorder
from tuner.spec.job_spec import JobSpec, spec_from_dict
from tuner.tracking import schema
from tuner.tracking.mlflow_callback import RUN_IDS_FILE, MlflowTracking
from tuner.tracking.mlflow_server import ui_server_command
from tuner.tracking.runs import client_for
from tuner.tracking.study_run import start_parent_run

POSTGRES_USER = "tuner-pg"  # the system user PostgreSQL runs as when the tests run as root
runner = CliRunner()
BUCKET = "tuner-test"


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL server; its superuser password has characters that URLs escape."""

    host: str
    port: int
    user: str
    password: str

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        secret = quote(self.password, safe="")
        return f"{driver}://{self.user}:{secret}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its SQLAlchemy URL (as Optuna and MLflow take it)."""
        import psycopg

        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
            autocommit=True,
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@dataclass(frozen=True)
class ObjectStore:
    """A running S3-compatible server; `env` is what every part reads to reach it."""

    endpoint: str
    env: dict[str, str]

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]


def postgres_bin() -> Path:
    """The server binaries inside the `pgserver` wheel (found without importing it: its import
    sets up per-user runtime folders the tests do not need)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "PostgreSQL is missing: the `pgserver` wheel ships its server (run `make test`)"
        )
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def unprivileged_user() -> pwd.struct_passwd | None:
    """Who PostgreSQL runs as: it refuses root, so as root the user `make test` created."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        pytest.fail(
            f"PostgreSQL refuses to run as root and the system user {POSTGRES_USER!r} is missing: "
            "`make test` creates it (make services)"
        )


def run_as(user: pwd.struct_passwd | None) -> dict:
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid}


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server on 127.0.0.1 with SCRAM password authentication."""
    bin_dir, user = postgres_bin(), unprivileged_user()
    folder = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
    folder.chmod(0o755)
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, password = folder / "data", f"p@ss/w:rd-{secrets.token_hex(4)}"
    password_file = folder / "password"
    password_file.write_text(password)
    if user is not None:
        os.chown(password_file, user.pw_uid, user.pw_gid)
    subprocess.run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
        ],
        check=True,
        capture_output=True,
        **run_as(user),
    )
    password_file.unlink()
    port = free_port()
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below
    process = spawn(
        [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port)]
        + ["-k", str(folder), "-c", "max_connections=200", "-c", "fsync=off"],
        stdout=log,
        stderr=subprocess.STDOUT,
        **run_as(user),
    )
    server = Postgres("127.0.0.1", port, "postgres", password)
    try:
        wait_for_postgres(server, process)
        yield server
    finally:
        stop(process)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def wait_for_postgres(server: Postgres, process: subprocess.Popen, timeout_s: float = 60) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode} (see its server.log)")
        try:
            psycopg.connect(
                host=server.host,
                port=server.port,
                user=server.user,
                password=server.password,
                dbname="postgres",
                connect_timeout=2,
            ).close()
            return
        except psycopg.OperationalError:
            time.sleep(0.3)
    raise TimeoutError(f"postgres did not accept connections within {timeout_s} s")


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1, with one bucket."""
    moto_server = Path(sys.executable).with_name("moto_server")
    if not moto_server.exists():
        pytest.fail("the S3 server is missing: moto's server mode (run `make test`)")
    folder = tmp_path_factory.mktemp("s3")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below
    process = spawn(
        [str(moto_server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "tuner-test-key",
        "AWS_SECRET_ACCESS_KEY": f"s3-secret-{secrets.token_hex(8)}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    store = ObjectStore(endpoint, env)
    try:
        wait_for_http(f"{endpoint}/moto-api/", process)
        store.create_bucket(BUCKET)
        yield store
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="session")
def stack_mlflow(
    postgres: Postgres, object_store: ObjectStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An `mlflow server` as a team runs it: runs in PostgreSQL, artifacts proxied to the
    bucket (`--artifacts-destination s3://`). Yields its http:// URI."""
    folder = tmp_path_factory.mktemp("stack-mlflow")
    port = free_port()
    with open(folder / "server.log", "w") as log:
        backend, artifacts = postgres.create_database("mlflow"), f"s3://{BUCKET}/mlflow"
        process = start_mlflow_server(folder, port, backend, artifacts, object_store.env, log)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)


@dataclass(frozen=True)
class RayHead:
    """A Ray cluster on 127.0.0.1 with token authentication, as a team starts one."""

    address: str  # the Jobs server, http://127.0.0.1:PORT ("" without a dashboard)
    gcs: str  # 127.0.0.1:PORT: what `tuner run --address` and other nodes take
    token: str
    temp_dir: Path
    env: dict[str, str]  # the nodes' environment: a driver of this cluster runs with it
    node_args: tuple[str, ...] = ()  # every node's size and address (`add_worker` reuses them)


@contextlib.contextmanager
def ray_head(
    num_cpus: int,
    env: dict[str, str] | None = None,
    *,
    num_gpus: int = 0,
    workers: int = 0,
    dashboard: bool = True,
    object_store_mb: int = 150,
) -> Iterator[RayHead]:
    """`ray start --head` (and `workers` more nodes of the same size), token auth on, the
    dashboard (the Jobs API) on 127.0.0.1 unless `dashboard` is false; killed by its processes
    at the end (`ray stop` would stop everybody's Ray). `env` joins the nodes' environment (what
    every job driver and trial inherits). Ready for jobs when it is yielded."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # short: Ray's unix sockets
    token = secrets.token_hex(32)
    node_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    node_env.update(
        PATH=f"{RAY.parent}{os.pathsep}{node_env.get('PATH', '')}",  # `python` for job drivers
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        **(env or {}),
        **{CLUSTER_MARKER: str(temp_dir)},
    )
    gcs_port, dashboard_port = free_port(), free_port()
    node = ["--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus)]
    node += ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    node += ["--object-store-memory", str(object_store_mb * 1024**2)]
    served = ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
    served += ["--dashboard-port", str(dashboard_port)]
    try:
        ray_start(
            ["--head", "--port", str(gcs_port), "--temp-dir", str(temp_dir), *node]
            + (served if dashboard else ["--include-dashboard", "false"])
            + ["--ray-client-server-port", str(free_port())]
            + ["--dashboard-agent-listen-port", str(free_port())],
            node_env,
            temp_dir,
        )
        jobs = f"http://127.0.0.1:{dashboard_port}" if dashboard else ""
        head = RayHead(jobs, f"127.0.0.1:{gcs_port}", token, temp_dir, node_env, tuple(node))
        for n in range(workers):
            add_worker(head, f"w{n}")
        if dashboard:
            wait_for_jobs(head)
        yield head
    finally:
        kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def add_worker(head: RayHead, name: str) -> None:
    """One more node of the head's size, with its own temp dir `name` under the head's (shared,
    the nodes would delete each other's job folders)."""
    ray_start(
        ["--address", head.gcs, "--temp-dir", str(head.temp_dir / name), *head.node_args]
        + ["--dashboard-agent-listen-port", str(free_port())],
        head.env,
        head.temp_dir,
    )


def node_raylet(head: RayHead, name: str) -> psutil.Process:
    """The raylet of the worker node `add_worker(head, name)` started."""
    folder = str(head.temp_dir / name)
    (raylet,) = [
        p
        for p in cluster_processes(head.temp_dir)
        if p.name() == "raylet" and folder in " ".join(p.cmdline())
    ]
    return raylet


def wait_for_jobs(head: RayHead, timeout_s: float = 90) -> None:
    """Until the Jobs API runs a probe job (its agent is up a while after `ray start`)."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with pytest.MonkeyPatch.context() as env:  # Ray prefers these to its argument
                env.delenv("RAY_ADDRESS", raising=False)
                env.delenv("RAY_API_SERVER_ADDRESS", raising=False)
                client = JobSubmissionClient(
                    head.address, headers={"Authorization": f"Bearer {head.token}"}
                )
            job = client.submit_job(entrypoint="python -c 'print(1 + 1)'")
        except (ConnectionError, RuntimeError):  # "No available agent to submit job" at first
            time.sleep(1)
            continue
        while not client.get_job_status(job).is_terminal():
            time.sleep(0.5)
        if client.get_job_status(job).value == "SUCCEEDED":
            return
        time.sleep(1)
    raise TimeoutError(f"the Ray head at {head.address} ran no job within {timeout_s} s")


def max_concurrency(events: list[dict[str, Any]]) -> int:
    """The most trials between their start and end events at once (an end before a start at
    the same instant)."""
    deltas = {"start": 1, "end": -1}
    edges = sorted((e["time"], deltas[e["event"]]) for e in events if e["event"] in deltas)
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    return peak


NUM_TRIALS = 10


def run_counts(db: Path) -> Counter:
    """Statuses of the runs a user sees (MLflow's deleted runs left out)."""
    query = "select status, count(*) from runs where lifecycle_stage = 'active' group by status"
    with sqlite3.connect(db) as conn:
        return Counter(dict(conn.execute(query)))


def assert_every_trial_once(
    tmp_path: Path,
    execution: str,
    journal: Path,
    trials: pd.DataFrame,
    journal_sees_every_start: bool = True,
    num_trials: int = NUM_TRIALS,
) -> tuple[Counter, set[str]]:
    """A resumed study's guarantees, from its SQLite MLflow and Optuna stores in `tmp_path`: each
    trial once in MLflow with its whole val_loss curve, Optuna told each trial once (superseded
    ones aside). A remote study's journal (`journal_sees_every_start=False`) is the copy that
    last reached the bucket: a trial that started and ended after it, before the kill, was told
    to Optuna but is in no journal. Returns Optuna's trial states and the superseded trial ids."""
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        names = [
            n
            for (n,) in db.execute(
                "select t.value from tags t join runs r on r.run_uuid = t.run_uuid "
                "where r.lifecycle_stage = 'active' and t.key = 'mlflow.runName' "
                "and t.value like 'trial-%'"
            )
        ]
        assert sorted(names) == [f"trial-{n:04d}" for n in range(1, num_trials + 1)]
        for _, row in trials.iterrows():
            steps = [
                s
                for (s,) in db.execute(
                    "select m.step from metrics m join tags t on t.run_uuid = m.run_uuid "
                    "join runs r on r.run_uuid = m.run_uuid "  # a superseded run is deleted
                    # the trial's own run, not its finalist re-runs (tagged with its id too)
                    "join tags role on role.run_uuid = m.run_uuid and role.key = 'tuner.role' "
                    "where r.lifecycle_stage = 'active' and t.key = 'tuner.trial_id' "
                    "and role.value = 'trial' "
                    "and t.value = ? and m.key = 'val_loss' order by m.step",
                    (row["trial_id"],),
                )
            ]
            assert steps == list(range(1, int(row["epochs"]) + 1)), (row["trial"], steps)

    study = optuna.load_study(study_name=execution, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = Counter(t.state for t in study.trials)
    ran = states[optuna.trial.TrialState.COMPLETE] + states[optuna.trial.TrialState.PRUNED]
    # a trial that started after Ray's last snapshot runs again under a new id; its first run
    # is deleted from MLflow. Optuna keeps what it learned from it if it ended before the crash
    # (one still running then is one the dead driver asked for and never finished: FAIL)
    events = read_journal(journal)
    superseded = {e["trial_id"] for e in events if e["event"] == "superseded"}
    # Ray tells the searcher a trial ended before the callback that journals it: a crash between
    # the two leaves a superseded trial told to Optuna but missing its "end" event
    told = {
        t.user_attrs[schema.TRIAL_ID_TAG]
        for t in study.trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    }
    assert len(told) == ran  # every Optuna trial carries Ray's trial id
    # the trials running at the crash, plus any that started and ended since Ray's last
    # snapshot (0.5 s apart here; a trial ASHA stops at its grace period can take less):
    # usually at most 2, seen 3 once; never most of the study
    assert len(superseded) < num_trials // 2, superseded
    final = set(trials["trial_id"])
    assert final <= told  # every trial that counts was told to Optuna, once
    extra = told - final  # superseded trials Optuna learned from before the crash
    assert ran == num_trials + len(extra) and len(extra) < num_trials // 2, extra
    if journal_sees_every_start:
        assert extra <= superseded, (extra, superseded)
    assert states[optuna.trial.TrialState.RUNNING] == 0
    assert states[optuna.trial.TrialState.FAIL] <= 2  # asked by the dead driver, never run
    return states, superseded


def save_ray_trials(folder: Path, trial_ids: list[str], session: str = "2026-01-01_00-00-00"):
    """A Ray experiment state file listing `trial_ids`, as Ray's TuneController saves it."""
    from ray.tune.experiment import Trial

    trials = [list(Trial("trainable", stub=True, trial_id=t).get_json_state()) for t in trial_ids]
    state = {"trial_data": trials, "runner_data": {}, "stats": {}}
    (folder / f"experiment_state-{session}.json").write_text(json.dumps(state))


def fake_trial(trial_id: str, number: int, error_file: str | None = None) -> SimpleNamespace:
    """What the callbacks read of Ray's Trial: enough to drive them without a study."""
    return SimpleNamespace(
        trial_id=trial_id,
        experiment_tag=f"{number}_lr=0.01",
        config={"lr": 0.01, "optimizer": "adam"},
        last_result={"epoch": 1},
        error_file=error_file,
    )


def callbacks(study_dir: Path) -> tuple[StudyRecorder, MlflowTracking, MlflowClient]:
    spec = tiny_spec(name="callbacks")
    client = client_for(spec.tracking.uri)
    experiment_id, parent_id = start_parent_run(client, spec, "callbacks-x", study_dir)
    recorder = StudyRecorder("val_loss", "min", max_epochs=2)
    tracking = MlflowTracking(spec, recorder, parent_id, experiment_id, study_dir / RUN_IDS_FILE)
    return recorder, tracking, client


def recorded_ops(tracking, delay_s: float = 0.0) -> list[str]:
    """The writes `tracking` sends from now on, by kind (each still sent, after `delay_s`)."""
    import time

    ops, write = [], tracking.writer._write

    def counted(op):
        ops.append(op["op"])
        time.sleep(delay_s)
        return write(op)

    tracking.writer._write = counted
    return ops


def drive(callbacks_: list, hook: str, trial, **kwargs) -> None:
    for callback in callbacks_:
        getattr(callback, hook)(iteration=0, trials=[trial], trial=trial, **kwargs)


EPOCH_1 = {"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "train_acc": 0.6, "val_acc": 0.55}


def make_study(client, name: str, objective: str, values: dict[int, float | None], **extra):
    """A parent run and one child run per trial number, with `best_<metric>` as given."""
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    metric = objective.split(":")[0]
    parent = client.create_run(
        experiment_id,
        run_name=f"{name}-exec",
        tags={
            schema.ROLE_TAG: schema.STUDY_ROLE,
            schema.STUDY_TAG: name,
            schema.EXECUTION_TAG: f"{name}-exec",
            schema.OBJECTIVE_TAG: objective,
            schema.MODEL_TAG: "mlp",
            schema.DATASET_TAG: json.dumps({"name": "digits"}),
        },
    )
    parent_id = parent.info.run_id
    for number, value in values.items():
        child = client.create_run(
            experiment_id,
            run_name=f"trial-{number:04d}",
            tags={
                schema.PARENT_TAG: parent_id,
                schema.ROLE_TAG: schema.TRIAL_ROLE,
                schema.TRIAL_NUMBER_TAG: str(number),
                schema.TRIAL_ID_TAG: f"t{number}",
                schema.CONFIG_TAG: json.dumps({"lr": 0.01 * number}),
                **extra.get("child_tags", {}),
            },
        )
        if value is not None:
            metrics = [Metric(schema.best(metric), value, 0, 0), Metric("best_epoch", 2, 0, 0)]
            client.log_batch(child.info.run_id, metrics=metrics)
        client.set_terminated(child.info.run_id)
    parent_metrics = [Metric(k, v, 0, 0) for k, v in extra.get("parent_metrics", {}).items()]
    client.log_batch(parent_id, metrics=parent_metrics)
    client.set_terminated(parent_id)
    return client.get_run(parent_id)


def take(digits: tuple[np.ndarray, np.ndarray], classes: list[int], n: int, start: int = 0):
    """`n` images of each of `classes`, from the `start`-th of each class on."""
    x, y = digits
    index = np.concatenate([np.flatnonzero(y == c)[start : start + n] for c in classes])
    return x[index], y[index]


def write_classes(
    folder: Path, images: np.ndarray, labels: np.ndarray, fmt: str = "png", prefix: str = "c"
) -> list[Path]:
    """folder/<prefix><label>/<i>.<fmt>, one file per image (HxW gray or HxWx3 RGB)."""
    files = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / f"{prefix}{label}" / f"{i:04d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, **({"quality": 95} if fmt == "jpg" else {}))
        files.append(path)
    return files


RAY = Path(sys.executable).with_name("ray")  # the venv's `ray` CLI, next to its python


JOB_ID = re.compile(r"Submitted job (\S+)")


def ray_start(args: list[str], env: dict[str, str], cwd: Path) -> None:
    proc = subprocess.run(
        [str(RAY), "start", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ray start {args} failed:\n{proc.stdout}\n{proc.stderr}")


#: set in the environment of this test's `ray start`s; the value is the cluster's temp dir
CLUSTER_MARKER = "TUNER_TEST_RAY_CLUSTER"


def cluster_processes(temp_dir: Path) -> list[psutil.Process]:
    """The processes this test's cluster started: they inherited the marker from `ray start`."""
    me = psutil.Process()
    spared = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in spared:
            continue
        with contextlib.suppress(psutil.Error):  # gone, a zombie, or another user's
            if proc.environ().get(CLUSTER_MARKER) == str(temp_dir):
                found.append(proc)
    return found


def kill_cluster(temp_dir: Path) -> None:
    """Kill the cluster's processes (see `cluster_processes`) and their children."""
    roots = cluster_processes(temp_dir)
    procs = {p.pid: p for p in roots}
    for root in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.update({c.pid: c for c in root.children(recursive=True)})
    for proc in procs.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    deadline = time.monotonic() + 3
    while (alive := [p for p in procs.values() if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (daemons reparented to an init that does not reap them)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def submit(spec: Path, address: str, *extra: str) -> str:
    result = runner.invoke(app, ["submit", str(spec), "--address", address, *extra])
    assert result.exit_code == 0, result.output
    assert f"tuner logs {JOB_ID.search(result.output).group(1)} --follow" in result.output
    return JOB_ID.search(result.output).group(1)


def wait_for_status(job: str, address: str, wanted: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        result = runner.invoke(app, ["status", job, "--address", address])
        status = result.output.split(":", 1)[1].split()[0]
        assert result.exit_code == (1 if status in ("FAILED", "STOPPED") else 0), result.output
        if status in wanted or status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(2)
    raise TimeoutError(f"job {job} still {status} after {timeout_s} s")


FIGURES = 6  # history, curves, gap, ASHA, parallel coordinates, importances (+ the top-k table)


CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def system_chromium() -> str:
    """The Chromium on PATH (Debian's package; `make test` installs it when missing)."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail(
        "Chromium is not installed, and the dashboard tests draw the report in it: run them "
        "with `make test`, which installs it (Debian, as root), or install it yourself "
        "(sudo apt-get install chromium) or put a chromium on PATH",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def browser() -> Iterator:
    path = system_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str) -> tuple:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.goto(url)
    page.wait_for_load_state("load")
    return page, problems


def open_report(browser, url: str) -> tuple:
    """The report once its loader has inflated plotly.js and drawn the figures (or failed)."""
    page, problems = open_page(browser, url)
    page.wait_for_function("() => document.body.dataset.plotly !== undefined", timeout=60_000)
    assert page.evaluate("() => document.body.dataset.plotly") == "drawn", problems
    return page, problems


def tiny_spec(**sections: Any) -> JobSpec:
    """A small study spec (digits MLP, 2 epochs); keyword sections override the defaults."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search": {"num_samples": 2, "max_concurrent": 2, "seed": 0},
        "scheduler": {"name": "fifo", "max_epochs": 2},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return spec_from_dict(raw)


def spec_file(folder: Path, raw: dict[str, Any], **sections: Any) -> Path:
    """`raw` with `sections` over it, its MLflow store (SQLite) and results folder in `folder`,
    written as folder/spec.yaml: the spec a test hands to a `tuner` process."""
    stores = {
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"},
        "storage": str(folder / "results"),
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({**raw, **stores, **sections}))
    return path


def tuner_run_on(
    address: str, env: dict[str, str], spec: Path, columns: int = 200
) -> subprocess.CompletedProcess:
    """`tuner run SPEC --address ADDRESS` in its own process, in the spec's folder, with `env`
    (the cluster's nodes' environment), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "tuner", "run", str(spec), "--address", address],
        env={**env, "COLUMNS": str(columns)},
        cwd=spec.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


def journal_events(results: Path) -> list[dict]:
    """The events of the one study journal under a `storage` folder (none before it exists)."""
    files = list(results.glob(f"*/{JOURNAL_FILE}"))
    return read_journal(files[0]) if files else []


def killed_mid_study(
    folder: Path,
    spec: dict[str, Any],
    enough: Callable[[list[dict]], bool],
    env: dict[str, str] | None = None,
) -> Path:
    """`tuner run` of `spec` in `folder`, its process group (the driver and the local Ray it
    started) killed as a reboot would once its journal's events are `enough`; returns the
    study's results folder."""
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    driver = subprocess.Popen(
        [sys.executable, "-m", "tuner", "run", "spec.yaml"],
        cwd=folder,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = folder / "tuner-results"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        if enough(journal_events(results)):
            break
        time.sleep(0.1)
    assert driver.poll() is None, "the study ended before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    (study,) = results.iterdir()
    return study


def resume_in_a_new_process(
    study: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`tuner resume STUDY` in a fresh process, which must succeed."""
    resumed = subprocess.run(
        [sys.executable, "-m", "tuner", "resume", str(study)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return resumed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ctrl_c_reaches_it() -> None:
    """`preexec_fn` of a process a test will interrupt: Ctrl-C acts on it as on a command typed
    at a terminal. A shell without job control starts background commands with SIGINT ignored,
    and every child inherits that (the suite run in the background, as CI may run it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(command: list[str], **kwargs) -> subprocess.Popen:
    """A server in its own process group: MLflow's server forks uvicorn workers and a job
    runner that outlive a plain terminate() of their parent."""
    return subprocess.Popen(command, start_new_session=True, **kwargs)


def stop(process: subprocess.Popen) -> None:
    """Stop a `spawn`ed server and everything it started."""

    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group
            return
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue


def listening_sockets(root: Any) -> list[dict[str, Any]]:
    """The TCP sockets that a psutil process and its descendants listen on."""
    import psutil

    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = "driver" if proc.pid == root.pid else " ".join(proc.cmdline())
            sockets = proc.net_connections(kind="tcp")
        except psutil.Error:  # exited meanwhile
            continue
        found += [
            {"process": name[:120], "ip": c.laddr.ip, "port": c.laddr.port}
            for c in sockets
            if c.status == psutil.CONN_LISTEN
        ]
    return found


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv4-mapped IPv6 address (::ffff:127.0.0.1)."""
    import ipaddress

    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def server_env() -> dict[str, str]:
    """An `mlflow server`'s environment without its GenAI job runner (as `tuner ui` runs it):
    starting its workers took 24 s instead of 6 on a busy 2-core machine."""
    from tuner.tracking.mlflow_server import UI_SERVER_ENV

    return {**os.environ, **UI_SERVER_ENV}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend; yields its http:// URI."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    with open(folder / "server.log", "w") as log:
        process = start_mlflow_server(folder, port, log=log)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)


@dataclass(frozen=True)
class AuthServer:
    """An `mlflow server --app-name basic-auth` (MLflow's login): its admin account, from the
    auth config file it was started with; every request needs a user's password."""

    uri: str
    admin: tuple[str, str]

    def create_user(self, username: str, password: str) -> None:
        """A plain account (the config's default permission: READ; it manages what it creates),
        made through the server's REST API by the admin, as a team's admin does."""
        import requests

        response = requests.post(
            f"{self.uri}/api/2.0/mlflow/users/create",
            json={"username": username, "password": password},
            auth=self.admin,
            timeout=30,
        )
        response.raise_for_status()


@pytest.fixture(scope="module")
def mlflow_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """A real MLflow server with MLflow's basic-auth app on 127.0.0.1 (SQLite for runs and
    for users), its admin configured through the auth config file (MLFLOW_AUTH_CONFIG_PATH)."""
    folder = tmp_path_factory.mktemp("mlflow-auth")
    admin = ("admin", f"adm1n-{secrets.token_hex(8)}")
    config = folder / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'users.db'}\n"
        f"admin_username = {admin[0]}\n"
        f"admin_password = {admin[1]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    with open(folder / "server.log", "w") as log:
        process = start_mlflow_server(folder, port, log=log, auth_config=config)
        try:
            yield AuthServer(f"http://127.0.0.1:{port}", admin)
        finally:
            stop(process)


def start_mlflow_server(
    folder: Path,
    port: int,
    backend_uri: str | None = None,
    artifacts: str | None = None,
    env: dict[str, str] | None = None,
    log: Any = subprocess.DEVNULL,
    auth_config: Path | None = None,
) -> subprocess.Popen:
    """`mlflow server` as `tuner ui` starts it, on 127.0.0.1:`port` (SQLite and artifacts in
    `folder` unless given), once its /health answers; stopped by `stop`. With `auth_config`,
    MLflow's basic-auth app, configured by that file (users, admin, default permission)."""
    backend_uri = backend_uri or f"sqlite:///{folder / 'server.db'}"
    command = ui_server_command(backend_uri, "127.0.0.1", port, artifacts or folder / "artifacts")
    if auth_config is not None:
        command += ["--app-name", "basic-auth"]
        env = {
            **(env or {}),
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),  # its CSRF protection
        }
    process = spawn(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
        env={**server_env(), **(env or {})},
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process, timeout_s=120)
    except BaseException:
        stop(process)
        raise
    return process


@contextlib.contextmanager
def tuner_ui(tracking_uri: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """`tuner ui` on a free port, as a user starts it; yields (port, process) once it answers."""
    port = free_port()
    process = spawn(
        [sys.executable, "-m", "tuner", "ui", "--port", str(port), "--tracking-uri", tracking_uri],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process)
        yield port, process
    finally:
        stop(process)


def class_shares(y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(y, minlength=num_classes) / len(y)


def assert_stratified(data: Dataset, tolerance: float = 0.02) -> None:
    full = np.concatenate([data.y_train, data.y_val])
    expected = class_shares(full, data.num_classes)
    assert np.abs(class_shares(data.y_val, data.num_classes) - expected).max() <= tolerance
    assert np.abs(class_shares(data.y_train, data.num_classes) - expected).max() <= tolerance


def assert_standardised(x: np.ndarray, tol: float = 1e-3) -> None:
    assert abs(float(x.mean())) < tol
    assert abs(float(x.std()) - 1.0) < tol


class OutageProxy:
    """A TCP relay on 127.0.0.1 in front of a server (MLflow's, PostgreSQL) that can play an
    outage at a chosen moment, for free (restarting the server costs seconds): while it is down,
    every request, on a new or a kept-alive connection, gets a connection reset, as from a
    server that died. A request relayed before the outage gets its response, so no write is
    half done."""

    def __init__(self, upstream: str):
        self.upstream = ("127.0.0.1", int(upstream.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.down = threading.Event()
        self.outages = 0
        self.turned_away = 0  # requests reset while down
        self._closed = False
        self._thread = threading.Thread(target=self._relay, name="outage-proxy", daemon=True)
        self._thread.start()

    def outage(self, min_s: float, max_s: float = 60.0) -> None:
        """Go down now; come back `min_s` after the first request was turned away (so a client
        meets the outage for that long, whatever the phase: a connection pool's own quick
        reconnect does not slip past it), or after `max_s`."""
        self.down.set()
        self.outages += 1
        turned_away = self.turned_away

        def come_back() -> None:
            started = time.monotonic()
            first_seen: float | None = None
            while time.monotonic() - started < max_s:
                if first_seen is None and self.turned_away != turned_away:
                    first_seen = time.monotonic()
                if first_seen is not None and time.monotonic() - first_seen >= min_s:
                    break
                time.sleep(0.05)
            self.down.clear()

        threading.Thread(target=come_back, name="outage-end", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._thread.join()

    def _relay(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        while not self._closed:
            for key, _ in selector.select(timeout=0.1):
                if key.fileobj is self.listener:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(self.upstream)
                    selector.register(client, selectors.EVENT_READ, (upstream, True))
                    selector.register(upstream, selectors.EVENT_READ, (client, False))
                    continue
                sock, (peer, from_client) = key.fileobj, key.data
                if sock.fileno() == -1:  # closed with its peer earlier in this round
                    continue
                try:
                    data = sock.recv(1 << 16)
                    if data and from_client and self.down.is_set():
                        self.turned_away += 1
                        data = b""
                        reset(sock)
                    if data:
                        peer.sendall(data)
                        continue
                except OSError:
                    pass
                for s in (sock, peer):
                    if s.fileno() != -1:
                        selector.unregister(s)
                        s.close()
        for key in list(selector.get_map().values()):
            key.fileobj.close()


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (what the client of a dead server sees), not a clean FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def python_in_checkout(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python, this checkout importable; its output captured."""
    checkout = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def printed_json(code: str, marker: str, cwd: Path) -> Any:
    """Run `code` in a fresh Python (this checkout importable) and return the JSON it printed
    on its last line starting with `marker`."""
    done = python_in_checkout(code, cwd)
    lines = [line for line in done.stdout.splitlines() if line.startswith(f"{marker} ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix(f"{marker} "))
