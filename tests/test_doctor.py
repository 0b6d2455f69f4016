"""tuner/doctor.py and `tuner doctor`: each check against the real thing (an MLflow server, a
PostgreSQL, a Ray head with token auth), nothing created where it looks, no secret printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from typer.testing import CliRunner

import tuner.cli
from tests.helpers import Postgres, free_port, ray_head
from tuner.cli import app
from tuner.doctor import examine, gpus, optuna_storage, tracking_store
from tuner.spec.job_spec import default_optuna_storage
from tuner.tracking.runs import default_tracking_uri

runner = CliRunner()


def test_a_fresh_folder_is_fine_and_doctor_creates_nothing(study_dir: Path) -> None:
    uri = default_tracking_uri()
    findings = examine(None, uri, default_optuna_storage(uri))
    assert [f.topic for f in findings] == [
        "tuner", "python", "ray", "torch", "optuna", "mlflow",
        "GPUs", "Ray cluster", "MLflow tracking", "Optuna storage",
    ]  # fmt: skip
    assert [f.topic for f in findings if f.ok is False] == []
    assert "not created yet" in findings[-1].detail
    assert list(study_dir.iterdir()) == []


def test_the_gpus_are_the_ones_torch_sees() -> None:
    finding = gpus()
    if torch.version.cuda is None:
        assert finding.detail == f"none: torch {torch.__version__} is a CPU build"
    else:
        assert finding.detail.count(" GiB") == torch.cuda.device_count()


def test_an_mlflow_server_answers(mlflow_server: str) -> None:
    finding = tracking_store(mlflow_server)
    assert finding.ok and finding.detail == f"{mlflow_server}: answers (OK)"


def test_what_does_not_answer_is_a_problem_shown_without_its_password() -> None:
    port = free_port()
    assert tracking_store(f"http://127.0.0.1:{port}").ok is False
    finding = optuna_storage(f"postgresql://tuner:s3cret-pass@127.0.0.1:{port}/optuna")
    assert finding.ok is False and "connection" in finding.detail.lower()
    assert "s3cret-pass" not in finding.detail and "tuner:***@" in finding.detail


def test_a_postgres_database_answers(postgres: Postgres) -> None:
    url = postgres.create_database("doctor")
    finding = optuna_storage(url)
    assert finding.ok, finding.detail
    assert postgres.password not in finding.detail and finding.detail.endswith(": answers")
    wrong = url.replace(url.split(":")[2].split("@")[0], "wrong-password")
    assert optuna_storage(wrong).ok is False


def test_the_command_exits_1_on_a_problem_and_reads_a_spec(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tuner.cli.out, "width", 400)  # a long path stays on one line
    down = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["doctor", "--tracking-uri", down])
    assert result.exit_code == 1
    assert f"{down}: no answer" in result.stdout
    spec = study_dir / "spec.yaml"
    spec.write_text(
        "name: s\nmodel: mlp\ndataset: {name: digits}\n"
        f"tracking: {{uri: 'sqlite:///{study_dir}/t/mlflow.db'}}\n"
    )
    result = runner.invoke(app, ["doctor", str(spec)])
    assert result.exit_code == 0, result.stdout
    assert f"sqlite:///{study_dir}/t/optuna.db: not created yet" in result.stdout


@pytest.mark.ray
def test_a_ray_cluster_answers_as_a_jobs_server_and_to_a_driver() -> None:
    """A real head with token auth, asked in a new process, as a user runs the command."""
    with ray_head(num_cpus=1) as head:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head.token)
        for address, expected in (
            (head.address, f"Jobs server, Ray {ray.__version__}"),
            (head.gcs, "1 node(s), 1 CPUs, 0 GPUs"),
        ):
            shown = subprocess.run(
                [sys.executable, "-m", "tuner", "doctor", "--address", address],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                cwd=head.temp_dir,
            )
            assert shown.returncode == 0, shown.stdout + shown.stderr
            assert f"{address}: {expected}" in shown.stdout
            assert head.token not in shown.stdout + shown.stderr
