"""A plug-in's own training function (`@tuner.register_training`, spec `loop`): the registry, the
rules of `trial.report`, the trainable's rows and checkpoints (Ray's `tune` stood in for), the
spec's checks, and the example loop (examples/plugins/denoiser.py) run by whole studies: tuned
with TPE and ASHA, killed and resumed, its finalists scored on the test split, exported and
trained again, and a crash in the user's code reaching MLflow and the study's log.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import optuna
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

import tuner
from tests.helpers import (
    assert_every_trial_once,
    killed_mid_study,
    resume_in_a_new_process,
    tiny_spec,
)
from trainables import metrics as m
from trainables import plugins
from trainables import trainable as trainable_module
from trainables.data import DataOptions, load_dataset
from trainables.loop import load_state
from trainables.registry import DuplicateNameError
from trainables.trainable import CHECKPOINT_FILE, REPORTED_STATE, TrialSettings, train_trial
from trainables.training_functions import (
    TRAINING_FUNCTIONS,
    EpochReports,
    register_training,
    run_training_function,
)
from tuner.driver.journal import JOURNAL_FILE
from tuner.driver.placement import plan_gpu_memory
from tuner.driver.preparation import prepare
from tuner.errors import SpecError
from tuner.results import outcomes
from tuner.spec.job_spec import spec_from_dict
from tuner.tracking import schema

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "plugins" / "denoiser.py"
TRIALS = 8  # of the end-to-end study


@pytest.fixture
def loop_spec() -> dict[str, Any]:
    """A raw spec whose trials a registered (do-nothing) training function trains."""

    @register_training("noop", description="reports nothing")
    def noop(trial) -> None:
        pass

    return {
        "name": "loop",
        "loop": "noop",
        "dataset": {"name": "digits"},
        "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
    }


def spec_error(raw: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    return str(info.value)


# --------------------------------------------------------------------------- the registry


def test_register_training_is_public_and_checked() -> None:
    assert {"register_training", "TrialContext"} <= set(tuner.__all__)
    assert tuner.register_training is register_training

    @tuner.register_training("documented")
    def documented(trial) -> None:
        """Trains by the book.

        More text."""

    entry = TRAINING_FUNCTIONS.get("documented")
    assert (entry.name, entry.fn, entry.description) == (
        "documented",
        documented,
        "Trains by the book.",
    )
    with pytest.raises(DuplicateNameError, match="training function 'documented' is registered"):
        tuner.register_training("documented")(lambda trial: None)
    with pytest.raises(ValueError, match="the name must be a non-empty string but got ''"):
        tuner.register_training("")
    with pytest.raises(
        KeyError, match="unknown training function 'nope'; choose one of: .*documented"
    ):
        TRAINING_FUNCTIONS.get("nope")


def test_a_plugin_s_training_function_is_forgotten_with_it(tmp_path: Path) -> None:
    file = tmp_path / "plug_loop.py"
    shutil.copy(EXAMPLE, file)
    plugins.load(str(file))
    assert TRAINING_FUNCTIONS.owner("denoiser") == "plug_loop"
    plugins.forget("plug_loop")
    assert "denoiser" not in TRAINING_FUNCTIONS


# --------------------------------------------------------------------------- report's rules


def test_a_report_becomes_the_built_in_row() -> None:
    rules = EpochReports("mine", range(3, 6), required=(m.VAL_ACC,))
    row = rules.row(3, {"train_loss": torch.tensor(0.5), "val_loss": 0.75, "val_acc": 1})
    assert row[m.EPOCH] == 3 and row[m.TRAIN_LOSS] == 0.5 and row[m.VAL_ACC] == 1.0
    assert row[m.GENERALIZATION_GAP] == 0.25 and row[m.EPOCH_TIME_S] >= 0
    assert m.DIVERGED not in row
    given = rules.row(4, {"train_loss": 1, "val_loss": 2, "val_acc": 0, "epoch_time_s": 7.0})
    assert given[m.EPOCH_TIME_S] == 7.0


@pytest.mark.parametrize(
    ("reports", "message"),
    [
        (
            [(1, {"train_loss": 1.0})],
            "training function 'mine': report(epoch=1, ...): the metrics lack val_loss; every "
            "report needs train_loss, val_loss (got train_loss)",
        ),
        (
            [(1, {"train_loss": 1, "val_loss": 1}), (3, {"train_loss": 1, "val_loss": 1})],
            "report(epoch=3, ...): epoch 3 reported where epoch 2 was expected",
        ),
        (
            [(2, {"train_loss": 1, "val_loss": 1})],
            "report(epoch=2, ...): epoch 2 reported where epoch 1 was expected",
        ),
        (
            [(e, {"train_loss": 1, "val_loss": 1}) for e in (1, 2, 3, 4)],
            "report(epoch=4, ...): epoch 4 is past the trial's last epoch 3",
        ),
        ([(1.0, {})], "report(epoch=1.0, ...): epoch must be an int"),
        (
            [(1, {"train_loss": 1, "val_loss": "low"})],
            "metric 'val_loss' must be a number but got 'low'",
        ),
        (
            [(1, {"train_loss": 1, "val_loss": 1, "epoch": 2})],
            "'epoch' cannot be a metric name (tuner sets it",
        ),
        ([(1, [("train_loss", 1)])], "metrics must be a mapping of names to numbers but got list"),
    ],
)
def test_a_report_breaking_a_rule_names_the_function_and_the_rule(
    reports: list, message: str
) -> None:
    rules = EpochReports("mine", range(1, 4))
    with pytest.raises(ValueError) as info:
        for epoch, metrics in reports:
            rules.row(epoch, metrics)
    assert message in str(info.value)


def test_a_non_finite_loss_is_diverged() -> None:
    rules = EpochReports("mine", range(1, 4))
    assert rules.row(1, {"train_loss": math.nan, "val_loss": 1.0})[m.DIVERGED] == 1
    assert rules.row(2, {"train_loss": 1.0, "val_loss": math.inf})[m.DIVERGED] == 1


# --------------------------------------------------------------------------- the trainable


class FakeTune:
    """Ray's `tune` as the trainable uses it: the results and the checkpoints' states."""

    Checkpoint = SimpleNamespace(from_directory=Path)

    def __init__(self, restored: Path | None = None):
        self.results: list[dict[str, Any]] = []
        self.saved: list[dict[str, Any] | None] = []
        self.restored = restored

    def report(self, result: dict[str, Any], checkpoint: Path | None = None) -> None:
        self.results.append(result)
        self.saved.append(load_state(checkpoint / CHECKPOINT_FILE) if checkpoint else None)

    def get_checkpoint(self):
        if self.restored is None:
            return None
        folder = self.restored
        return SimpleNamespace(as_directory=lambda: contextlib.nullcontext(str(folder)))


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    context = SimpleNamespace(get_node_id=lambda: "node-1")
    fake = SimpleNamespace(
        get_gpu_ids=lambda: [], get_runtime_context=lambda: context, is_initialized=lambda: False
    )
    monkeypatch.setattr(trainable_module, "ray", fake)


def run_trainable(
    monkeypatch: pytest.MonkeyPatch, fn, epochs: int = 3, restored: Path | None = None, **settings
) -> FakeTune:
    TRAINING_FUNCTIONS.forget(__name__)  # an earlier call's
    register_training("under_test")(fn)
    fake = FakeTune(restored)
    monkeypatch.setattr(trainable_module, "tune", fake)
    data = load_dataset(DataOptions(name="digits"))
    defaults = {"model": "under_test", "max_epochs": epochs, "loop": "under_test"}
    train_trial({"lr": 0.5}, data, TrialSettings(**{**defaults, **settings}))
    return fake


def counting_loop(trial) -> None:
    """Reports 1/epoch losses and a checkpoint of how far it got and what it was given."""
    for epoch in trial.epochs:
        state = {"epoch": torch.tensor(epoch), "restored": trial.state is not None}
        trial.report(epoch, {"train_loss": 1 / epoch, "val_loss": 2 / epoch}, state)


@pytest.mark.usefixtures("fake_ray")
def test_the_trainable_reports_rows_and_checkpoints_like_the_built_in_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = []

    def loop(trial) -> None:
        seen.append((trial.hp, trial.seed, str(trial.device), trial.epochs, trial.state))
        seen.append((trial.rank, trial.world_size, trial.data.has_test))
        counting_loop(trial)

    fake = run_trainable(monkeypatch, loop, epochs=3, seed=7, checkpoint_every_s=3600)
    assert seen == [({"lr": 0.5}, 7, "cpu", range(1, 4), None), (0, 1, False)]
    assert [r[m.EPOCH] for r in fake.results] == [1, 2, 3]
    assert [r[m.VAL_LOSS] for r in fake.results] == [2.0, 1.0, 2 / 3]
    assert {(r["node_id"], r["gpu_ids"], r["device"]) for r in fake.results} == {
        ("node-1", "", "cpu")
    }
    # the first epoch is always checkpointed; the next ones within checkpoint_every_s are not
    assert [s is not None for s in fake.saved] == [True, False, False]
    first = fake.saved[0]
    assert first["epoch"] == 1 and first["state"]["epoch"].item() == 1
    assert [row[m.EPOCH] for row in first[REPORTED_STATE]] == [1]

    # a retry from that checkpoint: state handed back, the epochs left, the earlier rows once
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    torch.save(first, folder / CHECKPOINT_FILE)
    again: list = []

    def resumed(trial) -> None:
        again.append((trial.epochs, trial.state["epoch"].item()))
        counting_loop(trial)

    fake = run_trainable(monkeypatch, resumed, epochs=3, restored=folder, checkpoint_every_s=0)
    assert again == [(range(2, 4), 1)]
    assert [r[m.EPOCH] for r in fake.results] == [2, 3]
    assert [row[m.EPOCH] for row in fake.results[0][m.EARLIER_EPOCHS]] == [1]
    assert m.EARLIER_EPOCHS not in fake.results[1]
    last = fake.saved[-1]
    assert last["epoch"] == 3 and last["state"]["restored"] is True
    assert [row[m.EPOCH] for row in last[REPORTED_STATE]] == [1, 2, 3]


@pytest.mark.usefixtures("fake_ray")
def test_a_diverged_epoch_is_reported_without_checkpoint_and_ends_the_trial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    after: list[int] = []

    def loop(trial) -> None:
        for epoch in trial.epochs:
            loss = math.nan if epoch == 2 else 1.0
            trial.report(epoch, {"train_loss": loss, "val_loss": loss}, {"w": torch.ones(1)})
            after.append(epoch)

    fake = run_trainable(monkeypatch, loop, epochs=4, checkpoint_every_s=0)
    assert [(r[m.EPOCH], r.get(m.DIVERGED)) for r in fake.results] == [(1, None), (2, 1)]
    assert [s is not None for s in fake.saved] == [True, False]
    assert after == [1]  # report did not return from the diverged epoch


@pytest.mark.usefixtures("fake_ray")
def test_the_objective_s_metric_is_required_and_the_checkpoint_must_load_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_acc(trial) -> None:
        trial.report(1, {"train_loss": 1.0, "val_loss": 1.0})

    with pytest.raises(ValueError, match="the metrics lack val_acc"):
        run_trainable(monkeypatch, no_acc, required_metrics=("val_acc",))

    def odd_state(trial) -> None:
        trial.report(1, {"train_loss": 1.0, "val_loss": 1.0}, {"when": SimpleNamespace(x=1)})

    with pytest.raises(ValueError, match=r"report\(epoch=1, checkpoint=...\) holds something"):
        run_trainable(monkeypatch, odd_state)


def test_tuner_train_s_run_collects_the_history_and_the_last_checkpoint() -> None:
    plugins.load(str(EXAMPLE))
    data = load_dataset(DataOptions(name="digits", test_fraction=0.1))
    history, state = run_training_function("denoiser", {"width": 32}, data, "cpu", 0, 2)
    assert [row[m.EPOCH] for row in history] == [1, 2]
    assert m.TEST_LOSS not in history[0] and 0 < history[1][m.TEST_LOSS] < 2
    assert history[1][m.VAL_LOSS] < history[0][m.VAL_LOSS]  # it learns
    assert set(state) == {"model", "optimizer", "shuffle"}
    assert all(t.device.type == "cpu" for t in state["model"].values())


# --------------------------------------------------------------------------- the spec


def test_a_loop_spec_names_the_model_after_the_loop_and_reads_back(
    loop_spec: dict[str, Any],
) -> None:
    spec = spec_from_dict(loop_spec)
    assert (spec.model, spec.loop, spec.model_family) == ("noop", "noop", None)
    again = spec_from_dict(yaml.safe_load(spec.to_yaml()))  # the saved spec, as resume reads it
    assert (again.model, again.loop) == ("noop", "noop")
    prepared = prepare(spec)  # no model to probe, no hyperparameter names to check
    assert list(prepared.space.params) == ["lr"]
    half = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpu": 0.5})})
    packing = plan_gpu_memory(half, prepared.space, prepared.dataset, 10**9, "probed")
    assert packing.notes == [
        "GPU memory: training function 'noop' is the plug-in's own loop, whose memory tuner "
        "cannot estimate: 2 trial(s) per GPU not checked against memory"
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"loop": "nope"}, "loop must be one of ['noop'] but got 'nope'"),
        ({"search_space": None}, "search_space is required with loop 'noop'"),
        ({"model": "mlp"}, "model: 'mlp' with loop 'noop': a training function builds its own"),
        ({"loop": None}, "model is required and has no default"),
        (
            {"training": {"precision": "bf16"}},
            "training.precision: 'bf16' applies to tuner's own loop; training function 'noop'",
        ),
    ],
)
def test_loop_spec_errors_name_the_rule(
    loop_spec: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    assert message in spec_error({**loop_spec, **change})


# --------------------------------------------------------------------------- whole studies


def in_repo_env() -> dict[str, str]:
    """A `python -m tuner` subprocess imports tuner from this checkout, whatever its cwd."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


