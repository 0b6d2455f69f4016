"""trainables/loop.py: TrainingRun learns, reports the contract's metrics, resumes exactly."""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_diabetes

from trainables import metrics as m
from trainables.data import DataOptions, Dataset, load_dataset
from trainables.loop import OPTIMIZERS, TrainingRun, evaluate, make_optimizer

CLASSIFICATION_KEYS = {
    m.EPOCH,
    m.TRAIN_LOSS,
    m.TRAIN_ACC,
    m.VAL_LOSS,
    m.VAL_ACC,
    m.GENERALIZATION_GAP,
    m.EPOCH_TIME_S,
}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataOptions("digits"))


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    frame = load_diabetes(as_frame=True).frame
    path = tmp_path_factory.mktemp("tables") / "diabetes.csv"
    frame.to_csv(path, index=False)
    return load_dataset(DataOptions("table", path=str(path), target="target"))


@pytest.fixture(scope="module")
def mlp_history(digits: Dataset) -> list[dict[str, float]]:
    run = TrainingRun("mlp", {}, digits, seed=0)
    return [run.run_epoch() for _ in range(8)]


def test_mlp_learns_digits(mlp_history: list[dict[str, float]]) -> None:
    assert max(r[m.VAL_ACC] for r in mlp_history) >= 0.9
    assert mlp_history[-1][m.VAL_LOSS] < mlp_history[0][m.VAL_LOSS]
    assert mlp_history[-1][m.TRAIN_LOSS] < mlp_history[0][m.TRAIN_LOSS]


def test_reported_keys_and_values(mlp_history: list[dict[str, float]]) -> None:
    for epoch, result in enumerate(mlp_history, start=1):
        assert set(result) == CLASSIFICATION_KEYS  # no `diverged` key on a healthy run
        assert result[m.EPOCH] == epoch
        assert result[m.GENERALIZATION_GAP] == pytest.approx(
            result[m.VAL_LOSS] - result[m.TRAIN_LOSS], abs=1e-12
        )
        assert 0.0 <= result[m.TRAIN_ACC] <= 1.0
        assert 0.0 <= result[m.VAL_ACC] <= 1.0
        assert result[m.EPOCH_TIME_S] > 0
        assert all(isinstance(v, int | float) and math.isfinite(v) for v in result.values())


def test_metrics_match_an_independent_evaluation(digits: Dataset) -> None:
    run = TrainingRun("mlp", {}, digits, seed=0)
    result = run.run_epoch()
    run.model.eval()
    with torch.no_grad():
        logits = run.model(torch.from_numpy(digits.x_val))
    y = torch.from_numpy(digits.y_val)
    assert result[m.VAL_LOSS] == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5
    )
    assert result[m.VAL_ACC] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


def test_regression_has_no_accuracy(diabetes: Dataset) -> None:
    run = TrainingRun("mlp", {"lr": 3e-3}, diabetes, seed=0)
    results = [run.run_epoch() for _ in range(3)]
    for result in results:
        assert m.TRAIN_ACC not in result
        assert m.VAL_ACC not in result
        assert set(result) == CLASSIFICATION_KEYS - {m.TRAIN_ACC, m.VAL_ACC}
        assert math.isfinite(result[m.VAL_LOSS])
    assert results[-1][m.TRAIN_LOSS] < results[0][m.TRAIN_LOSS]
    assert isinstance(run.loss_fn, torch.nn.MSELoss)


def test_evaluate_regression_returns_no_accuracy() -> None:
    model = torch.nn.Linear(2, 1)
    x, y = torch.zeros(5, 2), torch.zeros(5, 1)
    loss, acc = evaluate(model, torch.nn.MSELoss(), x, y, classification=False)
    assert acc is None
    assert loss >= 0


def test_same_seed_same_metrics(digits: Dataset, mlp_history: list[dict[str, float]]) -> None:
    run = TrainingRun("mlp", {}, digits, seed=0)
    again = [run.run_epoch() for _ in range(2)]
    for a, b in zip(again, mlp_history[:2], strict=True):
        assert a[m.VAL_LOSS] == pytest.approx(b[m.VAL_LOSS], abs=1e-6)


def test_different_seed_different_metrics(digits: Dataset, mlp_history) -> None:
    run = TrainingRun("mlp", {}, digits, seed=1)
    assert run.run_epoch()[m.VAL_LOSS] != pytest.approx(mlp_history[0][m.VAL_LOSS], abs=1e-6)


