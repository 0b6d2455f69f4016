"""The stack's servers themselves: a real PostgreSQL that checks passwords and a real S3 API."""

from __future__ import annotations

import pytest

from tests.helpers import BUCKET, ObjectStore, Postgres


def test_postgres_runs_unprivileged_and_checks_passwords(postgres: Postgres) -> None:
    import psycopg

    url = postgres.create_database("servers_check")
    assert url.startswith("postgresql+psycopg://postgres:p%40ss%2Fw%3Ard-")
    with psycopg.connect(
        host=postgres.host,
        port=postgres.port,
        user="postgres",
        password=postgres.password,
        dbname="servers_check",
    ) as connection:
        user = connection.execute("SELECT usesuper FROM pg_user WHERE usename = 'postgres'")
        assert user.fetchone() == (True,)
        assert connection.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=postgres.host,
            port=postgres.port,
            user="postgres",
            password="wrong",
            dbname="postgres",
        )


def test_object_store_keeps_what_is_written(object_store: ObjectStore) -> None:
    client = object_store.client()
    client.put_object(Bucket=BUCKET, Key="check/a.txt", Body=b"curves")
    assert client.get_object(Bucket=BUCKET, Key="check/a.txt")["Body"].read() == b"curves"
    assert object_store.keys(BUCKET, "check/") == ["check/a.txt"]


def test_mlflow_server_keeps_runs_in_postgres_and_artifacts_in_the_bucket(
    stack_mlflow: str, object_store: ObjectStore, tmp_path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(stack_mlflow)
    experiment = client.create_experiment("servers-check")
    run = client.create_run(experiment)
    (tmp_path / "curve.txt").write_text("0.5 0.4")
    client.log_artifact(run.info.run_id, str(tmp_path / "curve.txt"))
    assert client.get_experiment(experiment).artifact_location.startswith("mlflow-artifacts:")
    stored = [k for k in object_store.keys(BUCKET, "mlflow/") if k.endswith("/curve.txt")]
    assert stored == [f"mlflow/{experiment}/{run.info.run_id}/artifacts/curve.txt"]