@pytest.mark.integration
def test_the_example_loop_is_tuned_resumed_after_a_kill_and_trained_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The denoiser example through TPE + ASHA with finalists; the driver killed (with its Ray)
    once two trials ended, `tuner resume` in a new process completes it with every trial once in
    MLflow and Optuna; the best config exported and trained again runs the same function."""
    shutil.copy(EXAMPLE, tmp_path / "denoiser.py")
    spec = {
        "name": "denoise",
        "plugins": ["denoiser.py"],
        "loop": "denoiser",
        "dataset": {"name": "digits", "test_fraction": 0.1},
        "search_space": {
            "width": {"type": "categorical", "choices": [16, 32]},
            "lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
        },
        "search": {"algorithm": "tpe", "num_samples": TRIALS, "max_concurrent": 2},
        "scheduler": {"name": "asha", "max_epochs": 3, "grace_period": 1},
        "selection": {"finalists": 1, "seeds": 1},
    }
    folder = killed_mid_study(
        tmp_path,
        spec,
        lambda events: sum(e["event"] == "end" for e in events) >= 2,
        env=in_repo_env(),
    )
    resume_in_a_new_process(folder, tmp_path, env=in_repo_env())
    trials = pd.read_csv(folder / "trials.csv")
    assert sorted(trials["trial"]) == list(range(1, TRIALS + 1))
    assert set(trials["status"]) <= {outcomes.COMPLETED, outcomes.STOPPED_BY_SCHEDULER}
    assert (trials["best_val_loss"] < 1.0).all()  # reconstruction errors, all finite
    states, _ = assert_every_trial_once(
        tmp_path, folder.name, folder / JOURNAL_FILE, trials, num_trials=TRIALS
    )
    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{tmp_path}/optuna.db")
    curves = [
        sorted(t.intermediate_values)
        for t in study.trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert curves and all(c == list(range(1, len(c) + 1)) for c in curves), curves

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("denoise").experiment_id],
        f"tags.{schema.ROLE_TAG} = '{schema.STUDY_ROLE}'",
    )
    assert parent.data.tags[schema.MODEL_TAG] == "denoiser"
    assert parent.data.tags[schema.LOOP_TAG] == "denoiser"
    (finalist,) = client.search_runs(
        [parent.info.experiment_id], f"tags.{schema.ROLE_TAG} = '{schema.FINALIST_ROLE}'"
    )
    assert 0 < finalist.data.metrics[m.TEST_LOSS] < 1.0

    monkeypatch.chdir(tmp_path)
    (best,) = tuner.export("denoise", out=tmp_path / "best.yaml", tracking_uri=uri)
    assert (best["model"], best["loop"]) == ("denoiser", "denoiser")
    assert best["plugins"] == ["plugins/denoiser.py"]
    from tuner.results.retrain import STATE_ARTIFACT, train_config

    trained = train_config(Path(best["path"]), uri, device="cpu")
    assert [row[m.EPOCH] for row in trained.history] == list(range(1, best["epochs"] + 1))
    assert 0 < trained.test[m.TEST_LOSS] < 1.0
    assert trained.state_artifact == STATE_ARTIFACT and trained.registered_model is None
    run = client.get_run(trained.run_id)
    assert run.data.tags[schema.LOOP_TAG] == "denoiser"
    state_file = mlflow.artifacts.download_artifacts(
        f"{run.info.artifact_uri}/{STATE_ARTIFACT}", dst_path=str(tmp_path / "state")
    )
    saved = torch.load(state_file, weights_only=True)
    assert set(saved) == {"model", "optimizer", "shuffle"}


CRASHING = """
import tuner


