"""The dashboard's data from a study's MLflow runs, and where `tuner report` writes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import make_study
from tuner.results.dashboard_data import report_study


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
