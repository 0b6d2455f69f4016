"""The thread that does a study's MLflow writes: in order, off the driver's event loop, and never
more than MAX_WRITER_LAG_S behind the trials.

Tune's hooks run on the driver's event loop, and every trial's next epoch waits for them: a hook
that wrote to the tracking server, SQLite or a figure itself would slow every trial. So the hooks
only queue their writes here. The writer's pace (a moving average of its jobs' times) times its
queue says how far behind it is; past the limit `submit` waits, so the trials go no faster than
MLflow takes their writes (with 64 slots of sub-second trials the writer once fell minutes
behind, and its queue grew with the study). A write that hangs longer than STUCK_WRITE_S (a
server that stopped answering) is waited for by the writer alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

MAX_WRITER_LAG_S = 5.0
STUCK_WRITE_S = 30.0
log = logging.getLogger(__name__)


class WriterThread:
    """Runs submitted jobs in order on one thread, started at the first job; a job that raises
    makes the next `submit` or `wait` raise it (the jobs after it are skipped meanwhile)."""

    def __init__(self, name: str = "mlflow-tracking") -> None:
        self.name = name
        self._jobs: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._job_started: float | None = None  # monotonic start of the job in progress
        self._seconds_per_job = 0.0  # the writer's recent pace (a moving average)
        self._held_back = False  # a submit has waited for the writer (logged once)
        self._error: BaseException | None = None

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    def raise_failure(self) -> None:
        """Re-raise a job that failed since the last call (once)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        self.raise_failure()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put((job, args))
        self._hold_back()

    def behind_s(self) -> float:
        """How long a job queued now would wait: the queue at the writer's pace (at least as
        slow as the job in progress has been so far); 0 while that job hangs (STUCK_WRITE_S)."""
        started = self._job_started
        running_s = 0.0 if started is None else time.monotonic() - started
        if running_s > STUCK_WRITE_S:
            return 0.0
        return self._jobs.qsize() * max(self._seconds_per_job, running_s)

    def _hold_back(self) -> None:
        while (behind_s := self.behind_s()) > MAX_WRITER_LAG_S:
            if not self._held_back:
                self._held_back = True
                log.warning(
                    "MLflow writes are %.0f s behind the trials: the study waits for them "
                    "(the tracking server takes fewer writes than the trials make)",
                    behind_s,
                )
            time.sleep(0.02)

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:  # `stop`
                self._jobs.task_done()
                return
            job, args = item
            self._job_started = started = time.monotonic()
            try:
                if self._error is None:
                    job(*args)
            except BaseException as exc:
                log.warning("MLflow tracking failed: %s", exc)
                self._error = exc
            finally:
                took = time.monotonic() - started
                pace = self._seconds_per_job
                self._seconds_per_job = 0.8 * pace + 0.2 * took if pace else took
                self._job_started = None
                self._jobs.task_done()

    def wait(self) -> None:
        """Block until every queued job is done; re-raise a job that failed."""
        if self._thread is not None:
            self._jobs.join()
        self.raise_failure()

    def stop(self) -> None:
        """End the thread once its queue is done (a later job starts another)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
