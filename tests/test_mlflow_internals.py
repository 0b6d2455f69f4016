"""Each use of MLflow's internal API (tuner/internals/mlflow_internals.py) against the installed
MLflow: when MLflow changes, the test of the function that broke names it."""

from __future__ import annotations

import builtins
import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow.tracking.request_header.registry import resolve_request_headers
from mlflow.utils import databricks_utils

from tuner.internals.mlflow_internals import (
    create_store_tables,
    probe_databricks_once,
    upload_artifact,
)
from tuner.tracking.buffer import HTTP_SETTINGS


def test_upload_artifact_puts_the_file_where_the_run_lists_it(tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    source = tmp_path / "curve.png"
    source.write_bytes(b"\x89PNG not really")
    upload_artifact(run.info.artifact_uri, client.tracking_uri, str(source), "figures")
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == [
        "figures/curve.png"
    ]
    local = client.download_artifacts(run.info.run_id, "figures/curve.png", str(tmp_path / "d"))
    assert Path(local).read_bytes() == source.read_bytes()


def test_create_store_tables_makes_a_store_mlflow_opens_without_migrating(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    create_store_tables(f"sqlite:///{db}")
    with sqlite3.connect(db) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert {"experiments", "runs", "metrics", "alembic_version"} <= tables
        assert connection.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
    assert [e.name for e in MlflowClient(f"sqlite:///{db}").search_experiments()] == ["Default"]


#: what MLflow's Databricks probes try to import, each time (none of them is installed here)
DATABRICKS_MODULES = ("dbruntime", "pyspark", "IPython")


@pytest.fixture
def databricks_probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The imports MLflow's Databricks probes attempt from now on (each still attempted)."""
    calls: list[str] = []
    real_import = builtins.__import__

    def counting(name, *args, **kwargs):
        if name.split(".")[0] in DATABRICKS_MODULES:
            calls.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", counting)
    return calls


def test_the_probes_are_what_costs(databricks_probes) -> None:
    """The premise of `probe_databricks_once`: unanswered, a probe attempts these imports."""
    databricks_utils.is_in_databricks_notebook()
    databricks_utils.is_in_cluster()
    assert databricks_probes


def test_probe_databricks_once_leaves_requests_without_probes(databricks_probes) -> None:
    assert probe_databricks_once() is False  # not on Databricks
    assert probe_databricks_once() is False  # idempotent
    databricks_probes.clear()
    headers = resolve_request_headers()  # what MLflow does before every request
    assert databricks_probes == []
    assert headers["User-Agent"].startswith("mlflow-python-client/")


def test_ending_a_run_on_a_server_probes_nothing_after_probe_databricks_once(
    mlflow_server: str, databricks_probes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """set_terminated asks whether this is a Databricks notebook (to print the run's URL there)
    before its request; the answer found once stands (a study prints no URL: HTTP_SETTINGS)."""
    for name, value in HTTP_SETTINGS.items():
        monkeypatch.setenv(name, value)
    probe_databricks_once()
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.create_run(client.create_experiment("probe-once"))
    databricks_probes.clear()
    client.set_terminated(run.info.run_id, status="FINISHED")
    assert databricks_probes == []
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
