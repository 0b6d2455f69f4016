"""tuner/driver/preparation.py: what is checked before Ray starts (data, space, one training
step of the model with each categorical choice), each failure a SpecError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import tiny_spec
from trainables import metrics as m
from tuner.driver.preparation import prepare
from tuner.errors import SpecError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_a_spec_that_fits_is_prepared_with_its_data_space_and_no_plugins() -> None:
    prepared = prepare(tiny_spec(model="mlp"))
    assert prepared.dataset.name == "digits" and prepared.dataset.sample_shape == (1, 8, 8)
    assert "lr" in prepared.space.params
    assert prepared.plugins == () and prepared.warm_start is None


def test_a_space_choice_the_model_cannot_build_names_the_model_data_and_choice() -> None:
    """Every categorical choice is built and trained one step: the one that fails is named."""
    space = {"dropout": {"type": "categorical", "choices": [0.1, 1.5]}, "lr": 0.01}
    spec = tiny_spec(model="mlp", search_space=space)
    with pytest.raises(SpecError) as refused:
        prepare(spec)
    message = str(refused.value)
    assert message.startswith("search_space: model 'mlp' cannot be built")
    assert "'dropout': 1.5" in message and "'digits'" in message
    assert "'dropout': 0.1" not in message  # the choice that builds is not blamed


def test_a_model_that_cannot_take_the_data_is_refused() -> None:
    dataset = {"name": "table", "path": str(EXAMPLES / "data/wine.csv"), "target": "cultivar"}
    with pytest.raises(SpecError, match="dataset.window"):
        prepare(tiny_spec(model="cnn", dataset=dataset))


def test_accuracy_objective_on_regression_is_refused() -> None:
    dataset = {
        "name": "table",
        "path": str(EXAMPLES / "data/sunspots.csv"),
        "target": "next_activity",
    }
    spec = tiny_spec(dataset=dataset, objective={"metric": m.VAL_ACC})
    with pytest.raises(SpecError, match="objective.metric.*regression"):
        prepare(spec)
