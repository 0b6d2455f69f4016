"""docs/cluster.md's production recipe, run as written: its `bash` blocks, in order, as one script
against a real PostgreSQL and S3 server and the two-node Ray cluster and MLflow server the recipe
itself starts on 127.0.0.1. Only its settings block is replaced, by this test's values."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.helpers import (
    BUCKET,
    CLUSTER_MARKER,
    ObjectStore,
    Postgres,
    free_port,
    kill_cluster,
    postgres_bin,
    spawn,
    stop,
)
from tuner.tracking import schema

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## 7. The production recipe, end to end"
SETTINGS = "# Settings (the test sets its own)"


def recipe_blocks() -> list[str]:
    """The `bash` blocks of the recipe's section of docs/cluster.md, in order."""
    doc = (ROOT / "docs" / "cluster.md").read_text()
    section = doc.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```bash\n(.*?)^```", section, re.MULTILINE | re.DOTALL)


def settings(postgres: Postgres, store: ObjectStore, folder: Path, ray_tmp: Path) -> dict:
    """The values the settings block stands for, on this machine."""
    common = f"--num-gpus 0 --node-ip-address 127.0.0.1 --object-store-memory {150 * 1024**2} "
    common += "--disable-usage-stats"
    return {
        "PGHOST": postgres.host,
        "PGPORT": str(postgres.port),
        "PGUSER": postgres.user,
        "PGPASSWORD": postgres.password,
        "OPTUNA_DB": "recipe_optuna",
        "MLFLOW_DB": "recipe_mlflow",
        **store.env,
        "BUCKET": BUCKET,
        "HEAD": "127.0.0.1",
        "BIND": "127.0.0.1",
        "MLFLOW_PORT": str(free_port()),
        "MLFLOW_WORKERS": "1",
        "RAY_PORT": str(free_port()),
        "DASHBOARD_PORT": str(free_port()),
        "RAY_AUTH_TOKEN_PATH": str(folder / "auth_token"),
        # its own temp dirs and ports: other Rays run on this machine
        "RAY_HEAD_OPTS": f"--num-cpus 2 {common} --temp-dir {ray_tmp} --include-dashboard true "
        f"--ray-client-server-port {free_port()} --dashboard-agent-listen-port {free_port()}",
        "RAY_WORKER_OPTS": f"--num-cpus 1 {common} --temp-dir {ray_tmp / 'w'} "
        f"--dashboard-agent-listen-port {free_port()}",
    }


def test_production_recipe_runs_as_written(
    postgres: Postgres, object_store: ObjectStore, tmp_path: Path
) -> None:
    blocks = recipe_blocks()
    assert blocks[0].startswith(SETTINGS)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rr-", dir="/tmp"))  # short: Ray's unix sockets
    values = settings(postgres, object_store, tmp_path, ray_tmp)
    declared = set(re.findall(r"\b([A-Z_]+)=", blocks[0]))
    assert declared == set(values), declared ^ set(values)  # every setting given a value here
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "AWS_"))}
    env.update(values)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(postgres_bin())])
    env["PATH"] += os.pathsep + os.environ.get("PATH", "")
    env[CLUSTER_MARKER] = str(ray_tmp)  # how kill_cluster finds the recipe's Ray processes
    script = "set -euo pipefail\n" + "".join(blocks[1:])
    process = spawn(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, output
        check_what_the_recipe_made(output, values, postgres, object_store, tmp_path)
    finally:
        stop(process)  # its process group: the MLflow server it started in the background
        kill_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def check_what_the_recipe_made(
    output: str, values: dict, postgres: Postgres, store: ObjectStore, folder: Path
) -> None:
    assert "Best: trial" in output and "SUCCEEDED" in output, output
    for secret in (values["PGPASSWORD"], values["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in output
    assert len(list((folder / "best").glob("recipe-digits-rank*.yaml"))) == 2, output

    client = MlflowClient(f"http://127.0.0.1:{values['MLFLOW_PORT']}")
    experiment = client.get_experiment_by_name("recipe-digits")
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{schema.ROLE_TAG}` = '{schema.STUDY_ROLE}'",
        order_by=["attributes.start_time ASC"],
    )
    assert [p.info.status for p in parents] == ["FINISHED", "KILLED"]
    finished, stopped = parents
    trials = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{schema.PARENT_TAG}` = '{finished.info.run_id}'",
    )
    assert len(trials) == 4 and {t.info.status for t in trials} == {"FINISHED"}
    stopped_trials = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{schema.PARENT_TAG}` = '{stopped.info.run_id}'",
    )
    assert "RUNNING" not in {t.info.status for t in stopped_trials}

    url = postgres.url(values["OPTUNA_DB"])
    executions = [p.data.tags[schema.EXECUTION_TAG] for p in parents]
    assert sorted(optuna.get_all_study_names(url)) == sorted(executions)
    study = optuna.load_study(study_name=executions[0], storage=url)
    assert len(study.trials) == 4
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}

    # artifacts through the MLflow server, results and checkpoints from Ray Tune: in the bucket
    artifacts = store.keys(BUCKET, "mlflow/")
    assert any(k.endswith("/report.html") for k in artifacts), artifacts[:20]
    results = store.keys(BUCKET, f"tuner-results/{executions[0]}/")
    assert any("checkpoint" in k for k in results), results[:20]
    prefix = f"tuner-results/{executions[0]}/"
    for driver_file in ("spec.yaml", "trials.jsonl", "trials.csv", "report.html"):
        assert prefix + driver_file in results, (driver_file, results[:20])
