"""The dashboard's data from a study's MLflow runs, and where `tuner report` writes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import make_study
from tuner.results.dashboard_data import logged_scheduler, report_study


def test_a_run_name_that_is_a_path_names_a_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study's run name is written by whoever can write to the MLflow server: the report is
    named after it, but lands in the working directory whatever it says."""
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    run_id = make_study(client, "named", "val_loss:min", {1: 0.3, 2: 0.5}).info.run_id
    client.update_run(run_id, name="../../escaped/x")
    path = report_study(run_id, store)
    assert path == work / "_.._escaped_x-report.html"
    assert path.stat().st_size > 10_000
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(
    ("params", "max_epochs", "expected"),
    [
        ({"scheduler.name": "asha", "scheduler.grace_period": "2"}, 20, ("asha", [2, 6, 18, 20])),
        (
            {"scheduler.grace_period": "1", "scheduler.reduction_factor": "2.0"},
            5,
            ("asha", [1, 2, 4, 5]),
        ),
        ({}, 9, ("asha", [1, 3, 9])),  # runs of versions that logged no scheduler: asha
        ({"scheduler.grace_period": "7"}, 4, ("asha", [4])),  # max_epochs counted from curves
        # older versions logged ASHA's keys under fifo too: fifo reads none of them
        ({"scheduler.name": "fifo", "scheduler.grace_period": "1"}, 9, ("fifo", [])),
    ],
)
def test_the_logged_schedulers_milestones_come_from_its_own_keys(
    params: dict[str, str], max_epochs: int, expected: tuple[str, list[int]]
) -> None:
    assert logged_scheduler(params, max_epochs) == expected
