"""tuner/driver/phases.py: a study's log says when each phase of its process ended, once each,
in order, the ones before the log existed included."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.helpers import tiny_spec
from tuner.driver import phases
from tuner.driver.study import LOG_FILE, run_study


@pytest.fixture
def captured() -> logging.Handler:
    """What the phases logger says, as the study's log would take it."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.records = records  # type: ignore[attr-defined]
    phases.log.addHandler(handler)
    yield handler
    phases.log.removeHandler(handler)


def test_marks_before_the_log_exists_reach_it_once_it_does(captured) -> None:
    phases.reached(phases.BEGAN)
    phases.reached(phases.PREPARED)
    assert captured.records == []  # no study log yet: nothing said
    with phases.logged():
        assert [line.split()[1] for line in captured.records] == ["began", "prepared"]
        phases.reached(phases.RAY_STARTED)
        phases.reached(phases.RAY_STARTED)  # a phase ends once
    phases.reached(phases.FIRST_EPOCH)  # the study's log is gone: kept for the next one
    names = [line.split()[1] for line in captured.records]
    assert names == ["began", "prepared", "ray_started"]
    marks = phases.read_phases("\n".join(captured.records))
    assert list(marks) == names
    assert marks["began"] <= marks["prepared"] <= marks["ray_started"]


def test_a_new_study_in_the_same_process_starts_its_marks_anew(captured) -> None:
    phases.reached(phases.BEGAN)
    with phases.logged():
        phases.reached(phases.FIRST_EPOCH)
        phases.reached(phases.BEGAN)
        phases.reached(phases.FIRST_EPOCH)
    names = [line.split()[1] for line in captured.records]
    assert names == ["began", "first_epoch", "began", "first_epoch"]
    assert captured.records[2].endswith("(+0.00 s)")


@pytest.mark.usefixtures("ray_local")
def test_a_study_s_log_holds_every_phase_in_the_order_they_ended(study_dir: Path) -> None:
    result = run_study(tiny_spec(), show_progress=False)
    marks = phases.read_phases((result.results_path / LOG_FILE).read_text())
    assert set(marks) == set(phases.PHASES)
    assert [marks[p] for p in phases.PHASES] == sorted(marks.values())
