"""trainables/trainable.py: one trial as Ray runs it, here with Ray's session calls stood in for
(tune.report, tune.get_checkpoint, the node and GPU ids): every epoch reported with its costs and
placement, checkpoints that resume it where it stopped (the earlier epochs sent once), a finalist
re-run's own seed, epochs and test metrics, and a diverged trial ending without a checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ray import tune

from trainables import metrics as m
from trainables import trainable
from trainables.data import DataOptions, Dataset, load_dataset
from trainables.loop import load_state
from trainables.trainable import (
    CHECKPOINT_FILE,
    DEVICE,
    FINALIST,
    GPU_IDS,
    NODE_ID,
    REPORTED_STATE,
    TrialSettings,
    train_trial,
    trial_device,
    trial_plan,
)

HP = {"hidden_units": 8, "lr": 0.01, "batch_size": 128}


def test_a_search_trial_trains_its_config_with_the_studys_seed_and_epochs() -> None:
    settings = TrialSettings("mlp", max_epochs=7, seed=3)
    assert trial_plan(HP, settings) == (HP, 3, 7)


def test_a_finalist_trains_its_tuned_config_with_its_own_seed_and_epochs() -> None:
    settings = TrialSettings("mlp", max_epochs=7, seed=3)
    config = {FINALIST: {"hparams": HP, "seed": "5", "epochs": 2.0, "trial": 4}}
    hparams, seed, epochs = trial_plan(config, settings)
    assert (hparams, seed, epochs) == (HP, 5, 2) and type(seed) is int and type(epochs) is int
    assert hparams is not HP  # a copy: the trial may not change the plan


def test_a_trial_without_a_gpu_trains_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainable.ray, "get_gpu_ids", lambda: [])
    assert trial_device().type == "cpu"


class Session:
    """What a trial sends Ray: each result, and the state of each checkpoint (read at once, as
    the trial removes its folder right after)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.results: list[dict[str, Any]] = []
        self.states: list[dict[str, Any] | None] = []
        self.folder = tmp_path
        self.restore_from: Path | None = None
        monkeypatch.setattr(tune, "report", self.report)
        monkeypatch.setattr(tune, "get_checkpoint", self.get_checkpoint)
        monkeypatch.setattr(trainable.ray, "get_gpu_ids", lambda: [])
        node = SimpleNamespace(get_node_id=lambda: "node-1")
        monkeypatch.setattr(trainable.ray, "get_runtime_context", lambda: node)

    def report(self, result: dict[str, Any], checkpoint: tune.Checkpoint | None = None) -> None:
        self.results.append(dict(result))
        if checkpoint is None:
            self.states.append(None)
            return
        kept = self.folder / f"checkpoint-{len(self.results)}"
        shutil.copytree(checkpoint.path, kept)
        self.states.append(load_state(kept / CHECKPOINT_FILE))
        self.last_checkpoint = kept

    def get_checkpoint(self) -> tune.Checkpoint | None:
        return tune.Checkpoint.from_directory(self.restore_from) if self.restore_from else None


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataOptions("digits", test_fraction=0.2))


def test_every_epoch_is_reported_with_its_costs_placement_and_a_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits: Dataset
) -> None:
    session = Session(monkeypatch, tmp_path)
    settings = TrialSettings("mlp", max_epochs=3, checkpoint_every_s=0)
    train_trial(HP, digits.without_test(), settings)
    assert [r[m.EPOCH] for r in session.results] == [1, 2, 3]
    for result in session.results:
        assert {*m.CURVES, m.PARAMS} <= set(result) and m.INFERENCE_MS not in result
        assert (result[NODE_ID], result[GPU_IDS], result[DEVICE]) == ("node-1", "", "cpu")
        assert m.TEST_LOSS not in result and m.EARLIER_EPOCHS not in result
    assert all(state is not None for state in session.states)
    last = session.states[-1]
    assert last["epoch"] == 3
    assert [row[m.EPOCH] for row in last[REPORTED_STATE]] == [1, 2, 3]
    assert last[REPORTED_STATE][0][m.VAL_LOSS] == session.results[0][m.VAL_LOSS]
    assert NODE_ID not in last[REPORTED_STATE][0]  # numbers only, no names


