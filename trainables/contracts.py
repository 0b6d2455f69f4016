"""What a plug-in implements and may rely on: a model builder, a dataset loader and a training
function, the shapes the built-in families, datasets and loop have too.

`tuner.register_model` takes a `ModelBuilder`, `tuner.register_dataset` a `DatasetLoader`,
`tuner.register_training` a `TrainingFunction`, which gets a `TrialContext`; a loader may return
a `Split`. These, the layouts and `tuner.__all__` are the plug-in API: nothing else of tuner's
insides is promised to stay (docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch
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


class TrialData(Protocol):
    """What a training function may read of the prepared dataset (trainables.data.Dataset):
    split, standardised and encoded as for the built-in loop."""

    name: str
    layout: Layout
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None  # the held-out test split, where `has_test`
    y_test: np.ndarray | None
    num_classes: int | None  # None: regression

    @property
    def has_test(self) -> bool: ...

    @property
    def task(self) -> Literal["classification", "regression"]: ...

    @property
    def sample_shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True, kw_only=True)
class TrialContext:
    """What a training function gets: one trial's hyperparameters, seed, device, epochs to run,
    restored state and data, and `report`, through which it tells tuner each epoch.

    Attributes:
        hp: the trial's hyperparameters as the search space sampled them (its constants
            included); nothing is added, so a function reads its own defaults.
        seed: the trial's seed (the study's `search.seed`; a finalist re-run's own). torch's
            global RNG is seeded with it before the function is called.
        device: where to train: `cuda:0` when Ray gave the trial a GPU, else `cpu`.
        epochs: the epochs still to run, `range(start + 1, last + 1)`: from 1 on a fresh start,
            from the epoch after the restored checkpoint on a retry or `tuner resume`.
        state: the `checkpoint` the function passed to `report` at its last checkpoint, every
            tensor on CPU; None on a fresh start.
        data: the prepared dataset (split, standardised, labels encoded): `x_train`,
            `y_train`, `x_val`, `y_val` (NumPy arrays), `x_test`/`y_test` when `data.has_test`
            (finalist re-runs and `tuner train` of a study with `dataset.test_fraction`),
            `task`, `num_classes`, `sample_shape`, `layout`.
        rank: this worker's rank, 0 (a training function trains in one process: data-parallel
            workers, `resources.workers`, are for tuner's own loop).
        world_size: the trial's workers, 1.
    """

    hp: dict[str, Any]
    seed: int
    device: torch.device
    epochs: range
    state: dict[str, Any] | None
    data: TrialData
    rank: int = 0
    world_size: int = 1
    reporter: Callable[[int, Mapping[str, Any], dict[str, Any] | None], None] = field(repr=False)

    def report(
        self, epoch: int, metrics: Mapping[str, Any], checkpoint: dict[str, Any] | None = None
    ) -> None:
        """Tell tuner one epoch's metrics, once per epoch of `epochs`, in order.

        Args:
            epoch: the epoch just trained: the next one of `epochs`.
            metrics: numbers by name; `train_loss` and `val_loss` always (and every metric the
                study's objectives name, e.g. `val_acc`); `test_loss`/`test_acc` on the last
                epoch when `data.has_test`. `generalization_gap` and `epoch_time_s` are added
                unless given.
            checkpoint: what the function needs to resume after this epoch (e.g. the model's
                and optimizer's `state_dict()`): tensors, numbers, strings, and lists and dicts
                of them. Saved on CPU at most every second or so (always the first one), and
                handed back as `state` when the trial resumes.

        Raises:
            ValueError: a rule is broken (an epoch out of order or past the last, a required
                metric missing, a value that is not a number): the trial errors with the message.

        A non-finite train or validation loss is reported as diverged, without a checkpoint, and
        the trial ends there (`report` does not return). When a scheduler stops the trial, it
        ends in `report` too.
        """
        self.reporter(epoch, metrics, checkpoint)


class TrainingFunction(Protocol):
    """A whole training loop (`@tuner.register_training(name)`), used by `loop: name` specs."""

    def __call__(self, trial: TrialContext) -> None:
        """Train one trial, reporting every epoch.

        Args:
            trial: the trial's hyperparameters, seed, device, epochs, restored state and data,
                and `report` (see `TrialContext`).

        Returns:
            None, after the last epoch of `trial.epochs` (or earlier, to stop on its own). An
            exception errors the trial; Ray retries it (`failure.max_retries`) from its last
            checkpoint, and the traceback reaches the study's log and the trial's MLflow run.
        """
        ...
