"""The Ray a study runs on: a local Ray on loopback started for it, or a cluster attached to,
and stopped or left again on the main thread once the study's results are written."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import ray

from tuner.cluster.jobs import driver_connection_errors
from tuner.errors import SpecError
from tuner.internals.ray_internals import loopback_node, stop_local_daemons

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
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Start a local Ray (or attach to `address`), unless this process already has one. On exit
    the Ray this started is stopped (or the cluster left), on the main thread once the study's
    results are written: Ray's shutdown beside a thread that still drops Ray objects can crash
    the driver (a segfault after "2/2 trials done" ended a Ray Job FAILED)."""
    if ray.is_initialized():
        yield
        return
    if address and address.startswith(("http://", "https://")):
        raise SpecError(
            f"--address {address!r} is a Ray Jobs server; `tuner run` needs 'auto' or a "
            "ray://HEAD:10001 address (use `tuner submit` for the Jobs server)"
        )
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        # a cluster started on loopback (docs/cluster.md) is reached on loopback: Ray would
        # look for it at the machine's outward IP instead
        on_loopback = loopback_node() if is_loopback_address(address) else contextlib.nullcontext()
        with driver_connection_errors(address), on_loopback:
            ray.init(address=address, **quiet)
    else:
        with loopback_node():
            ray.init(address="local", num_cpus=num_cpus, **quiet)
        stop_local_daemons()
    try:
        yield
    finally:
        ray.shutdown()
