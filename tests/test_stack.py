"""A study on the stack a team runs: Optuna on PostgreSQL, an MLflow server on PostgreSQL with its
artifacts in S3 (tests/helpers.py), run as a user runs it (`tuner run` in its own process, with
the object store's and other secrets in its environment); then `tuner export` and `tuner train`
against that server. No password or secret reaches what the study prints, logs or stores."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from tests.helpers import BUCKET, ObjectStore, Postgres

ROOT = Path(__file__).resolve().parents[1]
NUM_SAMPLES, EPOCHS = 2, 2


@dataclass
class StackStudy:
    folder: Path
    tracking_uri: str
    storage: str  # the Optuna storage URL, password in it
    env: dict[str, str]  # the study's environment, secrets in it
    secrets: list[str]  # what must appear nowhere
    outputs: list[str]  # stdout and stderr of every command run


def tuner(study: StackStudy, *args: str) -> subprocess.CompletedProcess:
    """A `tuner` command in its own process, as a user runs it; its output is kept for the scan."""
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", *args],
        env=study.env,
        cwd=study.folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    study.outputs += [proc.stdout, proc.stderr]
    return proc


@pytest.fixture(scope="module")
def stack_study(
    postgres: Postgres,
    object_store: ObjectStore,
    stack_mlflow: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StackStudy]:
    """One tiny digits study run by `tuner run` against the stack."""
    folder = tmp_path_factory.mktemp("stack-study")
    storage = postgres.create_database("optuna_stack")
    spec = {
        "name": "stack",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search": {"num_samples": NUM_SAMPLES, "max_concurrent": 2, "seed": 0, "storage": storage},
        "scheduler": {"name": "fifo", "max_epochs": EPOCHS},
        "tracking": {"uri": stack_mlflow},
        "storage": str(folder / "results"),
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    env_secrets = {
        "MLFLOW_TRACKING_USERNAME": "tuner",  # sent as basic auth; this server does not check it
        "MLFLOW_TRACKING_PASSWORD": f"mlflow-pw-{secrets.token_hex(6)}",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),  # a local Ray without token auth ignores it
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(object_store.env, **env_secrets, PYTHONPATH=str(ROOT), COLUMNS="200")
    study = StackStudy(
        folder,
        stack_mlflow,
        storage,
        env,
        secrets=[
            postgres.password,
            quote(postgres.password, safe=""),
            object_store.env["AWS_SECRET_ACCESS_KEY"],
            env_secrets["MLFLOW_TRACKING_PASSWORD"],
            env_secrets["RAY_AUTH_TOKEN"],
        ],
        outputs=[],
    )
    run = tuner(study, "run", "spec.yaml")
    assert run.returncode == 0, run.stdout + run.stderr
    yield study


def parent_run(study: StackStudy):
    from mlflow import MlflowClient

    client = MlflowClient(study.tracking_uri)
    experiment = client.get_experiment_by_name("stack")
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`tuner.role` = 'study'", max_results=5
    )
    assert len(runs) == 1
    return client, experiment, runs[0]


def test_the_study_keeps_optuna_in_postgres_and_artifacts_in_the_bucket(
    stack_study: StackStudy, object_store: ObjectStore
) -> None:
    import optuna

    client, experiment, parent = parent_run(stack_study)
    execution = parent.info.run_name
    trials = optuna.load_study(study_name=execution, storage=stack_study.storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * NUM_SAMPLES
    assert all(len(t.intermediate_values) == EPOCHS for t in trials)

    stored = object_store.keys(BUCKET, f"mlflow/{experiment.experiment_id}/")
    prefix = f"mlflow/{experiment.experiment_id}/{parent.info.run_id}/artifacts/"
    for name in ("report.html", "results.csv", "results.parquet", "spec.yaml"):
        assert prefix + name in stored, stored
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == NUM_SAMPLES
    for child in children:
        assert child.data.metrics["best_epoch"] >= 1
        key = f"mlflow/{experiment.experiment_id}/{child.info.run_id}/artifacts/learning_curve.png"
        assert key in stored

    # the UI opens the report through the server, which reads it from the bucket
    url = f"{stack_study.tracking_uri}/get-artifact?path=report.html&run_uuid={parent.info.run_id}"
    with urllib.request.urlopen(url, timeout=30) as response:
        report = response.read().decode()
    body = object_store.client().get_object(Bucket=BUCKET, Key=prefix + "report.html")["Body"]
    assert report == body.read().decode() and "<html" in report.lower()

    out = "\n".join(stack_study.outputs[:2])
    host = stack_study.storage.rpartition("@")[2]
    assert f"Optuna study '{execution}': postgresql+psycopg://postgres:***@{host}" in out


def test_export_and_train_work_against_the_server(
    stack_study: StackStudy, object_store: ObjectStore
) -> None:
    from mlflow import MlflowClient

    client, experiment, parent = parent_run(stack_study)
    export = tuner(stack_study, "export", "stack", "--tracking-uri", stack_study.tracking_uri)
    assert export.returncode == 0, export.stdout + export.stderr
    config_path = stack_study.folder / export.stdout.split()[-1]
    config = yaml.safe_load(config_path.read_text())
    best = client.get_run(config["source"]["mlflow_run_id"])
    assert best.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert config["source"]["tracking_uri"] == stack_study.tracking_uri
    assert config["model"] == "mlp" and config["epochs"] == best.data.metrics["best_epoch"]
    assert str(config["hyperparameters"]["lr"]) == best.data.params["lr"]

    train = tuner(stack_study, "train", str(config_path), "--device", "cpu")
    assert train.returncode == 0, train.stdout + train.stderr
    assert "Registered as model 'stack-best'" in train.stdout
    said = train.stdout + train.stderr  # tuner's lines only, not MLflow's repeating them
    for echo in ("View run", "View experiment", "Successfully registered", "Created version"):
        assert echo not in said, said
    [version] = MlflowClient(stack_study.tracking_uri).search_model_versions("name='stack-best'")
    trained = client.get_run(version.run_id)
    assert trained.info.status == "FINISHED"
    assert len(client.get_metric_history(trained.info.run_id, "val_loss")) == config["epochs"]
    stored = object_store.keys(BUCKET, f"mlflow/{experiment.experiment_id}/")
    assert [k for k in stored if k.endswith("/MLmodel")], stored  # the model, in the bucket

    listing = tuner(stack_study, "list", "--tracking-uri", stack_study.tracking_uri)
    assert listing.returncode == 0 and parent.info.run_id in listing.stdout


def everything_stored(study: StackStudy, tmp_path: Path) -> dict[str, bytes]:
    """What the study left in MLflow (params, tags, every artifact of every run) and in its
    results folder, and what the commands printed, by where it is."""
    import mlflow

    client, experiment, _ = parent_run(study)
    found: dict[str, bytes] = {}
    for run in client.search_runs([experiment.experiment_id]):
        run_id = run.info.run_id
        found[f"run {run_id} params and tags"] = repr((run.data.params, run.data.tags)).encode()
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, dst_path=str(tmp_path / run_id), tracking_uri=study.tracking_uri
        )
        for path in Path(local).rglob("*"):
            if path.is_file():
                found[f"artifact {path}"] = path.read_bytes()
    for path in study.folder.rglob("*"):  # the results folder, exported configs, plug-ins
        if path.is_file() and path != study.folder / "spec.yaml":  # (the user's own spec)
            found[str(path)] = path.read_bytes()
    for i, output in enumerate(study.outputs):
        found[f"output {i}"] = output.encode()
    return found


def test_no_password_or_secret_reaches_mlflow_the_results_or_the_terminal(
    stack_study: StackStudy, tmp_path: Path
) -> None:
    # after the other tests ran (in file order), their commands' output is scanned too
    found = everything_stored(stack_study, tmp_path)
    results = stack_study.folder / "results"
    assert any(name.endswith(".pkl") and str(results) in name for name in found)  # Ray's state
    assert any(name.endswith("tuner.log") for name in found)
    leaks = [
        (where, secret[:6])
        for where, content in found.items()
        for secret in stack_study.secrets
        if secret.encode() in content
    ]
    assert not leaks


def test_a_pickled_storage_keeps_no_password_and_finds_it_in_pgpassword(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Ray saves of the searcher names the database without its password; `tuner resume`
    in a new process connects with the password from libpq's environment."""
    import pickle

    from tuner.cluster import databases
    from tuner.driver.optuna_storage import optuna_storage

    url = postgres.create_database("optuna_pickle")
    saved = pickle.dumps(optuna_storage(url))
    assert (
        postgres.password.encode() not in saved and quote(postgres.password).encode() not in saved
    )

    assert pickle.loads(saved).get_all_studies() == []  # this process still knows the password
    monkeypatch.setattr(databases, "_REAL_URLS", {})  # as a new process
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    restored = pickle.loads(saved)
    assert restored.url == url.replace(f":{quote(postgres.password, safe='')}@", "@")
    assert restored.get_all_studies() == []


