"""The production stack's servers, real and on 127.0.0.1, for the tests that need them:
PostgreSQL (the server binaries of the `pgserver` wheel, run as an unprivileged user with
password authentication), an S3-compatible object store (moto's server mode), and an MLflow
server backed by both. `make test` installs them (the `cluster` extra) and, as root, creates
the unprivileged user PostgreSQL runs as; a missing part fails the test that needs it."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import free_port, server_env, spawn, stop, wait_for_http

POSTGRES_USER = "tuner-pg"  # the system user PostgreSQL runs as when the tests run as root
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
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        postgres.create_database("mlflow"),
        "--artifacts-destination",
        f"s3://{BUCKET}/mlflow",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below
    process = spawn(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
        env={**server_env(), **object_store.env},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", process, timeout_s=120)
        yield uri
    finally:
        stop(process)
        log.close()


@dataclass(frozen=True)
class RayHead:
    """A one-node Ray cluster with token authentication and its Jobs API on 127.0.0.1."""

    address: str  # the Jobs server, http://127.0.0.1:PORT
    gcs: str  # 127.0.0.1:PORT, what other nodes (`ray start --address`) join
    token: str
    temp_dir: Path


@contextlib.contextmanager
def ray_head(num_cpus: int, env: dict[str, str] | None = None) -> Iterator[RayHead]:
    """`ray start --head` as a team starts it (token auth on, dashboard = Jobs API), killed by
    its processes at the end (see tests/test_jobs.py: `ray stop` would stop everybody's Ray).
    `env` joins the nodes' environment (what every job driver and trial inherits)."""
    from tests.test_jobs import CLUSTER_MARKER, RAY, kill_cluster, ray_start

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
    try:
        ray_start(
            ["--head", "--port", str(gcs_port), "--temp-dir", str(temp_dir)]
            + ["--num-cpus", str(num_cpus), "--num-gpus", "0", "--node-ip-address", "127.0.0.1"]
            + ["--object-store-memory", str(150 * 1024**2), "--disable-usage-stats"]
            + ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
            + ["--dashboard-port", str(dashboard_port), "--ray-client-server-port"]
            + [str(free_port()), "--dashboard-agent-listen-port", str(free_port())],
            node_env,
            temp_dir,
        )
        head = RayHead(
            f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{gcs_port}", token, temp_dir
        )
        wait_for_jobs(head)
        yield head
    finally:
        kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


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
