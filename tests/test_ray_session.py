"""tuner/driver/ray_session.py: the Ray a study starts listens on loopback only, a loopback
cluster address is reached on loopback, and Ray is shut down last, on the main thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from tests.helpers import is_loopback, listening_sockets
from tuner.driver.journal import JOURNAL_FILE
from tuner.results.dashboard_data import REPORT_FILE
from tuner.results.summary import TRIALS_FILE

ROOT = Path(__file__).resolve().parents[1]


#: in a fresh process, so that the Ray `ray_session` starts is its own and descends from it
LOCAL_RAY_SOCKETS = """
import json, psutil, ray
from tests.helpers import listening_sockets
from tuner.driver.ray_session import ray_session

with ray_session(num_cpus=1):
    ray.get(ray.remote(lambda: 0).remote())  # a worker, beside the GCS, raylet and agents
    print("SOCKETS", json.dumps(listening_sockets(psutil.Process())))
"""
RAY_PROCESSES = ("driver", "gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent", "ray::")


def seen_processes(sockets: list[dict]) -> set[str]:
    return {kind for s in sockets for kind in RAY_PROCESSES if kind in s["process"]}


def printed_json(code: str, marker: str, cwd: Path) -> Any:
    """Run `code` in a fresh Python (this checkout importable) and return the JSON it printed
    on its last line starting with `marker`."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(f"{marker} ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix(f"{marker} "))


@pytest.mark.integration  # a local Ray started in its own process
def test_a_study_s_local_ray_listens_on_127_0_0_1_only(tmp_path: Path) -> None:
    sockets = printed_json(LOCAL_RAY_SOCKETS, "SOCKETS", tmp_path)
    assert seen_processes(sockets) == set(RAY_PROCESSES), sockets
    assert [s for s in sockets if not is_loopback(s["ip"])] == []


@pytest.mark.usefixtures("ray_local")
def test_the_tests_ray_listens_on_127_0_0_1_only() -> None:
    ray.get(ray.remote(lambda: 0).remote())
    sockets = listening_sockets(psutil.Process())
    assert {"gcs_server", "raylet", "ray::"} <= seen_processes(sockets), sockets
    assert [s for s in sockets if not is_loopback(s["ip"])] == []


def test_a_loopback_cluster_address_is_reached_on_loopback() -> None:
    from tuner.driver.ray_session import is_loopback_address

    for address in ("127.0.0.1:6379", "localhost:6379", "ray://127.0.0.1:10001", "[::1]:6379"):
        assert is_loopback_address(address), address
    for address in ("10.0.0.5:6379", "head.example.org:6379", "auto", "ray://HEAD:10001"):
        assert not is_loopback_address(address), address


#: a whole study in a fresh process (its own local Ray), noting where Ray is shut down
SHUTDOWN_WHEN = """
import json, pathlib, threading, ray
from tests.helpers import tiny_spec
from tuner.driver.study import run_study

real_shutdown, seen = ray.shutdown, []

def shutdown(*args, **kwargs):
    files = sorted(p.name for p in pathlib.Path("results").glob("*/*") if p.is_file())
    seen.append({"main": threading.current_thread() is threading.main_thread(), "files": files})
    real_shutdown(*args, **kwargs)

ray.shutdown = shutdown
spec = tiny_spec(storage="results", tracking={"uri": "sqlite:///mlflow.db"})
spec.search.num_samples = 1
run_study(spec, show_progress=False, num_cpus=1)
print("SHUTDOWNS", json.dumps(seen))
"""


@pytest.mark.integration  # a whole study in its own process
def test_ray_is_shut_down_on_the_main_thread_after_the_results_are_written(
    tmp_path: Path,
) -> None:
    """Ray's shutdown in a thread while the main thread still wrote results (and dropped Ray
    objects) crashed a job's driver after its last trial; it comes last, on the main thread."""
    (shutdown, *_) = printed_json(SHUTDOWN_WHEN, "SHUTDOWNS", tmp_path)
    assert shutdown["main"] is True
    assert {TRIALS_FILE, REPORT_FILE, JOURNAL_FILE} <= set(shutdown["files"]), shutdown