def through_bytes(state: dict) -> dict:
    """What a checkpoint does to a state: torch.save, then torch.load."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def assert_resume_is_exact(data: Dataset, hparams: dict, model: str = "mlp") -> None:
    straight = TrainingRun(model, hparams, data, seed=3)
    expected = [straight.run_epoch() for _ in range(4)][-1]

    first = TrainingRun(model, hparams, data, seed=3)
    for _ in range(2):
        first.run_epoch()
    state = through_bytes(copy.deepcopy(first.state_dict()))

    resumed = TrainingRun(model, hparams, data, seed=3)
    resumed.load_state_dict(state)
    assert resumed.epoch == 2
    results = [resumed.run_epoch() for _ in range(2)]
    got = results[-1]
    assert got[m.EPOCH] == 4
    for key in (m.TRAIN_LOSS, m.VAL_LOSS, m.TRAIN_ACC, m.VAL_ACC):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


@pytest.mark.parametrize(
    "hparams",
    [
        {},
        {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 128},
        {"optimizer": "adamw", "weight_decay": 1e-3, "batch_norm": True, "num_layers": 2},
    ],
    ids=["adam", "sgd", "adamw-batchnorm"],
)
def test_resume_from_state_dict_is_exact(digits: Dataset, hparams: dict) -> None:
    assert_resume_is_exact(digits, hparams)


def test_resume_with_dropout_is_exact(digits: Dataset) -> None:
    """Dropout draws from torch's global RNG, which a resumed run must restore as well."""
    assert_resume_is_exact(digits, {"dropout": 0.3})


def test_huge_learning_rate_diverges(digits: Dataset) -> None:
    run = TrainingRun("mlp", {"optimizer": "sgd", "lr": 1e6}, digits, seed=0)
    results = [run.run_epoch() for _ in range(3)]
    diverged = [r for r in results if r.get(m.DIVERGED)]
    assert diverged, results
    first = diverged[0]
    assert first[m.DIVERGED] == 1
    assert not (math.isfinite(first[m.TRAIN_LOSS]) and math.isfinite(first[m.VAL_LOSS]))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_build(name: str, digits: Dataset) -> None:
    model = torch.nn.Linear(3, 2)
    hp = {"optimizer": name, "lr": 0.01, "weight_decay": 1e-4, "momentum": 0.8}
    optimizer = make_optimizer(model.parameters(), hp)
    expected = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    assert type(optimizer) is expected[name]
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01
    assert group["weight_decay"] == 1e-4
    if name == "sgd":
        assert group["momentum"] == 0.8
    run = TrainingRun("mlp", {"optimizer": name, "hidden_units": 16}, digits, seed=0)
    assert type(run.optimizer) is expected[name]
    assert math.isfinite(run.run_epoch()[m.VAL_LOSS])


def test_optimizer_defaults() -> None:
    optimizer = make_optimizer(torch.nn.Linear(2, 2).parameters(), {})
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 1e-3
    sgd = make_optimizer(torch.nn.Linear(2, 2).parameters(), {"optimizer": "sgd"})
    assert sgd.param_groups[0]["momentum"] == 0.9


def test_unknown_optimizer() -> None:
    with pytest.raises(ValueError) as info:
        make_optimizer(torch.nn.Linear(2, 2).parameters(), {"optimizer": "rmsprop"})
    assert str(info.value) == "optimizer 'rmsprop' is unknown; choose one of: adam, adamw, sgd"


def test_unknown_optimizer_in_a_run(digits: Dataset) -> None:
    with pytest.raises(ValueError, match="'lbfgs'"):
        TrainingRun("mlp", {"optimizer": "lbfgs"}, digits)


def test_batch_size_is_used(digits: Dataset) -> None:
    run = TrainingRun("mlp", {"batch_size": 512}, digits, seed=0)
    assert run.batch_size == 512
    steps = []
    run.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    run.run_epoch()
    assert len(steps) == math.ceil(len(digits.x_train) / 512)


def test_one_sample_tail_batch_is_skipped(tmp_path: Path) -> None:
    """With batch norm, a last batch of one sample would fail; the loop skips it."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(41, 3)), columns=["a", "b", "c"])
    frame["target"] = np.arange(41) % 2
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    data = load_dataset(DataOptions("table", path=str(path), target="target", val_fraction=0.2))
    batch = len(data.x_train) - 1  # leaves a tail of exactly one sample
    run = TrainingRun("mlp", {"batch_norm": True, "batch_size": batch}, data, seed=0)
    assert math.isfinite(run.run_epoch()[m.VAL_LOSS])
