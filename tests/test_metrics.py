"""trainables/metrics.py: the metric names are distinct, their groups agree with each other (every
objective is a curve, accuracies are the classification-only ones, a model's costs are no curve),
and a training run reports exactly the names listed here."""

from __future__ import annotations

import numpy as np
import pytest

from trainables import metrics as m
from trainables.data import DataOptions, Dataset, load_dataset, register_dataset
from trainables.loop import TrainingRun

NAMES = {k: v for k, v in vars(m).items() if k.isupper() and isinstance(v, str)}


def test_every_metric_name_is_distinct() -> None:
    assert len(set(NAMES.values())) == len(NAMES), NAMES


def test_objectives_are_curves_with_a_sensible_direction() -> None:
    assert set(m.OBJECTIVES) <= set(m.CURVES)
    for metric, mode in {**m.OBJECTIVES, **m.MODEL_COSTS}.items():
        assert mode == ("max" if metric.endswith("_acc") else "min"), metric


def test_model_costs_are_no_per_epoch_curve_or_objective() -> None:
    assert m.MODEL_COSTS.keys() == {m.PARAMS, m.INFERENCE_MS}
    assert not set(m.MODEL_COSTS) & (set(m.CURVES) | set(m.OBJECTIVES))


def test_the_accuracies_are_the_classification_only_metrics() -> None:
    assert {n for n in m.CURVES if n.endswith("_acc")} == m.CLASSIFICATION_ONLY


def test_each_validation_objective_has_its_test_metric() -> None:
    assert m.TEST_OF == {m.VAL_LOSS: m.TEST_LOSS, m.VAL_ACC: m.TEST_ACC}
    for val, test in m.TEST_OF.items():
        assert val in m.OBJECTIVES and test == val.replace("val_", "test_")
        assert test not in m.CURVES  # only finalists measure the test split, once


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataOptions("digits"))


def test_a_classification_epoch_reports_every_curve(digits: Dataset) -> None:
    run = TrainingRun("mlp", {"hidden_units": 8}, digits, seed=0)
    result = run.run_epoch()
    assert set(result) == {m.EPOCH, *m.CURVES}
    assert result[m.EPOCH] == 1
    assert result[m.GENERALIZATION_GAP] == pytest.approx(result[m.VAL_LOSS] - result[m.TRAIN_LOSS])
    assert set(run.costs(latency=True)) == set(m.MODEL_COSTS)
    assert set(run.test_metrics(digits.x_val, digits.y_val)) == set(m.TEST_OF.values())


def test_a_regression_epoch_reports_every_curve_but_the_accuracies() -> None:
    @register_dataset("metrics-regression", layout="vector")
    def line(options: dict):
        x = np.linspace(0, 1, 80, dtype=np.float32)[:, None]
        return x, (3 * x[:, 0] + 1).astype(np.float32)

    data = load_dataset(DataOptions("metrics-regression"))
    run = TrainingRun("mlp", {"hidden_units": 4}, data, seed=0)
    assert set(run.run_epoch()) == {m.EPOCH, *m.CURVES} - m.CLASSIFICATION_ONLY
    assert set(run.test_metrics(data.x_val, data.y_val)) == {m.TEST_LOSS}
