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


class Answered:
    """A yes/no probe answered once (`probe_databricks_once`)."""

    def __init__(self, value: bool):
        self.value = value

    def __call__(self) -> bool:
        return self.value


def probe_databricks_once() -> bool:
    """Ask once per process whether this process runs on Databricks, where MLflow asks again
    before every request: its Databricks request-header provider (cluster? notebook? job?) and,
    before ending a run, `set_terminated` (a notebook? then it prints no run URL). Each probe
    tries to import `dbruntime`, `pyspark` and `IPython` afresh (a failed import is not cached),
    ~1 ms of the writer thread's CPU per request on an idle core, more than the rest of the
    request's client side. A process does not move onto Databricks. Other header providers (a
    plug-in's may sign each request) are still asked every time. Idempotent; returns whether
    the header provider found Databricks."""
    from mlflow.tracking._tracking_service import client as tracking_service
    from mlflow.tracking.request_header.databricks_request_header_provider import (
        DatabricksRequestHeaderProvider,
    )
    from mlflow.tracking.request_header.registry import _request_header_provider_registry

    if not isinstance(tracking_service.is_in_databricks_notebook, Answered):
        notebook = bool(tracking_service.is_in_databricks_notebook())
        tracking_service.is_in_databricks_notebook = Answered(notebook)
    found = False
    for provider in _request_header_provider_registry:
        if isinstance(provider, DatabricksRequestHeaderProvider):
            if not isinstance(provider.in_context, Answered):
                provider.in_context = Answered(bool(provider.in_context()))
            found = found or provider.in_context()
    return found
