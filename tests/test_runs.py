"""Reading studies back from a real MLflow store (SQLite): finding a study, ranking its trial
runs, listing studies, and runs written by earlier versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_study
from tuner.errors import SpecError
from tuner.results import outcomes
from tuner.results.dashboard_data import from_mlflow
from tuner.tracking import schema
from tuner.tracking.runs import client_for, find_study_run, list_studies, ranked_trial_runs


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def numbers(runs) -> list[int]:
    return [int(r.data.tags[schema.TRIAL_NUMBER_TAG]) for r in runs]


def test_trial_runs_ranked_by_best_epoch_objective(store: str) -> None:
    client = client_for(store)
    low = make_study(client, "low", "val_loss:min", {1: 0.5, 2: None, 3: 0.2, 4: 0.5})
    high = make_study(client, "high", "val_acc:max", {1: 0.5, 2: 0.9, 3: None, 4: 0.7})
    assert numbers(ranked_trial_runs(client, low)) == [3, 1, 4, 2]  # ties by number, none last
    assert numbers(ranked_trial_runs(client, high)) == [2, 4, 1, 3]


def test_find_study_run_by_name_execution_or_id(store: str) -> None:
    client = client_for(store)
    parent = make_study(client, "found", "val_loss:min", {1: 0.1})
    for key in ("found", "found-exec", parent.info.run_id):
        assert find_study_run(client, key).info.run_id == parent.info.run_id
    with pytest.raises(SpecError, match="no study named 'missing'"):
        find_study_run(client, "missing")
    with pytest.raises(SpecError, match="neither a study name nor an MLflow run id"):
        find_study_run(client, "a b")


def test_runs_of_earlier_versions_read_in_todays_vocabulary(store: str) -> None:
    """Studies logged with `stopped_by_asha` list, report and rank as stopped_by_scheduler."""
    client = client_for(store)
    make_study(
        client,
        "old",
        "val_loss:min",
        {1: 0.3, 2: 0.4},
        child_tags={schema.TRIAL_STATUS_TAG: "stopped_by_asha"},
        parent_metrics={"trials_total": 2, "trials_stopped_by_asha": 2, "trials_errored": 0},
    )
    (row,) = list_studies(store).to_dict("records")
    assert (row["trials"], row["stopped_early"], row["errored"]) == (2, 2, 0)
    data = from_mlflow("old", store)
    assert set(data.trials["status"]) == {outcomes.STOPPED_BY_SCHEDULER}
    assert data.trials.set_index("trial").loc[1, "config.lr"] == pytest.approx(0.01)


def test_a_parent_without_an_objective_tag_ranks_by_val_loss(store: str) -> None:
    client = client_for(store)
    parent = make_study(client, "untagged", "val_loss:min", {1: 0.9, 2: 0.1})
    client.delete_tag(parent.info.run_id, schema.OBJECTIVE_TAG)
    assert numbers(ranked_trial_runs(client, client.get_run(parent.info.run_id))) == [2, 1]
