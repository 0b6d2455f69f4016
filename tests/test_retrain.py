"""`tuner train --device` and the exported config's training options, on real digits data with
a real MLflow SQLite store. (On a GPU machine, tests/test_gpu.py trains with --device cuda.)"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from trainables.data import DataOptions, load_dataset
from tuner.cli import app
from tuner.errors import SpecError
from tuner.results.exporting import load_exported, training_from_tag
from tuner.results.retrain import train_config
from tuner.tracking.inputs import dataset_inputs, digests
from tuner.tracking.runs import client_for

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

#: an exported config as files written before the training section existed look
EXPORTED: dict[str, Any] = {
    "model": "mlp",
    "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
    "hyperparameters": {"lr": 0.01, "hidden_units": 32},
    "epochs": 2,
    "seed": 0,
}


def write_config(folder: Path, **extra: Any) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**EXPORTED, **extra}, sort_keys=False))
    return path


def only_run(uri: str):
    (experiment,) = [e for e in client_for(uri).search_experiments() if e.name == "tuner-train"]
    (run,) = client_for(uri).search_runs([experiment.experiment_id])
    return run


def test_train_on_cpu_records_the_device_and_a_file_without_training_trains_in_fp32(
    study_dir: Path,
) -> None:
    path = write_config(study_dir)
    assert load_exported(path).training.model_dump() == {
        "precision": "fp32",
        "compile": False,
        "workers": 1,
    }
    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    result = runner.invoke(app, ["train", str(path), "--device", "cpu", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "Trained 2 epochs on cpu" in result.output
    run = only_run(uri)
    assert run.data.tags["tuner.device"] == "cpu"
    assert run.data.params["training.precision"] == "fp32"
    assert run.data.params["training.compile"] == "False"
    assert run.info.status == "FINISHED"
    # the same digests a study on this data logs (tests/test_inputs.py checks a study's)
    options = DataOptions(**EXPORTED["dataset"])
    logged = {
        tag.value: item.dataset.digest
        for item in run.inputs.dataset_inputs
        for tag in item.tags
        if tag.key == "mlflow.data.context"
    }
    assert logged == digests(dataset_inputs(load_dataset(options), options))
    assert run.data.tags["mlflow.note.content"].startswith("`tuner train` of tuner-train: **2 ")


def test_auto_picks_cuda_only_when_torch_sees_a_gpu_and_a_bf16_config_trains(
    study_dir: Path,
) -> None:
    path = write_config(study_dir, training={"precision": "bf16"})
    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    result = train_config(path, uri, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert result.device == expected
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert losses[1] < losses[0]
    run = client_for(uri).get_run(result.run_id)
    assert run.data.tags["tuner.device"] == expected
    assert run.data.params["training.precision"] == "bf16"


def test_device_cuda_without_a_gpu_exits_2_in_one_line_and_creates_no_run(tmp_path: Path) -> None:
    """CUDA is hidden from the child (CUDA_VISIBLE_DEVICES=""): this holds on GPU machines too."""
    path = write_config(tmp_path)
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "tuner", "train", str(path), "--device", "cuda"]
    proc = subprocess.run(
        [*command, "--tracking-uri", f"sqlite:///{db}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    shown = f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in proc.stderr, shown
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, shown
    assert "--device cuda" in lines[0] and "no CUDA GPU" in lines[0], shown
    assert not db.exists() or not client_for(f"sqlite:///{db}").search_experiments(
        filter_string="name = 'tuner-train'"
    ), shown


def test_train_config_refuses_an_unknown_device_before_loading_anything(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"--device must be one of \['auto', 'cpu', 'cuda'\]"):
        train_config(write_config(tmp_path), f"sqlite:///{tmp_path / 'm.db'}", device="tpu")
    assert not (tmp_path / "m.db").exists()


def test_the_training_tag_of_a_study_becomes_the_exported_training_section() -> None:
    tag = '{"precision": "bf16", "compile": true, "data_on_device": null}'
    assert training_from_tag(tag).model_dump() == {
        "precision": "bf16",
        "compile": True,
        "workers": 1,
    }
    assert training_from_tag(None).model_dump() == {
        "precision": "fp32",
        "compile": False,
        "workers": 1,
    }
    # a data-parallel trial's run carries its worker count (tuner.workers)
    assert training_from_tag(tag, "2").workers == 2


@pytest.mark.usefixtures("ray_local")
def test_a_multi_worker_config_retrains_on_as_many_workers_unless_told(study_dir: Path) -> None:
    """An exported 2-worker config trains on 2 Ray Train workers (the first's model logged);
    `--workers 1` trains it in this process. batch_size is the global batch, so both train
    the same config: their curves agree closely (tests/test_data_parallel.py has the bound)."""
    path = write_config(
        study_dir,
        hyperparameters={"lr": 0.01, "hidden_units": 32, "batch_size": 64},
        training={"workers": 2},
    )
    assert load_exported(path).training.workers == 2
    assert "workers: 2" in path.read_text()
    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    two = train_config(path, uri, register=False, device="cpu")
    one = train_config(path, uri, register=False, device="cpu", workers=1)
    assert [row["epoch"] for row in two.history] == [1, 2]
    assert two.final["val_loss"] == pytest.approx(one.final["val_loss"], rel=0.02)
    assert two.final["val_loss"] < two.history[0]["val_loss"]
    with pytest.raises(SpecError, match="--workers must be at least 1 but got 0"):
        train_config(path, uri, register=False, device="cpu", workers=0)


def test_train_scores_the_held_out_test_split_once_when_the_study_kept_one(
    study_dir: Path,
) -> None:
    """A config from a study with `dataset.test_fraction` trains on the same rows and ends with
    the test split's scores: logged once on the run, printed, and equal to scoring the trained
    model on exactly those rows."""
    dataset = {"name": "digits", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}
    path = write_config(study_dir, dataset=dataset)
    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    result = runner.invoke(app, ["train", str(path), "--device", "cpu", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    run = only_run(uri)
    client = client_for(uri)
    (test_loss,) = client.get_metric_history(run.info.run_id, "test_loss")
    (test_acc,) = client.get_metric_history(run.info.run_id, "test_acc")
    assert test_loss.step == 2 and 0 < test_loss.value < 5
    assert 0.5 < test_acc.value <= 1.0
    assert f"On the held-out test split: test_loss {test_loss.value:.4f}" in result.output
    data = load_dataset(DataOptions(**dataset))
    assert len(data.x_test) == 360  # 20% of 1,797 digits, never in train or val
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 1797

    import mlflow.pytorch

    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    with torch.no_grad():
        logits = model(torch.as_tensor(data.x_test))
        loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(data.y_test).long())
        acc = (logits.argmax(1).numpy() == data.y_test).mean()
    assert math.isclose(test_loss.value, loss.item(), rel_tol=1e-4)
    assert math.isclose(test_acc.value, acc, rel_tol=1e-6)

    (study_dir / "plain").mkdir()
    plain = write_config(study_dir / "plain", dataset={"name": "digits"})
    trained = runner.invoke(app, ["train", str(plain), "--device", "cpu", "--tracking-uri", uri])
    assert trained.exit_code == 0, trained.output
    assert "held-out test split" not in trained.output


def test_train_follows_the_trial_s_schedule_to_its_best_epoch(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exported config with an lr schedule names the study's budget (`schedule_epochs`):
    `tuner train` spreads the schedule over it and stops at the best epoch, on the tuned trial's
    curve; `--epochs N` spreads it over the N epochs asked for; a constant lr needs no budget."""
    from trainables import loop

    budgets: list[int | None] = []
    original = loop.TrainingRun

    def recording(*args, **kwargs):
        budgets.append(kwargs.get("max_epochs"))
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "TrainingRun", recording)
    hyperparameters = {**EXPORTED["hyperparameters"], "lr_schedule": "cosine"}
    path = write_config(study_dir, hyperparameters=hyperparameters, schedule_epochs=6)
    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    result = train_config(path, uri, register=False, device="cpu")
    assert budgets == [6] and len(result.history) == EXPORTED["epochs"]
    result = train_config(path, uri, epochs=3, register=False, device="cpu")
    assert budgets == [6, 3] and len(result.history) == 3
