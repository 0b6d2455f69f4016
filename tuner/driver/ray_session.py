"""The Ray a study runs on: a local Ray on loopback started for it, or a cluster attached to,
and stopped or left again on the main thread once the study's results are written.

A local Ray takes seconds to start on a small machine (its GCS, raylet and agents each start
and import), and a small study is mostly start-up, so a local Ray starts on a thread while the
main thread does what needs no Ray and checks no input (`meanwhile`: MLflow's store); bad input
is refused before Ray starts, and a cluster that refuses the driver before any store is opened.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import ray

from tuner.cluster.jobs import driver_connection_errors
from tuner.errors import SpecError
from tuner.internals.ray_internals import (
    loopback_node,
    no_sigterm_warning_off_the_main_thread,
    without_idle_daemons,
)

T = TypeVar("T")

#: Tune's own console output off (the live line replaces it); its warnings go to LOG_FILE.
QUIET_RAY = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Ray's CSV, JSON and TensorBoard result files: the journal and MLflow already hold every
    # result, and writing them cost the driver about a millisecond per epoch
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


def is_loopback_address(address: str) -> bool:
    """`127.0.0.1:6379`, `localhost:6379` (a Ray GCS address on this machine's loopback)."""
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    num_cpus: int | None = None,
    meanwhile: Callable[[], T] | None = None,
) -> Iterator[T | None]:
    """Start a local Ray (or attach to `address`), unless this process already has one, and
    yield what `meanwhile` returns, run on this thread while a local Ray starts on another
    (after the attach, for a cluster: `attached_then`). On exit the Ray this started is stopped
    (or the cluster left), on the main thread once the study's results are written: Ray's
    shutdown beside a thread that still drops Ray objects can crash the driver (a segfault
    after "2/2 trials done" ended a Ray Job FAILED). If `meanwhile` raises, Ray's start is
    waited for and Ray stopped before its error goes on."""
    work: Callable[[], T | None] = meanwhile or (lambda: None)
    if ray.is_initialized():
        yield work()
        return
    if address and address.startswith(("http://", "https://")):
        raise SpecError(
            f"--address {address!r} is a Ray Jobs server; `tuner run` needs 'auto' or a "
            "ray://HEAD:10001 address (use `tuner submit` for the Jobs server)"
        )
    if address:
        starting = attached_then(address, work)
    else:
        starting = started_beside(lambda: start_ray(None, num_cpus), ray.shutdown, work)
    with starting as value:
        yield value


@contextlib.contextmanager
def attached_then(address: str, work: Callable[[], T]) -> Iterator[T]:
    """Attach to the cluster at `address`, then `work()`: a cluster that refuses this driver
    (a missing token, the wrong address) refuses it before `work` touches any store. The
    cluster is left on exit, or when `work` fails."""
    start_ray(address, None)
    try:
        yield work()
    finally:
        ray.shutdown()


def start_ray(address: str | None, num_cpus: int | None) -> None:
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        # a cluster started on loopback (docs/cluster.md) is reached on loopback: Ray would
        # look for it at the machine's outward IP instead
        on_loopback = loopback_node() if is_loopback_address(address) else contextlib.nullcontext()
        with driver_connection_errors(address), on_loopback:
            ray.init(address=address, **quiet)
    else:
        with loopback_node(), without_idle_daemons():
            ray.init(address="local", num_cpus=num_cpus, **quiet)


@contextlib.contextmanager
def started_beside(
    start: Callable[[], None], stop: Callable[[], None], work: Callable[[], T]
) -> Iterator[T]:
    """`work()` on this thread while `start()` runs on another, which then waits until what it
    started is stopped (`stop()`, on this thread) as the block ends or `work` fails: Ray's
    daemons get SIGKILL when the thread that started them ends (the parent-death signal Ray
    asks Linux for is the thread's). A failed start raises after the work. Ray's own SIGTERM
    handler (a `SystemExit`, which `tuner stop` relies on) is set on the main thread only, so it
    is set here as Ray would."""
    failed: list[BaseException] = []
    started, ended = threading.Event(), threading.Event()

    def starting() -> None:
        try:
            start()
        except BaseException as exc:  # raised on the main thread below
            failed.append(exc)
        finally:
            started.set()
        ended.wait()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    thread = threading.Thread(target=starting, name="ray-start", daemon=True)
    try:
        with no_sigterm_warning_off_the_main_thread():
            thread.start()
            try:
                value = work()
            finally:
                started.wait()
        if failed:
            raise failed[0]
        yield value
    finally:
        if started.is_set() and not failed:
            stop()
        ended.set()
        thread.join()