@tuner.register_training("crashing")
def crashing(trial):
    for epoch in trial.epochs:
        if epoch == 2:
            raise RuntimeError(f"boom at epoch {epoch}")
        trial.report(epoch, {"train_loss": 1.0, "val_loss": 1.0})
"""


@pytest.mark.usefixtures("ray_local")
def test_a_crash_in_the_loop_errors_the_trial_with_its_traceback(study_dir: Path) -> None:
    from tuner.driver.study import LOG_FILE, run_study
    from tuner.results.summary import summary_lines

    (study_dir / "crashing.py").write_text(CRASHING)
    spec = tiny_spec(
        name="crash",
        model=None,
        loop="crashing",
        plugins=[str(study_dir / "crashing.py")],
        search_space={"lr": 0.1},
        search={"num_samples": 1, "max_concurrent": 1},
        failure={"max_retries": 0},
    )
    result = run_study(spec, show_progress=False)
    (row,) = result.trials.to_dict("records")
    assert row["status"] == outcomes.ERRORED
    assert row["error"] == "RuntimeError: boom at epoch 2"
    client = MlflowClient(spec.tracking.uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("crash").experiment_id],
        f"tags.{schema.ROLE_TAG} = '{schema.TRIAL_ROLE}'",
    )
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: boom at epoch 2"
    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/error.txt")
    assert f'File "{study_dir / "crashing.py"}", line 9, in crashing' in text
    assert "boom at epoch 2" in (result.results_path / LOG_FILE).read_text()
    terminal = [line for line in summary_lines(result) if "boom" in line]
    assert terminal == ["Trial 1 failed after its retries: RuntimeError: boom at epoch 2"]


def test_tuner_models_lists_a_plugin_s_training_functions() -> None:
    from typer.testing import CliRunner

    from tuner.cli import app

    result = CliRunner().invoke(app, ["models", "--plugin", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│ denoiser")]
    assert rows and "denoising autoencoder" in rows[0]
