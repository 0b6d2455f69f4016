"""The three model families, built by name from a trial's hyperparameters.

Each family declares its hyperparameters with defaults (so a search space can leave any of them
out, and a misspelt one is caught before Ray starts) and the input layouts it accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainables.contracts import Layout, ModelBuilder
from trainables.registry import Registry

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


def dropout(p: float, kind: type[nn.Module] = nn.Dropout) -> nn.Module:
    """A dropout layer of probability `p`, or an identity when `p` is 0. Dropout at 0 changes
    nothing but still costs a few microseconds a batch in training and evaluation (3-4 us against
    an identity's 1 on 2 cores); neither has parameters, so a model's state keeps its keys."""
    return nn.Identity() if p == 0 else kind(p)


@dataclass(frozen=True)
class ModelFamily:
    """A registered model: its builder, accepted input layouts and hyperparameter defaults."""

    name: str
    build_fn: ModelBuilder
    layouts: tuple[Layout, ...]
    defaults: dict[str, Any]
    description: str

    def build(
        self,
        hparams: dict[str, Any],
        sample_shape: tuple[int, ...],
        layout: Layout,
        output_dim: int,
    ) -> nn.Module:
        if layout not in self.layouts:
            raise ValueError(
                f"model {self.name!r} cannot take {layout} inputs; it takes "
                f"{' or '.join(self.layouts)} (for a table, set dataset.window to make sequences)"
            )
        params = {**self.defaults, **{k: v for k, v in hparams.items() if k in self.defaults}}
        return self.build_fn(params, sample_shape, layout, output_dim)


MODELS: Registry = Registry("model")


LAYOUTS: tuple[Layout, ...] = ("image", "sequence", "vector")


def register_model(
    name: str,
    *,
    layouts: tuple[Layout, ...],
    defaults: dict[str, Any],
    description: str | None = None,
) -> Callable:
    """Register a `ModelBuilder`, `build_fn(hp, sample_shape, layout, output_dim) -> nn.Module`,
    as model `name` (trainables/contracts.py says what it gets and returns).

    `defaults` declares every hyperparameter the builder reads (a search space may name only
    these); `layouts` the inputs it accepts; `description` defaults to the builder's docstring's
    first line. Breaking a rule raises ValueError when the decorator runs (at import)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"register_model: the name must be a non-empty string but got {name!r}")
    checked_layouts = check_layouts(name, layouts)
    check_defaults(name, defaults)

    def decorator(build_fn: ModelBuilder) -> ModelBuilder:
        if not callable(build_fn):
            raise ValueError(f"register_model({name!r}) decorates a builder function")
        text = description if description is not None else first_doc_line(build_fn)
        family = ModelFamily(name, build_fn, checked_layouts, dict(defaults), text)
        MODELS.register(name, owner=build_fn.__module__)(family)
        return build_fn

    return decorator


def check_layouts(name: str, layouts: Any) -> tuple[Layout, ...]:
    rule = f"a non-empty tuple of {', '.join(LAYOUTS)}"
    if isinstance(layouts, str) or not isinstance(layouts, (tuple, list, set, frozenset)):
        raise ValueError(f"model {name!r}: layouts must be {rule} but got {layouts!r}")
    unknown = [layout for layout in layouts if layout not in LAYOUTS]
    if not layouts or unknown:
        raise ValueError(f"model {name!r}: layouts must be {rule} but got {tuple(layouts)!r}")
    return tuple(layout for layout in LAYOUTS if layout in layouts)


def check_defaults(name: str, defaults: Any) -> None:
    if not isinstance(defaults, dict) or not defaults:
        raise ValueError(
            f"model {name!r} declares no hyperparameter defaults (got {defaults!r}); a family "
            "declares each hyperparameter it reads with a default (e.g. defaults={'width': 16})"
        )
    bad = [key for key in defaults if not isinstance(key, str) or not key.isidentifier()]
    if bad:
        raise ValueError(f"model {name!r}: hyperparameter names must be identifiers but got {bad}")


