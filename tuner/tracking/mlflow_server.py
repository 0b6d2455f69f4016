"""`mlflow server` as tuner starts it: `tuner ui` on a study's store, and the tests' and
benchmarks' servers."""

from __future__ import annotations

import sys
from pathlib import Path

#: the environment of the server: MLflow 3's job runner (about ten huey worker processes for
#: GenAI jobs: ~20 s of CPU as they start, ~1 GB) does nothing for tuning studies
UI_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_server_command(
    backend_uri: str, host: str, port: int, artifacts_destination: str | Path | None = None
) -> list[str]:
    """`mlflow server` as `tuner ui` runs it (start it with `UI_SERVER_ENV`)."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri]
    if artifacts_destination is not None:
        command += ["--artifacts-destination", str(artifacts_destination)]
    # one worker: a UI for one person; MLflow's default 4 uvicorn workers take ~1 GB
    return [*command, "--host", host, "--port", str(port), "--workers", "1"]
