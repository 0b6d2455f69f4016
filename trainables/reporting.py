"""Reporting an epoch while the next one trains: one report in flight on its own thread.

Ray Tune's function trainable reports synchronously: `tune.report` returns only once the driver
has handled the result (scheduler, searcher, callbacks) and asked for the next one, a round trip
of 3 to 8 ms per epoch on 2 shared cores, in which the trial trains nothing (issue 29: 0.89 of a
bare loop's epochs per second). `ReportsAhead` sends each result from a thread, so the trial
trains the next epoch meanwhile, and never runs further ahead: a report waits for the one before
it. What is reported, and when the scheduler decides on it, does not change; a trial the driver
stops while its next epoch trains gives that epoch up at the next batch (`cancel`), so it costs
the slot no more than the idle wait it replaces. Nothing here imports Ray: `send` is
`tune.report`.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any


class ReportsAhead:
    """Sends results with `send(result, checkpoint=...)` one at a time, each from its own thread.

    Ray ends a stopped trial by raising `SystemExit(0)` in the thread that waits in its report;
    here that is the sending thread, so `cancel` is set (an epoch that trains ahead stops between
    batches: `trainables.loop.EpochCancelled`) and the trial's own thread raises `SystemExit(0)`
    at its next `report` or `wait`, as Ray expects of it. An error in `send` is raised there too.
    Leaving the `with` block waits for the report in flight, so nothing reports beside it.
    """

    def __init__(self, send: Callable[..., None], cancel: threading.Event | None = None):
        self._send = send
        self.cancel = cancel if cancel is not None else threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopped = False
        self._error: BaseException | None = None
        self.sent = 0  # reports sent so far

    def report(self, result: dict[str, Any], checkpoint: Any = None, folder: str | None = None):
        """Send `result` (with `checkpoint`) once the report before it is done, and return at
        once; `folder`, the checkpoint's files, is deleted once Ray has taken them."""
        self.wait()
        self._idle.clear()
        threading.Thread(
            target=self._run, args=(result, checkpoint, folder), name="tune-report", daemon=True
        ).start()

    def _run(self, result: dict[str, Any], checkpoint: Any, folder: str | None) -> None:
        try:
            self._send(result, checkpoint=checkpoint)
            self.sent += 1
        except SystemExit:  # the driver stopped the trial while this report waited
            self._stopped = True
            self.cancel.set()
        except BaseException as exc:
            self._error = exc
            self.cancel.set()
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            self._idle.set()

    def wait(self) -> None:
        """Wait for the report in flight: `SystemExit(0)` if the driver stopped the trial, its
        error if it failed."""
        self._idle.wait()
        if self._stopped:
            raise SystemExit(0)
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> ReportsAhead:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Wait for the report in flight: a stop, then a failed report, wins over an error of
        the epoch ahead (which a failed report's `cancel` may have caused)."""
        self.wait()
