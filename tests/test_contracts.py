"""trainables/contracts.py: the plug-in API's shapes. Every built-in model builder and dataset
loader takes the call its protocol describes, the layouts named are the ones tuner accepts, a
builder gets what `ModelBuilder` promises (declared hyperparameters only, the sample's shape
without the batch), and a `Split` is a fixed, positional record."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from trainables.contracts import DatasetLoader, Layout, ModelBuilder, Split
from trainables.data import DATASETS, LAYOUT_SHAPES
from trainables.models import LAYOUTS, MODELS, build_model, register_model


def call_parameters(protocol: type) -> list[str]:
    """The parameters of the protocol's `__call__`, less `self`."""
    return list(inspect.signature(protocol.__call__).parameters)[1:]


def test_the_layouts_are_the_ones_models_and_datasets_accept() -> None:
    assert typing.get_args(Layout) == LAYOUTS == tuple(LAYOUT_SHAPES)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_built_in_builder_takes_the_model_builder_call(name: str) -> None:
    builder = MODELS.get(name).build_fn
    signature = inspect.signature(builder)
    assert len(signature.parameters) == len(call_parameters(ModelBuilder))
    signature.bind({}, (1, 8, 8), "image", 10)  # positionally, as ModelFamily.build calls it


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_built_in_loader_takes_the_dataset_loader_call(name: str) -> None:
    assert call_parameters(DatasetLoader) == ["options"]
    inspect.signature(DATASETS.get(name).loader).bind({})


def test_a_builder_gets_what_the_protocol_promises() -> None:
    calls: list[tuple[Any, ...]] = []

    @register_model("contract-probe", layouts=("vector",), defaults={"width": 4, "depth": 1})
    def probe(
        hp: dict[str, Any], sample_shape: tuple[int, ...], layout: Layout, output_dim: int
    ) -> nn.Module:
        calls.append((dict(hp), sample_shape, layout, output_dim))
        return nn.Linear(sample_shape[0], output_dim)

    model = build_model("contract-probe", {"width": 9, "lr": 0.1}, (5,), "vector", 3)
    # undeclared keys (lr) never arrive; a declared one the trial leaves out gets its default
    assert calls == [({"width": 9, "depth": 1}, (5,), "vector", 3)]
    assert model(torch.zeros(2, 5)).shape == (2, 3)  # (N, *sample_shape) -> (N, output_dim)
    with pytest.raises(ValueError, match="cannot take image inputs"):
        build_model("contract-probe", {}, (1, 8, 8), "image", 3)


def test_a_split_is_a_frozen_positional_record() -> None:
    arrays = [np.full(2, i) for i in range(4)]
    split = Split(*arrays)
    assert [f.name for f in dataclasses.fields(Split)] == ["x_train", "y_train", "x_val", "y_val"]
    assert [getattr(split, f.name)[0] for f in dataclasses.fields(Split)] == [0, 1, 2, 3]
    with pytest.raises(dataclasses.FrozenInstanceError):
        split.x_train = arrays[1]  # type: ignore[misc]
