"""trainables/models.py: every registered model on a tiny batch of every compatible dataset."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_wine
from torch import nn

from trainables.data import DataOptions, Dataset, load_dataset
from trainables.models import ACTIVATIONS, MODELS, activation, build_model
from trainables.registry import UnknownNameError

BATCH = 6

#: A non-default configuration per model family, exercising its less common branches.
NON_DEFAULT: dict[str, dict[str, Any]] = {
    "mlp": {
        "num_layers": 3,
        "hidden_units": 24,
        "activation": "gelu",
        "batch_norm": True,
        "dropout": 0.2,
    },
    "cnn": {
        "conv_blocks": 3,
        "channels": 4,
        "kernel_size": 5,
        "pooling": "avg",
        "batch_norm": True,
        "hidden_units": 16,
        "activation": "silu",
        "dropout": 0.1,
    },
    "lstm": {"hidden_size": 12, "num_layers": 2, "bidirectional": True, "dropout": 0.1},
}

DATASETS = ["digits", "mnist1d", "table_window", "table_vector", "table_regression"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dataset]:
    folder = tmp_path_factory.mktemp("tables")
    wine = load_wine(as_frame=True).frame
    wine_csv = folder / "wine.csv"
    wine.to_csv(wine_csv, index=False)
    series = pd.DataFrame({"t": np.arange(60.0), "s": np.sin(np.arange(60.0) / 5)})
    series["y"] = np.cos(np.arange(60.0) / 5)
    series_csv = folder / "series.csv"
    series.to_csv(series_csv, index=False)
    return {
        "digits": load_dataset(DataOptions("digits")),
        "mnist1d": load_dataset(DataOptions("mnist1d")),
        "table_window": load_dataset(
            DataOptions("table", path=str(wine_csv), target="target", window=5)
        ),
        "table_vector": load_dataset(DataOptions("table", path=str(wine_csv), target="target")),
        "table_regression": load_dataset(
            DataOptions("table", path=str(series_csv), target="y", window=7)
        ),
    }


def tiny_batch(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.x_train[:BATCH]), torch.from_numpy(data.y_train[:BATCH])


def contract_cases() -> list[Any]:
    cases = []
    for name in MODELS.names():
        for dataset in DATASETS:
            for config in ("default", "non_default"):
                cases.append(pytest.param(name, dataset, config, id=f"{name}-{dataset}-{config}"))
    return cases


def test_dataset_layouts(datasets: dict[str, Dataset]) -> None:
    assert {k: d.layout for k, d in datasets.items()} == {
        "digits": "image",
        "mnist1d": "sequence",
        "table_window": "sequence",
        "table_vector": "vector",
        "table_regression": "sequence",
    }
    assert datasets["table_regression"].task == "regression"


def test_every_model_has_a_non_default_config() -> None:
    assert set(NON_DEFAULT) == set(MODELS.names())
    for name, config in NON_DEFAULT.items():
        defaults = MODELS.get(name).defaults
        assert set(config) <= set(defaults)
        assert all(config[k] != defaults[k] for k in config)


@pytest.mark.parametrize(("name", "dataset", "config"), contract_cases())
def test_model_contract(datasets: dict[str, Dataset], name: str, dataset: str, config: str) -> None:
    data = datasets[dataset]
    family = MODELS.get(name)
    hparams = NON_DEFAULT[name] if config == "non_default" else {}
    if data.layout not in family.layouts:
        with pytest.raises(ValueError, match="dataset.window") as info:
            build_model(name, hparams, data.sample_shape, data.layout, data.output_dim)
        assert data.layout in str(info.value)
        return

    torch.manual_seed(0)
    model = build_model(name, hparams, data.sample_shape, data.layout, data.output_dim)
    x, y = tiny_batch(data)
    model.train()
    out = model(x)
    assert out.shape == (BATCH, data.output_dim)
    assert torch.isfinite(out).all()
    loss = (
        nn.functional.cross_entropy(out, y) if data.num_classes else (out[:, 0] - y).pow(2).mean()
    )
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)

    model.eval()
    with torch.no_grad():
        out_eval = model(x)
        single = model(x[:1])
    assert out_eval.shape == (BATCH, data.output_dim)
    assert single.shape == (1, data.output_dim)
    torch.testing.assert_close(single, out_eval[:1], atol=1e-5, rtol=1e-4)  # eval: per-sample


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_mlp_non_default_structure(datasets: dict[str, Dataset]) -> None:
    data = datasets["digits"]
    model = build_model("mlp", NON_DEFAULT["mlp"], data.sample_shape, data.layout, 10)
    assert count(model, nn.Linear) == 4  # 3 hidden layers + output
    assert count(model, nn.GELU) == 3
    assert count(model, nn.BatchNorm1d) == 3
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[0].in_features == 64
    assert [m.out_features for m in linears] == [24, 24, 24, 10]


def test_mlp_defaults(datasets: dict[str, Dataset]) -> None:
    data = datasets["digits"]
    model = build_model("mlp", {}, data.sample_shape, data.layout, 10)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [128, 10]
    assert count(model, nn.ReLU) == 1
    assert count(model, nn.BatchNorm1d) == 0


def test_cnn_non_default_structure(datasets: dict[str, Dataset]) -> None:
    data = datasets["digits"]  # 8x8: pools to 4, 2, 1
    model = build_model("cnn", NON_DEFAULT["cnn"], data.sample_shape, data.layout, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16]  # channels double per block
    assert all(c.kernel_size == (5, 5) for c in convs)
    assert count(model, nn.AvgPool2d) == 3
    assert count(model, nn.MaxPool2d) == 0
    assert count(model, nn.BatchNorm2d) == 3
    assert count(model, nn.SiLU) == 4


def test_cnn_stops_pooling_at_size_one() -> None:
    model = build_model("cnn", {"conv_blocks": 3, "channels": 2}, (1, 4, 4), "image", 3)
    assert count(model, nn.MaxPool2d) == 2  # 4 -> 2 -> 1, then no more pooling
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)


def test_cnn_on_sequence_convolves_over_time(datasets: dict[str, Dataset]) -> None:
    data = datasets["mnist1d"]  # (40 steps, 1 feature)
    model = build_model("cnn", {"channels": 4}, data.sample_shape, data.layout, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [c.in_channels for c in convs] == [1, 4]
    assert count(model, nn.Conv2d) == 0


def test_cnn_unknown_pooling() -> None:
    with pytest.raises(ValueError, match="pooling 'median'"):
        build_model("cnn", {"pooling": "median"}, (1, 8, 8), "image", 10)


def test_lstm_non_default_structure(datasets: dict[str, Dataset]) -> None:
    data = datasets["digits"]
    model = build_model("lstm", NON_DEFAULT["lstm"], data.sample_shape, data.layout, 10)
    lstm = next(m for m in model.modules() if isinstance(m, nn.LSTM))
    assert lstm.bidirectional
    assert lstm.num_layers == 2
    assert lstm.hidden_size == 12
    assert lstm.input_size == 8  # an 8x8 image is read row by row
    assert lstm.dropout == pytest.approx(0.1)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert head[-1].in_features == 24  # both directions


def test_lstm_single_layer_has_no_inter_layer_dropout() -> None:
    model = build_model("lstm", {"dropout": 0.3}, (10, 3), "sequence", 2)
    lstm = next(m for m in model.modules() if isinstance(m, nn.LSTM))
    assert lstm.dropout == 0.0
    assert lstm.input_size == 3


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm"])
def test_dropout_0_is_an_identity_in_the_same_place(name: str) -> None:
    """No dropout layer where dropout is 0 (it would cost every batch and change nothing), and
    the model's state has the same keys as with dropout, so a checkpoint loads into either."""
    shape, layout = ((1, 8, 8), "image") if name != "lstm" else ((10, 3), "sequence")
    without = build_model(name, {"dropout": 0.0}, shape, layout, 4)
    with_dropout = build_model(name, {"dropout": 0.25}, shape, layout, 4)
    dropout_kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d)
    assert not any(isinstance(m, dropout_kinds) for m in without.modules())
    layers = sum(isinstance(m, dropout_kinds) for m in with_dropout.modules())
    assert layers >= 1
    assert count(without, nn.Identity) == layers
    assert without.state_dict().keys() == with_dropout.state_dict().keys()
    with_dropout.load_state_dict(without.state_dict())


