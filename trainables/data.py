"""Datasets by name -> normalised numpy arrays, split once on the driver.

A dataset is a loader registered with `register_dataset(name, layout=...)`: a function of the
spec's `dataset.options` (plus `path`, `target`, `window`, `image_size`, `grayscale` when set) that
returns raw arrays `(x, y)`, or a `Split` when the data has its own validation part. Everything
after the loader is tuner's, the same for the built-ins below and for plug-ins: the arrays are
checked against the layout, labels encoded, the data split and standardised. The layouts:

- ``image``: ``(N, C, H, W)`` (``(N, H, W)`` is one channel); the MLP flattens it, the CNN
  convolves it, the LSTM reads its rows.
- ``sequence``: ``(N, T, F)``; MLP flattens, CNN convolves along T (F channels), LSTM reads T steps.
- ``vector``: ``(N, F)``; only the MLP takes it (set ``dataset.window`` for sequence models).

Labels that are integers, strings or booleans are classes (sorted; their names are kept); float
targets regress, on a target standardised with the training split's statistics. Inputs are
standardised with the training split's statistics: one scalar for images, per feature for vectors
and sequences. Splits are seeded, and stratified for classification; a loader's `Split` is kept.
`dataset.window` cuts any vector dataset into sequences of consecutive rows, split chronologically
(validation = the latest windows).

`test_fraction` holds out a test split before the train/validation split (stratified and seeded
for classes; the latest windows for sequences, with the windows that share rows with them left
out): the search never sees it, only the finalists of `selection` are scored on it.
`val_fraction` and `test_fraction` are both shares of all the rows.
"""

from __future__ import annotations

import copy
import dataclasses
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from trainables.contracts import DatasetLoader, Layout, Split
from trainables.registry import Registry

#: the input shape each layout needs, for messages
LAYOUT_SHAPES: dict[str, str] = {
    "image": "(N, C, H, W)",
    "sequence": "(N, T, F)",
    "vector": "(N, F)",
}
#: the axes each layout is standardised over with the training split's statistics (None: all)
STANDARDISE_AXES: dict[str, tuple[int, ...] | None] = {
    "image": None,
    "sequence": (0, 1),
    "vector": (0,),
}
#: keys of the spec's `dataset:` section that reach every loader beside `dataset.options`
LOADER_SPEC_KEYS = ("path", "target", "window", "image_size", "grayscale")
#: the test split's random stream: seeded by (dataset.seed, this), apart from the validation split
TEST_STREAM = 2


class DatasetError(ValueError):
    """Bad dataset options or data; the message names the key, the value and the rule."""


class DatasetWarning(UserWarning):
    """Data a loader skipped (files that are not readable images); the message counts them."""


@dataclass(frozen=True)
class DataOptions:
    """What the job spec's `dataset:` section says, without depending on the spec's types."""

    name: str
    val_fraction: float = 0.2
    seed: int = 0
    test_fraction: float = 0.0  # share held out as the test split, before train/validation
    path: str | None = None
    target: str | None = None
    window: int | None = None
    image_size: tuple[int, int] | None = None  # [H, W]: image folders are resized to it
    grayscale: bool = False  # image folders: one channel instead of RGB
    options: Mapping[str, Any] = field(default_factory=dict)  # the loader's own, passed as is

    def __post_init__(self) -> None:
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(self.image_size))


@dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: its loader, its inputs' layout and a line for `tuner datasets`."""

    name: str
    layout: Layout
    loader: DatasetLoader
    description: str = ""
    flips_valid: bool = False  # a mirrored image keeps its label (`Dataset.flips_valid`)


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
    #: the held-out test split (dataset.test_fraction), None without one; search trials get the
    #: dataset `without_test()`
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    #: whether a left-right mirrored image keeps its label (augment: shift_flip); False for
    #: digits, True for most photos. The registered default, or `dataset.options.flips_valid`
    flips_valid: bool = False

    @property
    def has_test(self) -> bool:
        return self.x_test is not None

    def without_test(self) -> Dataset:
        """The same train/validation split with no test split in it: what the search gets."""
        return dataclasses.replace(self, x_test=None, y_test=None)

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
        test = f" / {len(self.x_test)} test" if self.has_test else ""
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} val{test}, "
            f"{self.layout} {self.sample_shape}, {target}"
        )


