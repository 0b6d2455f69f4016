"""`tuner doctor`: what a study started here would run with, on one screen.

The versions of the stack against the windows tuner was tested with, the GPUs torch sees, and
whether the Ray cluster, the MLflow tracking store and the Optuna storage answer. Each check is
one function returning a `Finding`; none writes anything (a SQLite file that does not exist yet
is reported, not created), and every URL is shown with its secrets hidden.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tuner.cluster.jobs import cluster_ray_version
from tuner.cluster.redaction import redact
from tuner.errors import TunerError, brief
from tuner.versions import installed_version, key_packages

TIMEOUT_S = 5.0
SQLITE = "sqlite:///"


@dataclass(frozen=True)
class Finding:
    """One line of the report: ok is True (fine), False (a problem) or None (for information)."""

    topic: str
    detail: str
    ok: bool | None = None


def versions() -> list[Finding]:
    found = [
        Finding("tuner", importlib.metadata.version("tuner")),
        Finding("python", f"{platform.python_version()} ({platform.python_implementation()})"),
    ]
    for package in key_packages():
        detail = f"{package.installed or 'not installed'} (tested: {package.tested})"
        found.append(Finding(package.name, detail, package.ok))
    return found


def gpus() -> Finding:
    """torch's build (CUDA or CPU) and each GPU it sees, with its memory."""
    import torch

    if torch.version.cuda is None:
        return Finding("GPUs", f"none: torch {torch.__version__} is a CPU build")
    if not torch.cuda.is_available():
        return Finding("GPUs", f"none visible to torch's CUDA {torch.version.cuda} build", False)
    devices = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        devices.append(f"{index}: {properties.name}, {properties.total_memory / 2**30:.0f} GiB")
    return Finding("GPUs", f"CUDA {torch.version.cuda}; " + "; ".join(devices), True)


def ray_cluster(address: str | None) -> Finding:
    """The cluster at `address` (else $RAY_ADDRESS): a Jobs server's version, or for a driver
    address ('auto', ray://, HOST:PORT) the cluster's nodes and resources."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        return Finding("Ray cluster", "none given (--address or RAY_ADDRESS): studies run locally")
    try:
        if address.startswith(("http://", "https://")):
            version, here = cluster_ray_version(address), installed_version("ray")
            detail = f"{redact(address)}: Jobs server, Ray {version}"
            if version != here:
                detail += f" (this machine has Ray {here}: submitted jobs may fail)"
            return Finding("Ray cluster", detail, version == here)
        return Finding("Ray cluster", f"{redact(address)}: {cluster_size(address)}", True)
    except TunerError as exc:
        return Finding("Ray cluster", redact(str(exc)), False)


def cluster_size(address: str) -> str:
    import ray

    from tuner.cluster.jobs import ClusterError, listens
    from tuner.driver.ray_session import ray_session

    if address != "auto" and not listens(address, TIMEOUT_S):
        raise ClusterError(f"{address}: nothing answers there")
    with ray_session(address):
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        resources = ray.cluster_resources()
    return (
        f"{len(nodes)} node(s), {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
    )


def tracking_store(uri: str) -> Finding:
    """An MLflow server answers its health check; a database accepts a connection."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                answer = response.read(100).decode(errors="replace").strip()
            return Finding("MLflow tracking", f"{redact(uri)}: answers ({answer})", True)
        except (urllib.error.URLError, OSError) as exc:
            detail = f"{redact(uri)}: no answer ({redact(str(exc))})"
            return Finding("MLflow tracking", detail, False)
    return database("MLflow tracking", uri, "tracking.uri")


def optuna_storage(url: str) -> Finding:
    return database("Optuna storage", url, "search.storage")


def database(topic: str, url: str, key: str) -> Finding:
    """A SQLite file is looked at, never created; a server database runs `SELECT 1`."""
    if url.startswith(SQLITE):
        path = Path(url.removeprefix(SQLITE))
        if not path.exists():
            return Finding(topic, f"{url}: not created yet (the first study creates it)", True)
        return Finding(topic, f"{url}: {path.stat().st_size / 2**20:.1f} MiB", True)
    if "://" not in url or url.startswith("file:"):
        return Finding(topic, f"{redact(url)}: not a database or server URL; not checked")
    import sqlalchemy

    from tuner.cluster.databases import remember, reveal, sqlalchemy_url

    try:
        real = sqlalchemy_url(remember(reveal(url)), key)
        connect_args = {"connect_timeout": int(TIMEOUT_S)} if real.startswith("postgresql") else {}
        engine = sqlalchemy.create_engine(real, connect_args=connect_args)
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        finally:
            engine.dispose()
    except (sqlalchemy.exc.SQLAlchemyError, TunerError) as exc:
        detail = brief(str(getattr(exc, "orig", None) or exc))
        return Finding(topic, f"{redact(url)}: no answer ({redact(detail)})", False)
    return Finding(topic, f"{redact(url)}: answers", True)


def examine(address: str | None, tracking_uri: str, storage: str) -> list[Finding]:
    """Every check, in the order the report prints them."""
    return [
        *versions(),
        gpus(),
        ray_cluster(address),
        tracking_store(tracking_uri),
        optuna_storage(storage),
    ]
