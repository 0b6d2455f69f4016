"""tuner/driver/optuna_storage.py: claiming an execution creates its Optuna study quietly, and a
second driver in the same second gets its own execution."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tests.helpers import tiny_spec
from tuner.driver.optuna_storage import claim_execution


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def optuna_lines() -> Iterator[list[str]]:
    """What Optuna logs, at the verbosity a new process has (INFO: every study it creates)."""
    saved = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    handler = Lines()
    logging.getLogger("optuna").addHandler(handler)
    yield handler.lines
    logging.getLogger("optuna").removeHandler(handler)
    optuna.logging.set_verbosity(saved)


def test_claiming_logs_nothing_and_a_second_claim_gets_its_own_execution(
    tmp_path: Path, optuna_lines: list[str]
) -> None:
    spec = tiny_spec(search={"storage": f"sqlite:///{tmp_path / 'optuna.db'}"})
    first = claim_execution(spec, stamp="20261206-120000")
    second = claim_execution(spec, stamp="20261206-120000")
    assert optuna_lines == []  # Optuna's "A new study created in RDB ..." twice, before
    assert (first, second) == ("tiny-20261206-120000", "tiny-20261206-120000-2")
    names = optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert sorted(names) == [first, second]