DATASETS: Registry[DatasetSource] = Registry("dataset")


def register_dataset(
    name: str, *, layout: Layout, description: str = "", flips_valid: bool = False
) -> Callable:
    """Register a `DatasetLoader`, `loader(options: dict) -> (x, y) | Split`, as dataset `name`.

    Example:
        >>> @register_dataset("blobs", layout="vector", description="three Gaussian blobs")
        ... def blobs(options: dict):
        ...     from sklearn.datasets import make_blobs
        ...     return make_blobs(n_samples=options.get("n", 300), random_state=0)

    Args:
        name: what a spec's ``dataset.name`` says.
        layout: ``"image"`` (x is (N, C, H, W) or (N, H, W)), ``"sequence"`` (N, T, F) or
            ``"vector"`` (N, F).
        description: one line for ``tuner datasets``.
        flips_valid: whether a left-right mirrored image keeps its label, so that the
            ``shift_flip`` augmentation may flip it (default False; a spec's
            ``dataset.options.flips_valid`` overrides it).

    The loader gets ``dataset.options`` plus ``path``, ``target``, ``window``, ``image_size``
    and ``grayscale`` when the spec sets them. It returns numeric ``x`` with N rows and ``y``
    with N labels (integers, strings or booleans classify; floats regress), or a ``Split`` for
    data with its own validation part. tuner checks, encodes, splits and standardises them.
    """
    if layout not in LAYOUT_SHAPES:
        raise DatasetError(
            f"register_dataset({name!r}): layout {layout!r} is not one of "
            f"{', '.join(LAYOUT_SHAPES)}"
        )

    def decorator(loader: DatasetLoader) -> DatasetLoader:
        if not callable(loader):
            raise DatasetError(f"register_dataset({name!r}) decorates {loader!r}, not a function")
        source = DatasetSource(name, layout, loader, description, flips_valid)
        DATASETS.register(name, owner=getattr(loader, "__module__", None))(source)
        return loader

    return decorator


def load_dataset(options: DataOptions) -> Dataset:
    """Load, check, split and standardise the named dataset; bad options or data raise
    `DatasetError`."""
    source = DATASETS.get(options.name)
    check_layout_keys(source, options)
    flips = flips_valid(source, options)
    data = build_dataset(source, call_loader(source, loader_options(options)), options)
    return dataclasses.replace(data, flips_valid=flips)


def flips_valid(source: DatasetSource, options: DataOptions) -> bool:
    """`dataset.options.flips_valid` (a boolean, image data only), else the registered default."""
    value = options.options.get("flips_valid", source.flips_valid)
    if not isinstance(value, bool):
        raise DatasetError(
            f"dataset.options.flips_valid: {value!r} is not a boolean: flips_valid must be true "
            "(a mirrored image keeps its label) or false"
        )
    if value and source.layout != "image":
        raise DatasetError(
            f"dataset.options.flips_valid: true is for image datasets, but dataset "
            f"{source.name!r} has {source.layout} inputs; remove it"
        )
    return value


def check_layout_keys(source: DatasetSource, options: DataOptions) -> None:
    """`image_size` and `grayscale` are for image data, `window` cuts vectors into sequences."""
    if source.layout != "image" and (options.image_size or options.grayscale):
        key = "image_size" if options.image_size else "grayscale"
        value = list(options.image_size) if options.image_size else True
        raise DatasetError(
            f"dataset.{key}: {value!r} is for image datasets, but dataset {source.name!r} has "
            f"{source.layout} inputs; remove it"
        )
    if options.window and source.layout != "vector":
        raise DatasetError(
            f"dataset.window: {options.window} cuts vector rows into sequences, but dataset "
            f"{source.name!r} has {source.layout} inputs already; remove it"
        )


