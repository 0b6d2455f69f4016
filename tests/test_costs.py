"""trainables/costs.py: a model's parameter count and per-sample latency, measured alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables import metrics as m
from trainables.costs import inference_ms, model_costs, parameter_count
from trainables.data import DataOptions, Dataset, load_dataset
from trainables.loop import TrainingRun


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataOptions("digits"))


def test_parameter_count_counts_trainable_weights_once() -> None:
    shared = nn.Linear(4, 3)  # 4*3 + 3 = 15
    frozen = nn.Linear(3, 2)
    frozen.requires_grad_(False)
    model = nn.Sequential(shared, nn.ReLU(), shared, frozen)
    assert parameter_count(model) == 15


def test_inference_ms_is_positive_and_leaves_the_model_as_found() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 2))
    model.train()
    rng = torch.get_rng_state()
    latency = inference_ms(model, torch.ones(10, 8), repeats=3)
    assert latency > 0
    assert model.training  # back in the mode it was in
    assert torch.equal(torch.get_rng_state(), rng)  # eval mode: dropout drew nothing


def test_inference_ms_refuses_an_empty_batch() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        inference_ms(nn.Linear(2, 2), torch.ones(0, 2))


def test_model_costs_times_only_when_given_a_batch() -> None:
    model = nn.Linear(3, 2)
    assert model_costs(model) == {m.PARAMS: 8}
    both = model_costs(model, torch.ones(4, 3))
    assert both[m.PARAMS] == 8 and both[m.INFERENCE_MS] > 0


def test_a_wider_mlp_costs_more_parameters(digits: Dataset) -> None:
    narrow = TrainingRun("mlp", {"hidden_units": 16}, digits).costs()
    wide = TrainingRun("mlp", {"hidden_units": 256}, digits).costs()
    assert wide[m.PARAMS] > narrow[m.PARAMS] > 0
    assert set(narrow) == {m.PARAMS}


def test_measuring_latency_does_not_change_training(digits: Dataset) -> None:
    """A run that measured its latency first trains exactly like one that did not."""
    measured = TrainingRun("mlp", {"dropout": 0.3}, digits, seed=3)
    costs = measured.costs(latency=True)
    after_measuring = measured.run_epoch()[m.VAL_LOSS]  # (runs seed the global RNG: one at a time)
    plain = TrainingRun("mlp", {"dropout": 0.3}, digits, seed=3).run_epoch()[m.VAL_LOSS]
    assert costs[m.INFERENCE_MS] > 0
    assert after_measuring == plain