def first_doc_line(fn: Callable) -> str:
    lines = (getattr(fn, "__doc__", None) or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def build_model(
    name: str,
    hparams: dict[str, Any],
    sample_shape: tuple[int, ...],
    layout: Layout,
    output_dim: int,
) -> nn.Module:
    """Build the named model for inputs of `sample_shape` and `output_dim` outputs."""
    return MODELS.get(name).build(hparams, sample_shape, layout, output_dim)


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is unknown; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


# --------------------------------------------------------------------------- MLP


@register_model(
    "mlp",
    layouts=("image", "sequence", "vector"),
    defaults={
        "hidden_units": 128,
        "num_layers": 1,
        "activation": "relu",
        "dropout": 0.0,
        "batch_norm": False,
    },
    description="dense layers with activation and dropout (784 -> 128 -> 10 on MNIST by default)",
)
def build_mlp(
    hp: dict, sample_shape: tuple[int, ...], layout: Layout, output_dim: int
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(sample_shape)
    for _ in range(int(hp["num_layers"])):
        layers.append(nn.Linear(width, int(hp["hidden_units"])))
        width = int(hp["hidden_units"])
        if hp["batch_norm"]:
            layers.append(nn.BatchNorm1d(width))
        layers += [activation(hp["activation"]), dropout(float(hp["dropout"]))]
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- CNN


class SequenceToChannels(nn.Module):
    """(N, T, F) -> (N, F, T), so that a Conv1d sees the features as channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def conv_block(
    in_ch: int, out_ch: int, hp: dict, spatial: tuple[int, ...], dims: int
) -> tuple[list[nn.Module], tuple[int, ...]]:
    """Conv -> (BN) -> activation -> (pool) -> dropout; the layers and the new spatial size."""
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    kernel = int(hp["kernel_size"])
    layers: list[nn.Module] = [conv(in_ch, out_ch, kernel, padding="same")]
    if hp["batch_norm"]:
        layers.append(norm(out_ch))
    layers.append(activation(hp["activation"]))
    if hp["pooling"] != "none" and min(spatial) >= 2:
        pools = {"max": (nn.MaxPool2d, nn.MaxPool1d), "avg": (nn.AvgPool2d, nn.AvgPool1d)}
        if hp["pooling"] not in pools:
            raise ValueError(f"pooling {hp['pooling']!r} is unknown; choose max, avg or none")
        layers.append(pools[hp["pooling"]][0 if dims == 2 else 1](2))
        spatial = tuple(s // 2 for s in spatial)
    if dims == 2:
        layers.append(dropout(float(hp["dropout"]), nn.Dropout2d))
    else:
        layers.append(dropout(float(hp["dropout"]), nn.Dropout1d))
    return layers, spatial


@register_model(
    "cnn",
    layouts=("image", "sequence"),
    defaults={
        "conv_blocks": 2,
        "channels": 32,
        "kernel_size": 3,
        "pooling": "max",
        "hidden_units": 128,
        "activation": "relu",
        "dropout": 0.0,
        "batch_norm": False,
    },
    description="conv blocks (channels double per block, pooling), then a dense head",
)
def build_cnn(
    hp: dict, sample_shape: tuple[int, ...], layout: Layout, output_dim: int
) -> nn.Module:
    if layout == "image":
        in_ch, *spatial = sample_shape
        layers: list[nn.Module] = []
    else:  # sequence (T, F): convolve along T with F channels
        spatial, in_ch = [sample_shape[0]], sample_shape[1]
        layers = [SequenceToChannels()]
    dims = len(spatial)
    size = tuple(spatial)
    for block in range(int(hp["conv_blocks"])):
        out_ch = int(hp["channels"]) * 2**block
        block_layers, size = conv_block(in_ch, out_ch, hp, size, dims)
        layers += block_layers
        in_ch = out_ch
    layers += [
        nn.Flatten(),
        nn.Linear(in_ch * math.prod(size), int(hp["hidden_units"])),
        activation(hp["activation"]),
        dropout(float(hp["dropout"])),
        nn.Linear(int(hp["hidden_units"]), output_dim),
    ]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- LSTM


class LSTMClassifier(nn.Module):
    """An LSTM over a sequence; the head reads the last layer's final state (both directions)."""

    def __init__(self, input_size: int, hp: dict, output_dim: int, image_rows: bool):
        super().__init__()
        layers = int(hp["num_layers"])
        self.image_rows = image_rows
        self.lstm = nn.LSTM(
            input_size,
            int(hp["hidden_size"]),
            num_layers=layers,
            batch_first=True,
            dropout=float(hp["dropout"]) if layers > 1 else 0.0,
            bidirectional=bool(hp["bidirectional"]),
        )
        directions = 2 if hp["bidirectional"] else 1
        self.head = nn.Sequential(
            dropout(float(hp["dropout"])),
            nn.Linear(int(hp["hidden_size"]) * directions, output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_rows:  # (N, C, H, W) -> H steps of C*W features
            x = x.permute(0, 2, 1, 3).flatten(2)
        _, (h_n, _) = self.lstm(x)
        last = h_n[-2:].transpose(0, 1).flatten(1) if self.lstm.bidirectional else h_n[-1]
        return self.head(last)


@register_model(
    "lstm",
    layouts=("image", "sequence"),
    defaults={"hidden_size": 128, "num_layers": 1, "bidirectional": False, "dropout": 0.0},
    description="LSTM over a sequence (images row by row); a linear head on the last state",
)
def build_lstm(
    hp: dict, sample_shape: tuple[int, ...], layout: Layout, output_dim: int
) -> nn.Module:
    if layout == "image":
        channels, _, width = sample_shape
        return LSTMClassifier(channels * width, hp, output_dim, image_rows=True)
    return LSTMClassifier(sample_shape[1], hp, output_dim, image_rows=False)