def test_unknown_hyperparameters_are_ignored_by_the_builder() -> None:
    """The trial config also holds optimiser knobs; a model takes only its own."""
    model = build_model("mlp", {"lr": 0.1, "batch_size": 32}, (4,), "vector", 2)
    assert model(torch.zeros(3, 4)).shape == (3, 2)


@pytest.mark.parametrize("name", ["cnn", "lstm"])
def test_vector_layout_is_rejected_with_a_hint(name: str) -> None:
    with pytest.raises(ValueError) as info:
        build_model(name, {}, (13,), "vector", 3)
    msg = str(info.value)
    assert f"model {name!r} cannot take vector inputs" in msg
    assert "image or sequence" in msg
    assert "dataset.window" in msg


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_unknown_activation(name: str) -> None:
    with pytest.raises(ValueError) as info:
        build_model(name, {"activation": "swish"}, (1, 8, 8), "image", 10)
    msg = str(info.value)
    assert "activation 'swish' is unknown" in msg
    assert ", ".join(ACTIVATIONS) in msg


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_builds(name: str) -> None:
    assert isinstance(activation(name), nn.Module)
    model = build_model("mlp", {"activation": name}, (5,), "vector", 2)
    assert torch.isfinite(model(torch.randn(4, 5))).all()


def test_unknown_model_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_model("resnet", {}, (1, 8, 8), "image", 10)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == "unknown model 'resnet'; choose one of: cnn, lstm, mlp"


def test_registry_names() -> None:
    assert MODELS.names() == ["cnn", "lstm", "mlp"]
    assert "mlp" in MODELS
    assert "resnet" not in MODELS
    for name in MODELS.names():
        family = MODELS.get(name)
        assert family.name == name
        assert family.description
        assert family.defaults
