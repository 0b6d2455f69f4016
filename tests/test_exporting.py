"""Export the best configs of a real study, retrain them, and the commands around it."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import tiny_spec, tuner_ui
from tuner.cli import app
from tuner.driver.study import run_study
from tuner.errors import SpecError
from tuner.results.exporting import ExportedConfig, export_study, load_exported
from tuner.results.retrain import train_config
from tuner.results.trials import StudyResult
from tuner.tracking.runs import client_for

runner = CliRunner()


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory: pytest.TempPathFactory) -> StudyResult:
    """One real study (digits MLP, TPE + ASHA) shared by this module's tests."""
    folder = tmp_path_factory.mktemp("export-study")
    spec = tiny_spec(
        name="export-me",
        search={"algorithm": "tpe", "num_samples": 6, "max_concurrent": 2, "seed": 3},
        scheduler={"name": "asha", "max_epochs": 8, "grace_period": 2},
        tracking={"uri": f"sqlite:///{folder / 'mlflow.db'}"},
        search_space={
            "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "hidden_units": {"type": "int", "low": 64, "high": 256},
        },
        storage=str(folder / "results"),
    )
    return run_study(spec, show_progress=False)


def test_export_top_k_ranks_by_best_epoch(study: StudyResult, tmp_path: Path) -> None:
    uri = study.spec.tracking.uri
    paths = export_study("export-me", uri, top_k=3, out=tmp_path / "best")
    assert [p.name for p in paths] == [f"export-me-rank{i}.yaml" for i in (1, 2, 3)]
    configs = [yaml.safe_load(p.read_text()) for p in paths]
    expected = study.trials.head(3)
    for rank, (config, (_, row)) in enumerate(zip(configs, expected.iterrows(), strict=True), 1):
        assert config["source"]["rank"] == rank
        assert config["source"]["trial_id"] == row["trial_id"]
        assert config["epochs"] == int(row["best_epoch"])
        assert config["metrics"]["val_loss"] == pytest.approx(row["best_val_loss"])
        assert config["hyperparameters"]["hidden_units"] == row["config.hidden_units"]
        assert config["model"] == "mlp" and config["dataset"]["name"] == "digits"
        assert config["seed"] == 3
        # the spec's training section (defaults here), so tuner train trains the same way
        assert config["training"] == {"precision": "fp32", "compile": False}
    values = [c["metrics"]["val_loss"] for c in configs]
    assert values == sorted(values)


