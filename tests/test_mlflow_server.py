"""tuner/tracking/mlflow_server.py: `tuner ui`'s server, which stops with `tuner ui` however that
is stopped: Ctrl-C, or SIGTERM or SIGHUP sent to its PID alone, as a process manager does."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.helpers import free_port


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.integration  # a real `mlflow server` and its workers
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_the_ui_server_and_its_workers_stop_with_tuner_ui(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    port = free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ui = subprocess.Popen(
        [sys.executable, "-m", "tuner", "ui", "--port", str(port), "--tracking-uri", uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 90
        while not answers(port) and time.monotonic() < deadline and ui.poll() is None:
            time.sleep(0.5)
        assert answers(port), "the UI never answered"
        server = psutil.Process(ui.pid).children(recursive=True)
        assert server, "tuner ui started no server process"

        ui.send_signal(stop_signal)  # to tuner ui's PID only, not its process group
        assert ui.wait(timeout=30) == 0
        gone, alive = psutil.wait_procs(server, timeout=15)
        assert alive == [], [p.pid for p in alive]
        assert not answers(port)
    finally:  # a failed test leaves nothing running: the processes this test started
        for process in [psutil.Process(ui.pid), *server] if ui.poll() is None else server:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
