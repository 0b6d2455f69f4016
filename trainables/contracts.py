"""What a plug-in implements and may rely on: a model builder and a dataset loader, the shapes
the built-in families and datasets have too.

`tuner.register_model` takes a `ModelBuilder`, `tuner.register_dataset` a `DatasetLoader`; a
loader may return a `Split`. These, the layouts and `tuner.__all__` are the plug-in API: nothing
else of tuner's insides is promised to stay (docs/plugins.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from torch import nn

#: how a dataset's inputs are laid out, one sample's shape in brackets: "image" (C, H, W),
#: "sequence" (T, F) or "vector" (F,)
Layout = Literal["image", "sequence", "vector"]


@dataclass(frozen=True)
class Split:
    """What a loader returns when its data has its own validation part (kept as is)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


class ModelBuilder(Protocol):
    """Builds one trial's model (`@tuner.register_model(name, layouts=..., defaults=...)`)."""

    def __call__(
        self, hp: dict[str, Any], sample_shape: tuple[int, ...], layout: Layout, output_dim: int
    ) -> nn.Module:
        """A new, untrained model.

        Args:
            hp: every hyperparameter the family declared in `defaults`: the trial's value where
                the search space sets it, else the default (undeclared keys never arrive).
            sample_shape: one input's shape, without the batch dimension.
            layout: which of the family's `layouts` the dataset has.
            output_dim: the number of classes, or 1 for a regression target.

        Returns:
            A module taking a batch of shape (N, *sample_shape) to (N, output_dim): logits for
            classification (the loss is cross-entropy), values for regression (mean squared
            error). tuner moves it to the trial's device and picks its precision.
        """
        ...


class DatasetLoader(Protocol):
    """Loads a dataset's raw arrays (`@tuner.register_dataset(name, layout=...)`)."""

    def __call__(self, options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | Split:
        """The data, once per study, on the driver.

        Args:
            options: the spec's `dataset.options` as written, plus `path`, `target`, `window`,
                `image_size` and `grayscale` when the spec sets them.

        Returns:
            `(x, y)`: numeric `x` with N rows in the registered layout, and N labels in `y`
            (integers, strings or booleans classify; floats regress); or a `Split` to keep the
            data's own validation part. tuner checks, encodes, splits and standardises either.
            A ValueError's message reaches the user as the reason the dataset was refused.
        """
        ...
