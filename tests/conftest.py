"""Shared fixtures: one local 2-CPU Ray for the whole run, and a study folder per test."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tuner.spec.job import JobSpec, spec_from_dict

# the production stack's servers (PostgreSQL, S3, an MLflow server on both): tests/servers.py
pytest_plugins = ["tests.servers"]


class RayStarted(RuntimeError):
    """Raised by the stand-in for `ray.init`: validation let the input through to Ray."""


@pytest.fixture
def ray_starts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call of `ray.init` during the test (none expected); Ray is never really started,
    and a Ray that another test started is hidden, so no study can run."""
    import ray

    calls: list[dict[str, Any]] = []

    def fake_init(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs)
        raise RayStarted("ray.init was called: the input passed validation")

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    return calls


@pytest.fixture(autouse=True)
def forget_plugins() -> Iterator[None]:
    """After each test, drop every model and dataset a plug-in registered (and the plug-in's
    module), so that no test sees another's names. Loading a plug-in again re-imports it."""
    from trainables import plugins
    from trainables.data import DATASETS
    from trainables.models import MODELS

    yield
    owners = {r.owner(n) for r in (MODELS, DATASETS) for n in r.names()}
    owners |= {n for n, m in list(sys.modules.items()) if hasattr(m, plugins.SHA_ATTRIBUTE)}
    for owner in owners - {"trainables.data", "trainables.models"}:
        if owner.startswith("tests."):  # a test registered directly: its module stays
            MODELS.forget(owner)
            DATASETS.forget(owner)
        else:  # a plug-in: the next load imports it again
            plugins.forget(owner)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray with 2 CPUs, started once; `run_study` reuses it instead of its own."""
    import ray

    from tuner.driver.ray_internals import loopback_node
    from tuner.driver.study import QUIET_RAY

    os.environ.update(QUIET_RAY)
    with loopback_node():  # listening on 127.0.0.1 only, as a study's own Ray
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    yield
    ray.shutdown()


@pytest.fixture
def study_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh folder, so the default SQLite stores and results land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(command: list[str], **kwargs) -> subprocess.Popen:
    """A server in its own process group: MLflow's server forks uvicorn workers and a job
    runner that outlive a plain terminate() of their parent."""
    return subprocess.Popen(command, start_new_session=True, **kwargs)


def stop(process: subprocess.Popen) -> None:
    """Stop a `spawn`ed server and everything it started."""
    import signal

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
    from tuner.tracking.callback import UI_SERVER_ENV

    return {**os.environ, **UI_SERVER_ENV}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend; yields its http:// URI."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'server.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below
    process = spawn(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=server_env())
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", process)
        yield uri
    finally:
        stop(process)
        log.close()


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
