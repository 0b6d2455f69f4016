"""tuner/driver/ray_session.py: the Ray a study starts listens on loopback only, a loopback
cluster address is reached on loopback, and Ray is shut down last, on the main thread."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from tests.helpers import is_loopback, listening_sockets, printed_json, python_in_checkout
from tuner.driver.journal import JOURNAL_FILE
from tuner.errors import SpecError, StudyError
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


@pytest.fixture
def sigterm_handler_kept() -> Iterator[None]:
    """`started_beside` sets the process's SIGTERM handler: the test runner's comes back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.mark.usefixtures("sigterm_handler_kept")
def test_the_work_beside_ray_s_start_runs_on_this_thread_while_the_start_runs_on_another() -> None:
    from tuner.driver.ray_session import started_beside

    work_began, start_began = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def start() -> None:
        start_began.set()
        seen["start saw the work"] = work_began.wait(timeout=30)
        seen["start on main"] = threading.current_thread() is threading.main_thread()

    def work() -> str:
        work_began.set()
        seen["work saw the start"] = start_began.wait(timeout=30)
        seen["work on main"] = threading.current_thread() is threading.main_thread()
        return "prepared"

    with started_beside(start, lambda: None, work) as value:
        assert value == "prepared"
    assert seen == {
        "start saw the work": True,
        "work saw the start": True,
        "start on main": False,
        "work on main": True,
    }
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)


@pytest.mark.usefixtures("sigterm_handler_kept")
def test_a_failed_work_waits_for_the_start_and_a_failed_start_raises_after_the_work() -> None:
    from tuner.driver.ray_session import started_beside

    started = []

    def slow_start() -> None:
        time.sleep(0.3)
        started.append("done")

    def bad_work() -> None:
        raise SpecError("dataset.path: no such folder")

    with (
        pytest.raises(SpecError, match="dataset.path"),
        started_beside(slow_start, lambda: None, bad_work),
    ):
        pass
    assert started == ["done"]  # not left starting behind the error

    worked = []

    def bad_start() -> None:
        raise StudyError("cannot reach the cluster")

    def record_work() -> None:
        worked.append("done")

    with (
        pytest.raises(StudyError, match="cannot reach"),
        started_beside(bad_start, lambda: None, record_work),
    ):
        pass
    assert worked == ["done"]


#: a local Ray started beside work on the main thread, in a fresh process; then `tuner stop`'s
#: SIGTERM, which must still end the driver as a SystemExit
BESIDE_WORK = """
import json, os, signal, threading, time, ray
from tuner.driver.ray_session import ray_session

def work():
    return {"main": threading.current_thread() is threading.main_thread()}

with ray_session(num_cpus=1, meanwhile=work) as seen:
    seen["initialized"] = ray.is_initialized()
    seen["task"] = ray.get(ray.remote(lambda: 7).remote())
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        seen["sigterm"] = "ignored"
    except SystemExit as exc:
        seen["sigterm"] = exc.code
print("BESIDE", json.dumps(seen))
"""


@pytest.mark.integration  # a local Ray started in its own process
def test_a_ray_started_beside_work_runs_tasks_says_no_warning_and_exits_on_sigterm(
    tmp_path: Path,
) -> None:
    done = python_in_checkout(BESIDE_WORK, tmp_path)
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("BESIDE ")]
    seen = json.loads(line.removeprefix("BESIDE "))
    assert seen == {"main": True, "initialized": True, "task": 7, "sigterm": signal.SIGTERM}
    assert "SIGTERM handler" not in done.stderr, done.stderr