def test_a_restored_trial_goes_on_from_its_checkpoint_and_sends_its_earlier_epochs_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits: Dataset
) -> None:
    data = digits.without_test()
    first = Session(monkeypatch, tmp_path / "first")
    train_trial(HP, data, TrialSettings("mlp", max_epochs=2, checkpoint_every_s=0))
    straight = Session(monkeypatch, tmp_path / "straight")
    train_trial(HP, data, TrialSettings("mlp", max_epochs=4, checkpoint_every_s=0))

    resumed = Session(monkeypatch, tmp_path / "resumed")
    resumed.restore_from = first.last_checkpoint
    train_trial(HP, data, TrialSettings("mlp", max_epochs=4, checkpoint_every_s=0))
    assert [r[m.EPOCH] for r in resumed.results] == [3, 4]
    earlier = resumed.results[0][m.EARLIER_EPOCHS]
    assert [row[m.EPOCH] for row in earlier] == [1, 2]
    assert m.EARLIER_EPOCHS not in resumed.results[1]
    for got, want in zip(resumed.results, straight.results[2:], strict=True):
        assert got[m.VAL_LOSS] == want[m.VAL_LOSS]  # exactly where it would have been
    assert [row[m.EPOCH] for row in resumed.states[-1][REPORTED_STATE]] == [1, 2, 3, 4]


def test_checkpoints_are_spaced_by_checkpoint_every_s(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits: Dataset
) -> None:
    session = Session(monkeypatch, tmp_path)
    train_trial(HP, digits.without_test(), TrialSettings("mlp", 3, checkpoint_every_s=3600))
    assert [state is not None for state in session.states] == [True, False, False]


def test_a_finalist_reports_its_test_metrics_after_its_last_epoch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits: Dataset
) -> None:
    session = Session(monkeypatch, tmp_path)
    config = {FINALIST: {"hparams": HP, "seed": 1, "epochs": 2, "trial": 1}}
    train_trial(config, digits, TrialSettings("mlp", max_epochs=9, checkpoint_every_s=0))
    assert [r[m.EPOCH] for r in session.results] == [1, 2]  # its epochs, not max_epochs
    assert m.TEST_LOSS not in session.results[0]
    assert {m.TEST_LOSS, m.TEST_ACC} <= set(session.results[1])
    assert 0 <= session.results[1][m.TEST_ACC] <= 1


def test_a_diverged_trial_ends_at_once_without_a_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits: Dataset
) -> None:
    session = Session(monkeypatch, tmp_path)
    exploding = {**HP, "lr": 1e12, "optimizer": "sgd"}
    train_trial(exploding, digits, TrialSettings("mlp", max_epochs=5, checkpoint_every_s=0))
    assert session.results[-1].get(m.DIVERGED) == 1
    assert session.states[-1] is None and len(session.results) < 5
    assert m.TEST_LOSS not in session.results[-1]  # a diverged model is not tested


class Results(tune.Callback):
    """The epochs each trial's results reached the driver with."""

    def __init__(self) -> None:
        self.epochs: dict[str, list[int]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.epochs.setdefault(trial.trial_id, []).append(result[m.EPOCH])


@pytest.mark.usefixtures("ray_local")
def test_a_trial_ray_stops_while_it_trains_ahead_reports_and_checkpoints_no_further(
    tmp_path: Path, digits: Dataset
) -> None:
    """Through Ray: each epoch trains while the driver handles the last one's report
    (`ReportsAhead`); a trial stopped at its 3rd result reports 3 epochs, its last checkpoint
    holds epoch 3 (not the epoch it was training ahead), and the reused actor trains the next
    trial."""
    settings = TrialSettings("mlp", max_epochs=1_000, checkpoint_every_s=0)
    trial = tune.with_resources(
        tune.with_parameters(train_trial, data=digits.without_test(), settings=settings),
        {"cpu": 1, "gpu": 0},
    )
    seen = Results()
    results = tune.Tuner(
        trial,
        param_space={**HP, "hidden_units": tune.grid_search([8, 16])},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path),
            stop={"training_iteration": 3},
            callbacks=[seen],
            verbose=0,
        ),
    ).fit()
    assert not results.errors
    assert list(seen.epochs.values()) == [[1, 2, 3], [1, 2, 3]]
    for result in results:
        with result.checkpoint.as_directory() as folder:
            state = load_state(Path(folder) / CHECKPOINT_FILE)
        assert state["epoch"] == 3
        assert [row[m.EPOCH] for row in state[REPORTED_STATE]] == [1, 2, 3]
