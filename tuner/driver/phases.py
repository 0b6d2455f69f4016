"""Where a study's process spends the time before its first epoch and after its last: the moment
each phase ends, in the study's log (`tuner.log`), as `phase NAME at T (+S s)` (T: Unix time, S:
seconds since the study began). A small study is mostly start-up; these lines say which part,
and the `startup` benchmark reads them to time each phase of whole `tuner run` processes.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: the phases of `tuner run`, in the order they end
BEGAN = "began"  # run_study entered: the imports are done
PREPARED = "prepared"  # data loaded, space compiled, model built and trained a step
OPTUNA_READY = "optuna_ready"  # Optuna's storage answers (its tables made if new), warm start
TRACKING_READY = "tracking_ready"  # MLflow's store answers (made if new)
RAY_STARTED = "ray_started"  # a local Ray started (beside MLflow's store), or the cluster joined
TRIALS_LAUNCHED = "trials_launched"  # the Tuner built, its fit called
FIRST_TRIAL_STARTED = "first_trial_started"  # Ray started a trial's actor
FIRST_EPOCH = "first_epoch"  # the first epoch's result reached the driver
TRIALS_DONE = "trials_done"  # every trial ended (finalists included)
RESULTS_WRITTEN = "results_written"  # trials.csv, best config, report
ENDED = "ended"  # MLflow runs closed, the results folder uploaded
PHASES = (
    BEGAN,
    PREPARED,
    OPTUNA_READY,
    TRACKING_READY,
    RAY_STARTED,
    TRIALS_LAUNCHED,
    FIRST_TRIAL_STARTED,
    FIRST_EPOCH,
    TRIALS_DONE,
    RESULTS_WRITTEN,
    ENDED,
)
LINE = re.compile(r"phase (\w+) at (\d+\.\d+)")

log.setLevel(logging.INFO)  # the study's log takes tuner's warnings only, and these lines

_marks: list[tuple[str, float]] = []  # (phase, Unix time) of this study, in order
_logged = 0  # how many of _marks are in the study's log
_logging = False  # whether the study's log takes tuner's loggers yet


def reached(phase: str) -> None:
    """Note that `phase` ended now; once per study (a trial started again, a second epoch, say
    nothing). `BEGAN` starts a new study's marks, for a process that runs one after another."""
    global _logged
    if phase == BEGAN:
        _marks.clear()
        _logged = 0
    if any(name == phase for name, _ in _marks):
        return
    _marks.append((phase, time.time()))
    if _logging:
        _log_new()


@contextlib.contextmanager
def logged() -> Iterator[None]:
    """While the study's log takes tuner's loggers: the marks so far go there, and the rest as
    they come (a study's first phases end before its log exists)."""
    global _logging
    _logging = True
    _log_new()
    try:
        yield
    finally:
        _logging = False


def _log_new() -> None:
    global _logged
    began = _marks[0][1] if _marks else 0.0
    for phase, at in _marks[_logged:]:
        log.info("phase %s at %.3f (+%.2f s)", phase, at, at - began)
    _logged = len(_marks)


def read_phases(log_text: str) -> dict[str, float]:
    """{phase: Unix time it ended} from a study's log."""
    return {m.group(1): float(m.group(2)) for m in LINE.finditer(log_text)}