def loader_options(options: DataOptions) -> dict[str, Any]:
    """`dataset.options` (a copy) plus the spec's own dataset keys that are set."""
    merged = copy.deepcopy(dict(options.options))
    for key in LOADER_SPEC_KEYS:
        value = getattr(options, key)
        if value is not None and value is not False:
            merged[key] = value
    return merged


def call_loader(source: DatasetSource, options: dict[str, Any]) -> Any:
    """The loader's answer; any exception but a DatasetError becomes one naming its line."""
    try:
        return source.loader(options)
    except DatasetError:
        raise
    except Exception as exc:
        file = getattr(getattr(source.loader, "__code__", None), "co_filename", None)
        frames = traceback.extract_tb(exc.__traceback__)
        own = [f for f in frames if f.filename == file] or frames
        where = f" at line {own[-1].lineno} of {own[-1].filename}" if own else ""
        raise DatasetError(
            f"dataset {source.name!r}: the loader failed{where}: {type(exc).__name__}: {exc}"
        ) from exc


# --------------------------------------------------------------------------- checks


def build_dataset(source: DatasetSource, answer: Any, options: DataOptions) -> Dataset:
    """What every loader's arrays go through: checks, label encoding, split, standardisation."""
    name, layout = source.name, source.layout
    x_test = y_test = None
    if isinstance(answer, Split):
        if options.test_fraction:
            raise DatasetError(
                f"dataset.test_fraction: {options.test_fraction}: dataset {name!r} returned its "
                "own train/validation Split, and the test split is carved out of one set of "
                "rows before that split; remove test_fraction, or give the data as one set"
            )
        if options.window:
            raise DatasetError(
                f"dataset.window: {options.window}: dataset {name!r} returned its own Split, "
                "and windows are cut from one series; remove window"
            )
        x_train, y_train = checked_arrays(name, layout, answer.x_train, answer.y_train, "_train")
        x_val, y_val = checked_arrays(name, layout, answer.x_val, answer.y_val, "_val")
        if x_train.shape[1:] != x_val.shape[1:]:
            raise DatasetError(
                f"dataset {name!r}: x_train samples have shape {x_train.shape[1:]} and x_val "
                f"samples {x_val.shape[1:]}; they must match"
            )
        (y_train, y_val), num_classes, class_names = encode_targets(name, [y_train, y_val])
    elif isinstance(answer, tuple) and len(answer) == 2:
        x, y = checked_arrays(name, layout, *answer, "")
        (y,), num_classes, class_names = encode_targets(name, [y])
        if options.window:
            x, y = sliding_windows(x, y, options.window)
            layout = "sequence"
            rest, test = chronological_test_split(len(x), options)
            train, val = chronological_split(len(rest), options, len(x))
        else:
            stratify = num_classes is not None
            rest, test = test_indices(y, options, stratify, name)
            share = options.val_fraction / (1 - options.test_fraction)  # of the rows left
            train, val = split_indices(y[rest], share, options.seed, stratify, name)
        train, val = rest[train], rest[val]
        x_train, y_train, x_val, y_val = x[train], y[train], x[val], y[val]
        if test is not None:
            x_test, y_test = x[test], y[test]
    else:
        raise DatasetError(
            f"dataset {name!r}: the loader returned {type(answer).__name__}; it must return a "
            "tuple (x, y) or a Split(x_train, y_train, x_val, y_val)"
        )
    held = [] if x_test is None else [x_test.astype(np.float32)]
    x_train, x_val, *x_held = standardize(
        x_train.astype(np.float32), x_val.astype(np.float32), *held, axis=STANDARDISE_AXES[layout]
    )
    if num_classes is None:  # regress on a standardised target so that lr ranges transfer
        y_train, y_val, *y_held = standardize(y_train, y_val, *([] if y_test is None else [y_test]))
        y_test = y_held[0] if y_held else None
    return Dataset(
        name,
        layout,
        x_train,
        y_train,
        x_val,
        y_val,
        num_classes,
        class_names,
        x_test=x_held[0] if x_held else None,
        y_test=y_test,
    )