def test_a_refused_password_is_reported_without_it(
    postgres: Postgres, tmp_path: Path, ray_starts: list
) -> None:
    from typer.testing import CliRunner

    from tuner.cli import app

    wrong = f"wr0ng/p@ss-{secrets.token_hex(3)}"
    url = f"postgresql://postgres:{quote(wrong, safe='')}@{postgres.host}:{postgres.port}/postgres"
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump({"name": "refused", "model": "mlp", "dataset": {"name": "digits"}})
    )
    result = CliRunner().invoke(
        app, ["run", str(spec), "--set", f"search.storage={url}"], catch_exceptions=False
    )
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert (
        "search.storage: cannot open the Optuna storage postgresql+psycopg://postgres:***@" in text
    )
    assert "password authentication failed" in text
    assert wrong not in result.output and quote(wrong, safe="") not in result.output
    assert ray_starts == []  # refused before Ray, and before any MLflow run


def test_tuner_list_on_a_postgresql_store_takes_plain_urls_and_hides_the_password(
    postgres: Postgres,
) -> None:
    """A plain postgresql:// URL (SQLAlchemy's default driver, psycopg2, is not installed) opens
    with psycopg; the listing names the store without its password."""
    from typer.testing import CliRunner

    from tuner.cli import app

    url = postgres.create_database("mlflow_list").replace("postgresql+psycopg://", "postgresql://")
    result = CliRunner().invoke(app, ["list", "--tracking-uri", url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"No studies in postgresql://postgres:***@{postgres.host}:{postgres.port}/" in text
    assert postgres.password not in result.output
    assert quote(postgres.password, safe="") not in result.output


def test_a_missing_postgresql_driver_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.cluster import databases
    from tuner.errors import SpecError

    monkeypatch.setattr(databases, "is_installed", lambda module: False)
    for url in ("postgresql://u:pw-123456@db/optuna", "postgresql+psycopg://u:pw-123456@db/x"):
        with pytest.raises(SpecError) as failure:
            databases.sqlalchemy_url(url, "search.storage")
        message = str(failure.value)
        assert message.startswith("search.storage: postgresql")
        assert "pip install 'tuner[cluster]'" in message and "pw-123456" not in message
    monkeypatch.setattr(databases, "is_installed", lambda module: module == "psycopg")
    assert databases.sqlalchemy_url("postgresql://u@db/x", "k") == "postgresql+psycopg://u@db/x"
    assert databases.sqlalchemy_url("sqlite:////tmp/x.db", "k") == "sqlite:////tmp/x.db"


def test_a_sqlite_storage_in_a_new_folder_is_created_before_ray(tmp_path: Path) -> None:
    from tests.helpers import tiny_spec
    from tuner.driver.optuna_storage import open_optuna_storage

    db = tmp_path / "new" / "folder" / "optuna.db"
    open_optuna_storage(tiny_spec(search={"storage": f"sqlite:///{db}"}))
    assert db.is_file()