def test_export_then_train_reaches_the_tuned_accuracy(
    study: StudyResult, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    uri = study.spec.tracking.uri
    (path,) = export_study(study.parent_run_id, uri, top_k=1, out=tmp_path / "best.yaml")
    tuned = yaml.safe_load(path.read_text())
    capfd.readouterr()
    result = train_config(path, uri)
    echoed = capfd.readouterr()
    assert "Successfully registered" not in echoed.out + echoed.err  # tuner train says it
    assert len(result.history) == tuned["epochs"]
    assert abs(result.final["val_acc"] - tuned["metrics"]["val_acc"]) <= 0.01
    assert result.registered_model == "export-me-best"

    client = client_for(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["tuner.role"] == "train"
    assert run.data.tags["diagnosis"] == result.diagnosis
    steps = [p.step for p in client.get_metric_history(result.run_id, "val_acc")]
    assert steps == list(range(1, tuned["epochs"] + 1))
    (version,) = client.search_model_versions("name = 'export-me-best'")
    assert version.run_id == result.run_id


def test_export_json_and_cli_list(study: StudyResult, tmp_path: Path) -> None:
    uri = study.spec.tracking.uri
    out = tmp_path / "json"
    result = runner.invoke(
        app,
        [
            "export",
            "export-me",
            "--top-k",
            "2",
            "--format",
            "json",
            "--out",
            str(out),
            "--tracking-uri",
            uri,
        ],
    )
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.json"))
    assert len(files) == 2 and json.loads(files[0].read_text())["source"]["rank"] == 1
    listed = runner.invoke(app, ["list", "--tracking-uri", uri])
    assert listed.exit_code == 0
    assert study.execution in listed.output and "FINISHED" in listed.output
    assert f"val_loss {study.best['best_val_loss']:.4f}" in listed.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "no-such-study"], "no study named 'no-such-study'"),
        (["export", "export-me", "--top-k", "0"], "--top-k must be at least 1"),
        (["export", "export-me", "--format", "xml"], "--format must be one of"),
        (["export", "0" * 32], "is not the run id of a study"),
    ],
)
def test_export_usage_errors_exit_2(study: StudyResult, args: list[str], message: str) -> None:
    result = runner.invoke(app, [*args, "--tracking-uri", study.spec.tracking.uri])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_bad_exported_config_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {"model": "mlp", "dataset": {"name": "digits"}, "hyperparameters": {}, "epochs": 0}
        )
    )
    with pytest.raises(SpecError, match="epochs must be greater than or equal to 1 but got 0"):
        load_exported(path)
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_ui_serves_the_store_on_loopback_only(study: StudyResult) -> None:
    uri = study.spec.tracking.uri
    with tuner_ui(uri) as (port, process):
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
        listening = {
            c.laddr.ip
            for p in tree
            for c in p.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        }
        assert listening == {"127.0.0.1"}
        body = json.dumps(
            {
                "experiment_ids": [
                    str(client_for(uri).get_experiment_by_name("export-me").experiment_id)
                ],
                "filter": f"tags.mlflow.parentRunId = '{study.parent_run_id}'",
            }
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.load(response)["runs"]
        assert len(runs) == len(study.trials)


def test_exported_file_names_cannot_leave_the_chosen_folder(tmp_path: Path) -> None:
    """A study name read back from the tracking store is reduced to a plain file name."""
    from tuner.results.exporting import write_configs

    config = {"model": "mlp", "source": {"rank": 1}}
    out = tmp_path / "exports"
    (path,) = write_configs([config, config][:1], "yaml", out, "../../etc/evil")
    assert path.parent == out and path.name == "_.._etc_evil-rank1.yaml"
    paths = write_configs([config, {"model": "mlp", "source": {"rank": 2}}], "json", out, "/abs")
    assert all(p.parent == out for p in paths)


def test_an_exported_config_leaves_out_what_says_nothing_and_reads_back_the_same(
    tmp_path: Path,
) -> None:
    config = ExportedConfig(
        model="mlp",
        dataset={"name": "digits", "val_fraction": 0.25, "seed": 3},
        hyperparameters={"lr": 0.01},
        epochs=4,
    )
    written = config.as_dict()
    assert "plugins" not in written
    assert written["dataset"] == {"name": "digits", "val_fraction": 0.25, "seed": 3}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(written, sort_keys=False))
    assert load_exported(path) == config
    kept = ExportedConfig(
        model="mlp",
        dataset={"name": "digits", "test_fraction": 0.2, "grayscale": True, "options": {"n": 1}},
        hyperparameters={},
        epochs=1,
    ).as_dict()["dataset"]
    assert kept == {
        "name": "digits",
        "val_fraction": 0.2,
        "seed": 0,
        "test_fraction": 0.2,
        "grayscale": True,
        "options": {"n": 1},
    }


def test_an_exported_schedule_names_the_budget_it_was_spread_over_and_constant_lr_none() -> None:
    from tuner.results.exporting import ExportedConfig, schedule_epochs

    assert schedule_epochs({"lr": 0.1, "lr_schedule": "cosine"}, "20") == 20
    assert schedule_epochs({"lr": 0.1, "lr_schedule": "constant"}, 20) is None
    assert schedule_epochs({"lr": 0.1}, 20) is None  # constant by default
    assert schedule_epochs({"lr_schedule": "step"}, None) is None  # an older run logged none
    base = {"model": "mlp", "dataset": {"name": "digits"}, "epochs": 3}
    cosine = ExportedConfig(**base, hyperparameters={"lr_schedule": "cosine"}, schedule_epochs=9)
    assert cosine.as_dict()["schedule_epochs"] == 9
    assert "schedule_epochs" not in ExportedConfig(**base, hyperparameters={}).as_dict()