def as_array(name: str, what: str, value: Any) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise DatasetError(f"dataset {name!r}: {what} is not an array: {exc}") from None


def checked_arrays(
    name: str, layout: Layout, x: Any, y: Any, part: str
) -> tuple[np.ndarray, np.ndarray]:
    """x and y as arrays that fit `layout`; `part` is '', '_train' or '_val' (for messages)."""
    xs, ys = f"x{part}", f"y{part}"
    x, y = as_array(name, xs, x), as_array(name, ys, y)
    if x.dtype.kind not in "biuf":
        raise DatasetError(
            f"dataset {name!r}: {xs} has dtype {x.dtype}; inputs must be numeric (integers, "
            "floats or booleans)"
        )
    if layout == "image" and x.ndim == 3:
        x = x[:, None]  # (N, H, W): one channel
    if x.ndim != len(LAYOUT_SHAPES[layout].split(",")):
        also = " or (N, H, W) for one channel" if layout == "image" else ""
        raise DatasetError(
            f"dataset {name!r}: {xs} has shape {x.shape}; layout {layout!r} needs "
            f"{LAYOUT_SHAPES[layout]}{also}"
        )
    if 0 in x.shape:
        raise DatasetError(
            f"dataset {name!r}: {xs} has shape {x.shape}; every axis needs at least one entry"
        )
    if y.ndim != 1:
        raise DatasetError(
            f"dataset {name!r}: {ys} has shape {y.shape}; it must be 1-D, one label per row of {xs}"
        )
    if len(x) != len(y):
        raise DatasetError(
            f"dataset {name!r}: the loader returned {xs} with {len(x)} rows and {ys} with "
            f"{len(y)} labels; they must match"
        )
    if x.dtype.kind == "f":
        require_finite(name, xs, x, "inputs")
    if y.dtype.kind == "f":
        require_finite(name, ys, y, "regression targets")
    elif y.dtype.kind not in "biuUSO":
        raise DatasetError(
            f"dataset {name!r}: {ys} has dtype {y.dtype}; labels must be integers, strings or "
            "booleans (classes) or floats (regression)"
        )
    return x, y


def require_finite(name: str, what: str, values: np.ndarray, rule: str) -> None:
    bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
    if len(bad):
        raise DatasetError(
            f"dataset {name!r}: {what} holds NaN or infinite values in {len(bad)} rows "
            f"(first: row {bad[0]}); {rule} must be finite"
        )


def encode_targets(
    name: str, ys: list[np.ndarray]
) -> tuple[list[np.ndarray], int | None, list[str]]:
    """Float targets regress (float32); any other labels are classes coded 0.. in sorted order.
    `ys` are the parts of one split (train, val), encoded together."""
    import pandas as pd

    names, verb = ("y", "holds") if len(ys) == 1 else ("y_train and y_val", "hold")
    floats = [y.dtype.kind == "f" for y in ys]
    if all(floats):
        return [y.astype(np.float32) for y in ys], None, []
    if any(floats):
        raise DatasetError(
            f"dataset {name!r}: y_train has dtype {ys[0].dtype} and y_val {ys[1].dtype}; both "
            "must be classes (integers, strings, booleans) or both regression targets (floats)"
        )
    labels = np.concatenate(ys) if len(ys) > 1 else ys[0]
    try:
        codes, classes = pd.factorize(labels, sort=True)
    except TypeError as exc:
        raise DatasetError(
            f"dataset {name!r}: {names} mix labels that cannot be sorted ({exc}); use one type"
        ) from None
    missing = np.flatnonzero(codes < 0)
    if len(missing):
        raise DatasetError(
            f"dataset {name!r}: {names} {verb} {len(missing)} missing labels (None "
            f"or NaN; first: row {missing[0]}); every row needs a label"
        )
    if len(classes) < 2:
        raise DatasetError(
            f"dataset {name!r}: {names} {verb} one class ({classes.tolist()[0]!r}); "
            "classification needs at least 2"
        )
    codes = codes.astype(np.int64)
    parts = np.split(codes, np.cumsum([len(y) for y in ys])[:-1])
    return parts, len(classes), [str(c) for c in classes]


