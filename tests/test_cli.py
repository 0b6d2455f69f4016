"""The `tuner` command: exit codes, messages, and real runs through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import make_study
from tuner.cli import app
from tuner.results.summary import BEST_CONFIG_FILE, TRIALS_FILE

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write_spec(folder: Path, **sections) -> Path:
    raw = {
        "name": "cli",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search": {"num_samples": 2, "max_concurrent": 2},
        "scheduler": {"name": "fifo", "max_epochs": 2},
        **sections,
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["models"], ["mlp", "cnn", "lstm", "hidden_units", "lr="]),
        (["datasets"], ["digits", "mnist_sample", "mnist", "mnist1d", "table"]),
        (["spaces"], ["mlp", "cnn", "lstm", "when: {optimizer: sgd}"]),
    ],
)
def test_catalogue_commands(command: list[str], expected: list[str]) -> None:
    result = runner.invoke(app, command)
    assert result.exit_code == 0
    for text in expected:
        assert text in result.output


def test_check_says_what_run_would_refuse_and_starts_nothing(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    spec = write_spec(study_dir)
    ok = runner.invoke(app, ["check", str(spec)])
    assert ok.exit_code == 0, ok.output
    assert "ok: mlp on digits (image (1, 8, 8)), 10 hyperparameters searched" in ok.output
    bad = runner.invoke(app, ["check", str(spec), "--set", "search.num_samples=0"])
    refused = runner.invoke(app, ["run", str(spec), "--set", "search.num_samples=0"])
    assert bad.exit_code == refused.exit_code == 2
    assert bad.output in refused.output  # the same message
    assert not ray.is_initialized()
    assert sorted(p.name for p in study_dir.iterdir()) == ["spec.yaml"]


def test_list_in_80_columns_shows_every_run_id_whole(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/cluster.md has users copy run ids from `tuner list`."""
    from mlflow.tracking import MlflowClient
    from rich.console import Console

    import tuner.cli

    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    client = MlflowClient(uri)
    ids = [
        make_study(client, name, "val_loss:min", {1: 0.5, 2: 0.3}).info.run_id
        for name in ("a-study-with-a-rather-long-name", "short")
    ]
    monkeypatch.setattr(tuner.cli, "out", Console(width=80))
    result = runner.invoke(app, ["list", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    for run_id in ids:
        assert run_id in result.output, result.output
    assert result.output.count("FINISHED") == 2  # `tuner list | grep -q RUNNING` must work


def test_spaces_prints_every_line_of_each_space_file_as_written() -> None:
    """Categorical choices such as `[adam, adamw, sgd]` are not rich markup to drop."""
    import search_spaces

    output = runner.invoke(app, ["spaces"]).output
    for name in search_spaces.names():
        for line in search_spaces.path_of(name).read_text().splitlines():
            assert line.rstrip() in output, line
    assert "choices: [adam, adamw, sgd]" in output


@pytest.mark.parametrize(
    ("sections", "overrides", "message"),
    [
        (
            {"search": {"num_samples": 0}},
            [],
            "search.num_samples must be greater than or equal to 1",
        ),
        ({"modle": "mlp"}, [], "modle is not a known key"),
        (
            {},
            ["scheduler.name=asha", "scheduler.grace_period=9"],
            "scheduler.grace_period must be at most",
        ),
        ({}, ["scheduler.max_epochs"], "must have the form dotted.key=value"),
        ({"search_space": {"lr": {"type": "float", "low": 1, "high": 0}}}, [], "low must be less"),
        ({"search_space": {"hiden_units": 64}}, [], "'hiden_units' is not a hyperparameter"),
        ({"dataset": {"name": "table", "path": "nope.csv", "target": "y"}}, [], "does not exist"),
    ],
)
def test_bad_specs_exit_2_with_the_key_and_no_traceback(
    tmp_path: Path, sections: dict, overrides: list[str], message: str
) -> None:
    spec = write_spec(tmp_path, **sections)
    args = ["run", str(spec)] + [a for o in overrides for a in ("--set", o)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_missing_spec_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


@pytest.mark.integration  # a whole `tuner` process
def test_console_script_exit_code_and_message(tmp_path: Path) -> None:
    """The real entry point (python -m tuner), not just the in-process runner."""
    spec = write_spec(tmp_path, resources={"cpu": -1})
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "run", str(spec)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "resources.cpu must be greater than 0 but got -1" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr + proc.stdout


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    for command in (
        "run",
        "demo",
        "submit",
        "status",
        "logs",
        "stop",
        "resume",
        "list",
        "export",
        "train",
        "report",
        "sync",
        "ui",
        "models",
        "datasets",
        "spaces",
    ):
        assert command in result.output


@pytest.mark.usefixtures("ray_local")
def test_run_prints_the_best_trial_and_writes_results(study_dir: Path) -> None:
    spec = write_spec(study_dir)
    result = runner.invoke(app, ["run", str(spec), "--set", "search.num_samples=3"])
    assert result.exit_code == 0, result.output
    assert "Best: trial" in result.output and "val_acc" in result.output
    (folder,) = (study_dir / "tuner-results").iterdir()
    assert len((folder / TRIALS_FILE).read_text().splitlines()) == 1 + 3
    best = yaml.safe_load((folder / BEST_CONFIG_FILE).read_text())
    assert best["model"] == "mlp" and best["dataset"]["name"] == "digits"
    assert 1 <= best["epochs"] <= 2 and "lr" in best["hyperparameters"]
    assert (study_dir / "optuna.db").is_file()


@pytest.mark.usefixtures("ray_local")
def test_demo_with_overrides(study_dir: Path) -> None:
    result = runner.invoke(
        app, ["demo", "--set", "search.num_samples=3", "--set", "scheduler.max_epochs=3"]
    )
    assert result.exit_code == 0, result.output
    assert "demo-digits-mlp" in result.output and "Best: trial" in result.output


@pytest.mark.usefixtures("ray_local")
def test_a_study_where_every_trial_diverges_exits_1(study_dir: Path) -> None:
    spec = write_spec(study_dir, search_space={"optimizer": "sgd", "lr": 1.0e6})
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 1
    assert "none of 2 trials produced a finite val_loss" in " ".join(result.output.split())
    assert "(2 diverged)" in result.output
