"""Reading studies back from a real MLflow store (SQLite): finding a study, ranking its trial
runs, listing studies, and runs written by earlier versions; and a real MLflow server with
MLflow's login (basic-auth app): a study, export and train with a user's password, and a server
that refuses the credentials as one clear line."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import AuthServer, make_study
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


ROOT = Path(__file__).resolve().parents[1]


def tuner_command(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """A `tuner` command in its own process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "tuner", *args],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_server_with_login_takes_a_study_export_and_train_and_refuses_a_wrong_password(
    mlflow_auth_server: AuthServer, tmp_path: Path
) -> None:
    """MLflow's basic-auth app, as docs/cluster.md recommends for a shared server: a user's
    MLFLOW_TRACKING_USERNAME/PASSWORD carry a study, `tuner export` and `tuner train`; a wrong
    or missing password is one line naming the server (exit 1, no traceback); the password is
    in no output, results file, MLflow param, tag or artifact."""
    from mlflow import MlflowClient

    password = f"alice-pw-{secrets.token_hex(6)}"
    mlflow_auth_server.create_user("alice", password)
    uri = mlflow_auth_server.uri
    spec = {
        "name": "login",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search": {"num_samples": 2, "max_concurrent": 2, "seed": 0},
        "scheduler": {"name": "fifo", "max_epochs": 1},
        "tracking": {"uri": uri},
        "storage": str(tmp_path / "results"),
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="200", MLFLOW_TRACKING_USERNAME="alice")
    alice = {**env, "MLFLOW_TRACKING_PASSWORD": password}
    outputs = []

    def tuner(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess:
        proc = tuner_command(tmp_path, environment, *args)
        outputs.extend([proc.stdout, proc.stderr])
        return proc

    run = tuner(alice, "run", "spec.yaml")
    assert run.returncode == 0, run.stdout + run.stderr
    export = tuner(alice, "export", "login", "--tracking-uri", uri)
    assert export.returncode == 0, export.stdout + export.stderr
    train = tuner(alice, "train", export.stdout.split()[-1], "--device", "cpu")
    assert train.returncode == 0, train.stdout + train.stderr
    assert "Registered as model 'login-best'" in train.stdout

    wrong = {**env, "MLFLOW_TRACKING_PASSWORD": f"wrong-{secrets.token_hex(4)}"}
    nobody = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_USERNAME"}
    for environment, args, sent in (
        (
            wrong,
            ["export", "login", "--tracking-uri", uri],
            "the user 'alice' (MLFLOW_TRACKING_USERNAME)",
        ),
        (wrong, ["list", "--tracking-uri", uri], "the user 'alice' (MLFLOW_TRACKING_USERNAME)"),
        (wrong, ["run", "spec.yaml"], "the user 'alice' (MLFLOW_TRACKING_USERNAME)"),
        (nobody, ["export", "login", "--tracking-uri", uri], "no credentials"),
    ):
        refused = tuner(environment, *args)
        assert refused.returncode == 1, (args, refused.stdout + refused.stderr)
        line = " ".join(refused.stderr.split())
        assert line.startswith(
            f"error: tracking.uri: the MLflow server at {uri} refused {sent}: "
            "authentication failed (HTTP 401); set MLFLOW_TRACKING_USERNAME"
        ), (args, refused.stderr)
        assert "Traceback" not in refused.stderr and wrong["MLFLOW_TRACKING_PASSWORD"] not in line

    client = MlflowClient(uri)
    with pytest.MonkeyPatch.context() as admin:
        admin.setenv("MLFLOW_TRACKING_USERNAME", mlflow_auth_server.admin[0])
        admin.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_auth_server.admin[1])
        experiment = client.get_experiment_by_name("login")
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == 4, [r.info.run_name for r in runs]  # parent, 2 trials, train
        stored = [repr((r.data.params, r.data.tags)) for r in runs]
        for run_ in runs:
            folder = client.download_artifacts(run_.info.run_id, "", str(tmp_path / "art"))
            stored += [
                p.read_bytes().decode(errors="replace")
                for p in Path(folder).rglob("*")
                if p.is_file()
            ]
    stored += [
        p.read_bytes().decode(errors="replace")
        for p in (tmp_path / "results").rglob("*")
        if p.is_file()
    ]
    assert any("tuner.log" in str(p) for p in (tmp_path / "results").rglob("*"))
    assert [where for where, text in enumerate(stored + outputs) if password in text] == []
