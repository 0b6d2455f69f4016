"""tuner/results/summary.py: the end-of-study lines, the best config and the results files, for
studies that end in every way (no trial reported, every trial diverged, a normal end)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import tiny_spec
from tuner.driver.study import require_success
from tuner.errors import StudyError
from tuner.results import outcomes
from tuner.results.summary import (
    BEST_CONFIG_FILE,
    TRIALS_FILE,
    best_config,
    save_results,
    summary_lines,
)
from tuner.results.trials import StudyResult, TrialRecord, trials_table


def ended(records: list[TrialRecord], folder: Path, **kwargs) -> StudyResult:
    spec = tiny_spec()
    return StudyResult(spec, "tiny-1", folder, trials_table(records, spec), 3.0, **kwargs)


def epoch(n: int, val_loss: float, **extra) -> dict:
    return {"epoch": n, "train_loss": val_loss / 2, "val_loss": val_loss, **extra}


def test_a_study_interrupted_before_any_trial_reported_ends_with_the_resume_command(
    tmp_path: Path,
) -> None:
    """Ctrl-C just as trials start: no trial row at all, no KeyError, and the way back."""
    result = ended([], tmp_path, interrupted=True, stop_reason=outcomes.INTERRUPTED)
    assert result.best is None and best_config(result) is None
    lines = summary_lines(result)
    assert lines[0] == "Study tiny-1: 0 trials in 3s; 0 epochs trained of 0 without early stopping"
    assert "tuner resume continues it" in lines[1]
    save_results(result)
    assert (tmp_path / TRIALS_FILE).is_file() and not (tmp_path / BEST_CONFIG_FILE).exists()
    with pytest.raises(StudyError, match=f"continue it with: tuner resume {tmp_path}$"):
        require_success(result)


def test_diverged_trials_are_counted_as_diverged_not_completed(tmp_path: Path) -> None:
    records = [
        TrialRecord("a", 1, {"lr": 1e6}, {1: epoch(1, float("nan"), diverged=1)}, "diverged"),
        TrialRecord("b", 2, {"lr": 0.01}, {1: epoch(1, 0.9), 2: epoch(2, 0.5)}, "completed"),
    ]
    result = ended(records, tmp_path, stop_reason=outcomes.COMPLETED)
    assert summary_lines(result)[0].startswith(
        "Study tiny-1: 2 trials in 3s (1 completed, 1 diverged)"
    )
    assert int(result.best["trial"]) == 2
