"""Every use of MLflow's internal API, one function each (tests/test_mlflow_internals.py checks
each). pyproject pins MLflow to the minor version these were tested on."""

from __future__ import annotations


def upload_artifact(artifact_uri: str, tracking_uri: str, path: str, artifact_path: str | None):
    """Upload a file straight to a run's artifact location. MlflowClient.log_artifact first
    fetches the whole run again to find that location (one more request per trial, the heaviest
    a trial makes); a writer that created the run already knows it."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(artifact_uri, tracking_uri=tracking_uri).log_artifact(
        path, artifact_path
    )


def create_store_tables(sqlalchemy_url: str) -> None:
    """Make an empty MLflow tracking store's tables (every schema migration run) in the database
    at `sqlalchemy_url`, without the Default experiment a store adds when it first opens: what
    `SqlAlchemyStore` runs on a database that has no tables."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    engine = sqlalchemy.create_engine(sqlalchemy_url)
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
