"""Each use of MLflow's internal API (tuner/internals/mlflow_internals.py) against the installed
MLflow: when MLflow changes, the test of the function that broke names it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mlflow.tracking import MlflowClient

from tuner.internals.mlflow_internals import create_store_tables, upload_artifact


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
