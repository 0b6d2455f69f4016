"""tuner/driver/interrupts.py, piece by piece (tests/test_resume.py interrupts whole studies at
four moments): the Ctrl-C handler around a Ray Tune fit, the study's end finished first, and
what an interrupt says before and after Ray saved the study."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import optuna
import pytest

from tests.helpers import tiny_spec
from tuner.cluster.storage import StudyFolder
from tuner.driver.interrupts import ctrl_c_restored, finishing_first, resumable
from tuner.driver.optuna_storage import claim_execution
from tuner.errors import StudyError


def test_the_handler_from_before_a_fit_comes_back_after_it() -> None:
    before = signal.getsignal(signal.SIGINT)
    with ctrl_c_restored():
        signal.signal(signal.SIGINT, lambda signum, frame: None)  # what Ray Tune leaves behind
    assert signal.getsignal(signal.SIGINT) is before


def test_the_first_ctrl_c_at_the_end_lets_it_finish_and_the_second_cuts_it(
    capsys: pytest.CaptureFixture,
) -> None:
    before, finished = signal.getsignal(signal.SIGINT), []
    with finishing_first():
        os.kill(os.getpid(), signal.SIGINT)
        finished.append("results written")
    assert finished == ["results written"]
    assert "writing the study's results first" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt), finishing_first():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the handler from before, back


def test_an_interrupt_before_ray_saved_anything_releases_the_claim(study_dir: Path) -> None:
    spec = tiny_spec(name="released")
    execution = claim_execution(spec)
    folder = StudyFolder(study_dir / "tuner-results" / execution)
    folder.local.mkdir(parents=True)
    released = pytest.raises(StudyError, match="before its first trial started: nothing was kept")
    with released, resumable(spec, folder):
        raise KeyboardInterrupt
    assert optuna.get_all_study_names(spec.search.storage) == []
    assert not folder.local.exists()


def test_tuner_stop_is_an_interrupt_and_a_plain_exit_is_not(study_dir: Path) -> None:
    spec = tiny_spec(name="stopped")
    folder = StudyFolder(study_dir / "nowhere")
    with pytest.raises(StudyError, match="interrupted"), resumable(spec, folder):
        raise SystemExit(15)  # SIGTERM, as Ray's driver raises it
    with pytest.raises(SystemExit), resumable(spec, folder):
        raise SystemExit(0)


def test_an_interrupted_resume_names_the_command_and_a_plain_exit_passes(study_dir: Path) -> None:
    spec = tiny_spec(name="resuming")
    folder = StudyFolder(study_dir / "tuner-results" / "resuming-20261207-000000")
    continued = pytest.raises(StudyError, match=f"continue it with: tuner resume {folder.local}$")
    with continued, resumable(spec, folder, resumed=True):
        raise KeyboardInterrupt
    with pytest.raises(StudyError, match="tuner resume"), resumable(spec, folder, resumed=True):
        raise SystemExit(15)
    with pytest.raises(SystemExit), resumable(spec, folder, resumed=True):
        raise SystemExit(0)
