"""`mlflow server` as tuner starts it: `tuner ui` on a study's store, and the tests' and
benchmarks' servers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_GRACE_S = 10

#: the environment of the server: MLflow 3's job runner (about ten huey worker processes for
#: GenAI jobs: ~20 s of CPU as they start, ~1 GB) does nothing for tuning studies
UI_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_server_command(
    backend_uri: str, host: str, port: int, artifacts_destination: str | Path | None = None
) -> list[str]:
    """`mlflow server` as `tuner ui` runs it (start it with `UI_SERVER_ENV`). A new SQLite store
    is put in place first (`store_template`), which spares the server MLflow's migrations."""
    from tuner.tracking.store_template import prepare_new_store

    prepare_new_store(backend_uri)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri]
    if artifacts_destination is not None:
        command += ["--artifacts-destination", str(artifacts_destination)]
    # one worker: a UI for one person; MLflow's default 4 uvicorn workers take ~1 GB
    return [*command, "--host", host, "--port", str(port), "--workers", "1"]


def serve_until_stopped(command: list[str], env: dict[str, str]) -> int:
    """Run the server in the foreground until it exits, or until this process is told to stop
    (Ctrl-C, or SIGTERM or SIGHUP from a process manager): the server and the uvicorn workers
    it forks, in a process group of their own, stop with it. Returns the server's exit code (0
    when it was stopped)."""
    server = subprocess.Popen(command, env=env, start_new_session=True)
    stopped = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    deadline = None
    try:
        while (code := server.poll()) is None:
            if stopped and deadline is None:
                deadline = time.monotonic() + STOP_GRACE_S
            if deadline is not None and time.monotonic() > deadline:  # it ignored SIGTERM
                os.killpg(server.pid, signal.SIGKILL)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(ProcessLookupError):  # workers that outlived the server
            os.killpg(server.pid, signal.SIGTERM)
    return 0 if stopped else code
