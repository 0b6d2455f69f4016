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


@pytest.mark.parametrize(
    ("dataset", "space", "message"),
    [
        (
            {
                "name": "table",
                "path": str(EXAMPLES / "data/sunspots.csv"),
                "target": "next_activity",
            },
            {"label_smoothing": {"type": "float", "low": 0.0, "high": 0.1}},
            "search_space.label_smoothing.high: 0.1 smooths class labels, but dataset 'table' "
            "has a regression target: label_smoothing must be 0 (or left out) for regression",
        ),
        (
            {"name": "table", "path": str(EXAMPLES / "data/wine.csv"), "target": "cultivar"},
            {"augment": {"type": "categorical", "choices": ["none", "shift"]}},
            "search_space.augment.choices: 'shift' shifts and flips images, but dataset 'table' "
            "has vector inputs: augment must be none for non-image data",
        ),
        (
            {"name": "digits"},
            {"augment": "shift_flip"},
            "search_space.augment: 'shift_flip' flips images, but dataset 'digits' says a "
            "flipped image may not keep its label (flips_valid: false; a mirrored digit is not "
            "that digit): use shift, or set dataset.options.flips_valid: true for data where "
            "flips are valid",
        ),
        (
            {"name": "digits"},
            {"warmup_epochs": {"type": "int", "low": 0, "high": 2}},
            "search_space.warmup_epochs.high: 2 is not shorter than the epoch budget: "
            "warmup_epochs must be less than scheduler.max_epochs (2), or no trial would train "
            "at its full learning rate",
        ),
    ],
    ids=["smoothing-regression", "augment-vectors", "flip-digits", "warmup-budget"],
)
def test_recipe_knobs_that_do_not_fit_the_data_or_budget_are_refused(
    dataset: dict, space: dict, message: str
) -> None:
    """What only the study's data and max_epochs can tell, refused before Ray like the rest."""
    spec = tiny_spec(dataset=dataset, search_space={"lr": 0.01, **space})
    with pytest.raises(SpecError) as refused:
        prepare(spec)
    assert str(refused.value) == message


def test_recipe_knobs_that_fit_are_prepared() -> None:
    space = {
        "lr": 0.01,
        "lr_schedule": {"type": "categorical", "choices": ["cosine", "onecycle"]},
        "warmup_epochs": {"type": "int", "low": 0, "high": 1},
        "augment": "shift",
        "label_smoothing": 0.1,
        "grad_clip_norm": 1.0,
    }
    prepared = prepare(tiny_spec(search_space=space))
    assert set(prepared.space.names()) == set(space)
