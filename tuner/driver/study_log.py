"""The study's log file: what Ray, Optuna, MLflow, alembic, Python's warnings and tuner's own
loggers say during a study goes there, not to the terminal."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
from collections.abc import Iterator
from pathlib import Path

import optuna

from tuner.cluster.redaction import RedactingFormatter


class StudyLog:
    """The study's log file. Until `write_to` names it (a new study's folder exists only once
    its execution is claimed, after every check) records wait in memory; then they and every
    later one go to the file."""

    def __init__(self) -> None:
        self.handler = logging.handlers.MemoryHandler(capacity=1_000_000, target=None)

    def write_to(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(path)
        file.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setTarget(file)
        self.handler.capacity = 1  # from now on each record is written as it comes
        self.handler.flush()

    def close(self) -> None:
        file = self.handler.target
        self.handler.close()  # writes what is left to the file, if there is one
        if file is not None:
            file.close()


@contextlib.contextmanager
def logs_to_file(path: Path | None) -> Iterator[StudyLog]:
    """Send Ray's, Optuna's, MLflow's (its database set-up, alembic's migrations), SQLAlchemy's
    and Python's warnings to the study's log file (`path`, or the one `StudyLog.write_to` names
    later), not the terminal."""
    log = StudyLog()
    if path is not None:
        log.write_to(path)
    import mlflow  # noqa: F401  (its import sets the mlflow logger's handler: do it first)

    # sqlalchemy: Optuna's and MLflow's database layer, whose pool logs a traceback when Ctrl-C
    # interrupts a query ("Error closing cursor"), on a study that then ends with one message
    names = ("ray", "optuna", "mlflow", "alembic", "sqlalchemy", "py.warnings", "tuner")
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [log.handler], False
    logging.captureWarnings(True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield log
    finally:
        logging.captureWarnings(False)
        for lg, (handlers, propagate) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
        log.close()
