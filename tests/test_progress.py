"""tuner/driver/progress.py: the live line says what the study is doing, and wraps only between
its phrases, never inside one."""

from __future__ import annotations

import io

from rich.console import Console

from tests.helpers import EPOCH_1, drive, fake_trial
from tuner.driver.progress import LiveProgress, StudyRecorder


def recorder_with_a_best_trial() -> StudyRecorder:
    recorder = StudyRecorder("val_loss", "min", max_epochs=2)
    trial = fake_trial("t1", 1)
    drive([recorder], "on_trial_start", trial)
    drive([recorder], "on_trial_result", trial, result=EPOCH_1)
    return recorder


def line(width: int, name: str = "demo-digits-mlp") -> str:
    console = Console(width=width, file=io.StringIO())
    return LiveProgress(name, 24, console=console).render(recorder_with_a_best_trial()).plain


def test_the_line_says_progress_and_the_best_so_far() -> None:
    text = line(200)
    assert "\n" not in text
    assert text.startswith("demo-digits-mlp 0/24 trials done · 1 running · ")
    assert "best val_loss 1.0000 (trial 1, epoch 1) · " in text and text.endswith("s")


def test_a_narrow_console_breaks_between_phrases_only() -> None:
    phrases = line(200).split(" · ")
    for width in (40, 45, 60, 80):  # the longest phrase has 39 characters
        rows = line(width).split("\n")
        assert all(len(row) <= width for row in rows), (width, rows)
        assert [p for row in rows for p in row.split(" · ")] == phrases  # none cut in two
    assert len(line(60).split("\n")) >= 2