# --------------------------------------------------------------------------- splitting and scaling


def split_indices(
    y: np.ndarray, val_fraction: float, seed: int, stratify: bool, name: str = ""
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
            f"dataset {name!r}: cannot split {len(y)} samples with val_fraction {val_fraction} "
            f"and seed {seed} (stratified by class: {stratify}): {exc}"
        ) from None


def test_indices(
    y: np.ndarray, options: DataOptions, stratify: bool, name: str = ""
) -> tuple[np.ndarray, np.ndarray | None]:
    """(the rows left for training and validation, the test rows), or (all rows, None) without
    a test split. Seeded by `dataset.seed` and stratified like the validation split, but drawn
    first and from its own stream, so that the search's split never reaches into the test rows."""
    rows = np.arange(len(y))
    if not options.test_fraction:
        return rows, None
    from sklearn.model_selection import train_test_split

    try:
        rest, test = train_test_split(
            rows,
            test_size=options.test_fraction,
            random_state=np.random.RandomState([options.seed, TEST_STREAM]),
            stratify=y if stratify else None,
        )
    except ValueError as exc:
        raise DatasetError(
            f"dataset {name!r}: cannot hold out test_fraction {options.test_fraction} of "
            f"{len(y)} samples (stratified by class: {stratify}): {exc}"
        ) from None
    return np.sort(rest), np.sort(test)


def chronological_test_split(n: int, options: DataOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """The latest `test_fraction` of `n` windows test; the `window - 1` windows before them share
    rows with the first test window and are left out; the earlier ones remain for the search."""
    rows = np.arange(n)
    if not options.test_fraction:
        return rows, None
    n_test = max(1, int(round(n * options.test_fraction)))
    n_rest = n - n_test - (options.window - 1)
    if n_rest < 2:
        raise DatasetError(
            f"dataset.test_fraction: {options.test_fraction} of {n} windows "
            f"(dataset.window: {options.window}) leaves {max(n_rest, 0)} windows for training "
            "and validation; it needs at least 2"
        )
    return rows[:n_rest], rows[n - n_test :]


def sliding_windows(x: np.ndarray, y: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of `window` consecutive rows, each labelled with the target of its last row."""
    if window > len(x) - 1:
        raise DatasetError(f"dataset.window: {window} needs more than {len(x)} rows of data")
    starts = np.arange(len(x) - window + 1)
    return x[starts[:, None] + np.arange(window)], y[starts + window - 1]


def chronological_split(
    n: int, options: DataOptions, total: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The latest `val_fraction` of the windows (of `total`, all of them before a test split
    was taken: default `n`) validate, the earlier ones train; `n` windows are left to split."""
    n_val = max(1, int(round((total or n) * options.val_fraction)))
    if n_val >= n:
        raise DatasetError(
            f"dataset.val_fraction: {options.val_fraction} of {n} windows "
            f"(dataset.window: {options.window}) leaves no training window"
        )
    return np.arange(n - n_val), np.arange(n - n_val, n)


def standardize(
    train: np.ndarray, *others: np.ndarray, axis: tuple[int, ...] | None = None
) -> list[np.ndarray]:
    """Scale by the training split's mean and std (over `axis`; None = one scalar for all)."""
    mean = train.mean(axis=axis, keepdims=axis is not None)
    std = train.std(axis=axis, keepdims=axis is not None)
    std = np.where(std < 1e-8, 1.0, std)
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def refuse_resizing(name: str, options: dict[str, Any]) -> None:
    """Built-in image sets come in one size: `image_size` is for image folders."""
    if options.get("image_size"):
        raise DatasetError(
            f"dataset.image_size: {list(options['image_size'])!r}: dataset {name!r} is not "
            "resized; image_size is for the images dataset (a folder of class folders)"
        )
