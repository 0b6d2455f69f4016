"""tuner/driver/study_log.py: a study's log lines reach its file, those from before the file
existed included, and never the terminal."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tuner.driver.study_log import logs_to_file


def test_records_wait_in_memory_until_the_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with logs_to_file(None) as log:
        logging.getLogger("ray").warning("before the claim")
        path = tmp_path / "study" / "tuner.log"
        assert not path.exists()
        log.write_to(path)
        logging.getLogger("mlflow").warning("after it, postgresql://u:hunter2@db/x")
        lines = path.read_text().splitlines()  # written as they come, not at the end
        assert [line.split(": ", 1)[1] for line in lines] == [
            "before the claim",
            "after it, postgresql://u:***@db/x",  # through the redacting formatter
        ]
    assert capsys.readouterr().err == ""


def test_without_a_file_nothing_is_written_and_the_loggers_come_back(tmp_path: Path) -> None:
    ray_logger = logging.getLogger("ray")
    handlers, propagate = ray_logger.handlers[:], ray_logger.propagate
    with logs_to_file(None):
        ray_logger.warning("a refused run's line")
    assert list(tmp_path.iterdir()) == []
    assert ray_logger.handlers == handlers and ray_logger.propagate == propagate


def test_a_database_pool_s_traceback_reaches_the_file_not_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """What SQLAlchemy's pool logs when Ctrl-C interrupts a query of Optuna's or MLflow's."""
    path = tmp_path / "tuner.log"
    with logs_to_file(path):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            logging.getLogger("sqlalchemy.pool.impl.QueuePool").error(
                "Error closing cursor", exc_info=True
            )
    assert "Error closing cursor" in path.read_text() and "KeyboardInterrupt" in path.read_text()
    assert capsys.readouterr().err == ""
