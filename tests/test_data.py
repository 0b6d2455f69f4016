"""trainables/data.py: the dataset registry and pipeline: the built-ins' shapes and splits,
stratification and scaling, plug-in loaders, spec keys, the test split."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import assert_standardised, assert_stratified
from trainables.contracts import Split
from trainables.data import (
    DATASETS,
    DataOptions,
    Dataset,
    DatasetError,
    load_dataset,
    loader_options,
    register_dataset,
)
from trainables.registry import DuplicateNameError, UnknownNameError

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataOptions("digits"))


@pytest.fixture(scope="module")
def mnist_sample() -> Dataset:
    return load_dataset(DataOptions("mnist_sample"))


@pytest.fixture(scope="module")
def mnist1d() -> Dataset:
    return load_dataset(DataOptions("mnist1d"))


# --------------------------------------------------------------------------- built-in datasets


def test_registry_lists_datasets() -> None:
    assert DATASETS.names() == ["digits", "images", "mnist", "mnist1d", "mnist_sample", "table"]


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_dataset(DataOptions("cifar10"))
    assert "'cifar10'" in str(info.value)
    assert "digits, images, mnist, mnist1d, mnist_sample, table" in str(info.value)


@pytest.mark.parametrize(
    ("fixture", "layout", "sample_shape", "total"),
    [
        ("digits", "image", (1, 8, 8), 1797),
        ("mnist_sample", "image", (1, 28, 28), 5000),
        ("mnist1d", "sequence", (40, 1), 5000),
    ],
)
def test_builtin_shapes_and_layouts(
    request: pytest.FixtureRequest,
    fixture: str,
    layout: str,
    sample_shape: tuple[int, ...],
    total: int,
) -> None:
    data: Dataset = request.getfixturevalue(fixture)
    assert data.name == fixture
    assert data.layout == layout
    assert data.sample_shape == sample_shape
    assert data.x_val.shape[1:] == sample_shape
    assert len(data.x_train) + len(data.x_val) == total
    assert len(data.x_train) == len(data.y_train)
    assert len(data.x_val) == len(data.y_val)
    assert abs(len(data.x_val) / total - 0.2) < 0.01  # default val_fraction
    assert data.num_classes == 10
    assert data.output_dim == 10
    assert data.task == "classification"
    assert data.class_names == [str(c) for c in range(10)]
    assert data.x_train.dtype == np.float32
    assert data.x_val.dtype == np.float32
    assert data.y_train.dtype == np.int64
    assert set(np.unique(data.y_train)) == set(range(10))
    assert fixture in data.summary()


@pytest.mark.parametrize("fixture", ["digits", "mnist_sample", "mnist1d"])
def test_builtin_splits_are_stratified(request: pytest.FixtureRequest, fixture: str) -> None:
    assert_stratified(request.getfixturevalue(fixture))


@pytest.mark.parametrize("fixture", ["digits", "mnist_sample", "mnist1d"])
def test_inputs_standardised_with_training_statistics(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    data: Dataset = request.getfixturevalue(fixture)
    assert_standardised(data.x_train)
    # validation was scaled with the training statistics, so it is only close to 0 / 1
    assert abs(float(data.x_val.mean())) < 0.1
    assert abs(float(data.x_val.std()) - 1.0) < 0.1


@pytest.mark.parametrize("fraction", [0.1, 0.35])
def test_val_fraction_is_respected(fraction: float) -> None:
    data = load_dataset(DataOptions("digits", val_fraction=fraction))
    total = len(data.x_train) + len(data.x_val)
    assert len(data.x_val) == int(np.ceil(total * fraction))
    assert_stratified(data)


def test_same_seed_same_split(digits: Dataset) -> None:
    again = load_dataset(DataOptions("digits", seed=0))
    np.testing.assert_array_equal(again.x_train, digits.x_train)
    np.testing.assert_array_equal(again.y_val, digits.y_val)


def test_different_seed_different_split(digits: Dataset) -> None:
    other = load_dataset(DataOptions("digits", seed=1))
    assert other.x_train.shape == digits.x_train.shape
    assert not np.array_equal(other.y_train, digits.y_train)
    assert not np.array_equal(other.x_val, digits.x_val)


def test_train_and_val_are_disjoint(digits: Dataset) -> None:
    train = {row.tobytes() for row in digits.x_train}
    shared = sum(row.tobytes() in train for row in digits.x_val)
    assert shared <= 2  # digits has a handful of exact duplicate images, no more


# --------------------------------------------------------------------------- plug-in loaders


@pytest.fixture
def plugin() -> Iterator[Callable]:
    """`register_dataset` for loaders a test defines; what they registered is forgotten after."""
    yield register_dataset
    DATASETS.forget(__name__)  # the loaders' module: this file


def blobs_answer(n: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated 4-D blobs labelled by name, in a scale far from standard."""
    rng = np.random.default_rng(seed)
    labels = np.array(["gamma", "alpha", "beta"])[np.arange(n) % 3]
    centres = {"alpha": 0.0, "beta": 50.0, "gamma": 100.0}
    x = np.array([centres[c] for c in labels])[:, None] + rng.normal(0, 5, (n, 4)) + 1000
    return x, labels


def test_a_plugin_loader_gets_its_options_and_is_treated_like_a_builtin(plugin) -> None:
    seen: list[dict] = []

    @plugin("blobs", layout="vector", description="three blobs")
    def blobs(options: dict):
        seen.append(dict(options))
        options["n"] = -1  # a loader cannot change the spec's mapping
        return blobs_answer(90)

    opts = DataOptions("blobs", path="/data/x", options={"n": 90, "nested": {"a": [1]}})
    data = load_dataset(opts)
    assert seen == [{"n": 90, "nested": {"a": [1]}, "path": "/data/x"}]
    assert opts.options["n"] == 90
    assert DATASETS.get("blobs").description == "three blobs"
    assert DATASETS.get("blobs").layout == "vector"
    assert DATASETS.owner("blobs") == __name__
    assert data.name == "blobs" and data.layout == "vector" and data.sample_shape == (4,)
    assert data.class_names == ["alpha", "beta", "gamma"]  # sorted
    assert data.num_classes == 3
    assert data.y_train.dtype == np.int64
    assert len(data.x_val) == 18
    assert_stratified(data)
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-4)  # per feature
    np.testing.assert_allclose(data.x_train.std(axis=0), 1, atol=1e-4)
    # the labels stay attached to their rows: gamma blobs have the largest first feature
    gamma = data.class_names.index("gamma")
    assert data.x_val[data.y_val == gamma, 0].min() > data.x_val[data.y_val != gamma, 0].max()


def test_a_plugin_loader_with_float_targets_regresses(plugin) -> None:
    @plugin("line", layout="vector")
    def line(options: dict):
        x = np.arange(100.0)[:, None]
        return x, 3 * x[:, 0] + 7

    data = load_dataset(DataOptions("line", val_fraction=0.25))
    assert data.task == "regression" and data.num_classes is None and data.class_names == []
    assert data.y_train.dtype == np.float32
    assert abs(float(data.y_train.mean())) < 1e-4
    assert abs(float(data.y_train.std()) - 1) < 1e-4
    # x and y are the same line, so standardised they coincide
    np.testing.assert_allclose(data.x_val[:, 0], data.y_val, atol=1e-4)


def test_image_and_sequence_loaders_are_standardised_by_layout(plugin) -> None:
    rng = np.random.default_rng(0)
    scales = np.array([1.0, 100.0])

    @plugin("gray_images", layout="image")
    def gray_images(options: dict):
        return rng.uniform(0, 255, (60, 5, 6)), np.arange(60) % 2  # (N, H, W)

    @plugin("signals", layout="sequence")
    def signals(options: dict):
        return rng.normal(0, 1, (60, 7, 2)) * scales + 5, np.arange(60) % 2

    images = load_dataset(DataOptions("gray_images"))
    assert images.sample_shape == (1, 5, 6)  # one channel added
    assert_standardised(images.x_train)
    seq = load_dataset(DataOptions("signals"))
    assert seq.sample_shape == (7, 2)
    np.testing.assert_allclose(seq.x_train.mean(axis=(0, 1)), 0, atol=1e-4)
    np.testing.assert_allclose(seq.x_train.std(axis=(0, 1)), 1, atol=1e-4)


def test_a_split_from_the_loader_is_kept(plugin) -> None:
    x, y = blobs_answer(60)

    @plugin("presplit", layout="vector")
    def presplit(options: dict) -> Split:
        return Split(x[:50], y[:50], x[50:], y[50:])

    data = load_dataset(DataOptions("presplit", val_fraction=0.5, seed=3))
    assert (len(data.x_train), len(data.x_val)) == (50, 10)  # val_fraction and seed unused
    mean, std = x[:50].astype(np.float32).mean(axis=0), x[:50].astype(np.float32).std(axis=0)
    np.testing.assert_allclose(data.x_val, (x[50:] - mean) / std, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.array(data.class_names)[data.y_val], y[50:])


def test_window_cuts_any_vector_dataset_into_sequences(plugin) -> None:
    @plugin("series", layout="vector")
    def series(options: dict):
        t = np.arange(50.0)
        return np.stack([t, np.sin(t)], axis=1), t * 2

    data = load_dataset(DataOptions("series", window=5, val_fraction=0.2))
    assert data.layout == "sequence" and data.sample_shape == (5, 2)
    assert len(data.x_train) + len(data.x_val) == 46
    assert data.x_val[:, -1, 0].min() > data.x_train[:, -1, 0].max()  # latest windows validate


def loader_error(plugin, layout: str, answer, options: DataOptions | None = None) -> str:
    @plugin("bad", layout=layout)
    def bad(options: dict):
        return answer

    with pytest.raises(DatasetError) as info:
        load_dataset(options or DataOptions("bad"))
    return str(info.value)


X, Y = np.arange(60.0).reshape(30, 2), np.arange(30) % 3
NAN_X = X.copy()
NAN_X[5, 1] = np.nan


@pytest.mark.parametrize(
    ("layout", "answer", "message"),
    [
        (
            "vector",
            (X[:3], Y[:4]),
            "dataset 'bad': the loader returned x with 3 rows and y with 4 labels; they must match",
        ),
        (
            "vector",
            [X, Y],
            "dataset 'bad': the loader returned list; it must return a tuple (x, y)",
        ),
        (
            "vector",
            (X, Y, Y),
            "the loader returned tuple; it must return a tuple (x, y) or a Split",
        ),
        ("vector", X, "the loader returned ndarray"),
        (
            "vector",
            (X.reshape(30, 2, 1), Y),
            "x has shape (30, 2, 1); layout 'vector' needs (N, F)",
        ),
        ("vector", (X[:, 0], Y), "x has shape (30,); layout 'vector' needs (N, F)"),
        ("sequence", (X, Y), "x has shape (30, 2); layout 'sequence' needs (N, T, F)"),
        (
            "image",
            (X, Y),
            "x has shape (30, 2); layout 'image' needs (N, C, H, W) or (N, H, W) for one channel",
        ),
        ("vector", (X[:0], Y[:0]), "x has shape (0, 2); every axis needs at least one entry"),
        ("vector", (X, Y[:, None]), "y has shape (30, 1); it must be 1-D, one label per row of x"),
        ("vector", (X.astype(str), Y), "x has dtype <U32; inputs must be numeric"),
        ("vector", (X.astype(object), Y), "x has dtype object; inputs must be numeric"),
        ("vector", ([[1, 2], [3]], [0, 1]), "x is not an array"),
        (
            "vector",
            (NAN_X, Y),
            "x holds NaN or infinite values in 1 rows (first: row 5); inputs must be finite",
        ),
        (
            "vector",
            (X, np.where(np.arange(30) == 7, np.inf, 1.5)),
            "y holds NaN or infinite values in 1 rows (first: row 7); regression targets must",
        ),
        ("vector", (X, np.full(30, "cat")), "y holds one class ('cat'); classification needs"),
        ("vector", (X, np.zeros(30, dtype=np.int64)), "y holds one class (0); classification"),
        (
            "vector",
            (X, np.array(["a", None] * 15, dtype=object)),
            "y holds 15 missing labels (None or NaN; first: row 1)",
        ),
        ("vector", (X, Y + 1j), "y has dtype complex128; labels must be integers, strings"),
        (
            "vector",
            Split(X, Y, X[:, :1], Y),
            "x_train samples have shape (2,) and x_val samples (1,); they must match",
        ),
        (
            "vector",
            Split(X, Y.astype(float), X, Y),
            "y_train has dtype float64 and y_val int64; both must be classes",
        ),
        ("vector", Split(X, Y, X[:3], Y), "x_val with 3 rows and y_val with 30 labels"),
        ("vector", Split(X, Y * 0, X, Y * 0), "y_train and y_val hold one class (0)"),
    ],
)
def test_bad_loader_answers(plugin, layout: str, answer, message: str) -> None:
    assert message in loader_error(plugin, layout, answer)


def test_a_loader_that_raises_is_named_with_its_line(plugin) -> None:
    @plugin("broken", layout="vector")
    def broken(options: dict):
        return options["n_samples"]

    with pytest.raises(DatasetError) as info:
        load_dataset(DataOptions("broken"))
    line = broken.__code__.co_firstlineno + 2  # the decorator line, then def
    assert str(info.value) == (
        f"dataset 'broken': the loader failed at line {line} of {__file__}: KeyError: 'n_samples'"
    )


def test_a_loader_s_own_dataset_error_is_passed_on(plugin) -> None:
    @plugin("picky", layout="vector")
    def picky(options: dict):
        raise DatasetError("dataset.options.n: -1 must be positive")

    with pytest.raises(DatasetError, match=r"^dataset.options.n: -1 must be positive$"):
        load_dataset(DataOptions("picky"))


@pytest.mark.parametrize(
    ("layout", "answer", "options", "message"),
    [
        ("vector", (X, Y), {"image_size": (8, 8)}, "dataset.image_size: [8, 8] is for image"),
        ("sequence", (X[:, :, None], Y), {"grayscale": True}, "dataset.grayscale: True is for"),
        ("image", (X[:, :, None], Y), {"window": 3}, "dataset.window: 3 cuts vector rows"),
        ("vector", Split(X, Y, X, Y), {"window": 3}, "returned its own Split"),
        ("vector", (X, Y), {"window": 30}, "dataset.window: 30 needs more than 30 rows"),
    ],
)
def test_spec_keys_that_do_not_fit_the_dataset(
    plugin, layout: str, answer, options: dict, message: str
) -> None:
    assert message in loader_error(plugin, layout, answer, DataOptions("bad", **options))


@pytest.mark.parametrize("name", ["digits", "mnist_sample"])
def test_builtin_image_sets_are_not_resized(name: str) -> None:
    with pytest.raises(DatasetError, match=rf"dataset.image_size: \[8, 9\]: dataset '{name}'"):
        load_dataset(DataOptions(name, image_size=(8, 9)))


def test_a_bad_layout_is_refused_when_registering() -> None:
    with pytest.raises(DatasetError, match="layout 'table' is not one of image, sequence, vector"):
        register_dataset("x", layout="table")


def test_a_name_registered_twice_names_both_modules(plugin) -> None:
    with pytest.raises(DuplicateNameError, match=f"by trainables.datasets and by {__name__}"):

        @plugin("digits", layout="image")
        def digits(options: dict):
            return X, Y


# --------------------------------------------------------------------------- through the spec


def spec_with(dataset: dict, overrides: list[str] | None = None):
    from tuner.spec.job_spec import spec_from_dict

    return spec_from_dict({"name": "d", "model": "mlp", "dataset": dataset}, overrides=overrides)


def test_spec_options_reach_the_loader(plugin) -> None:
    seen: list[dict] = []

    @plugin("blobs", layout="vector")
    def blobs(options: dict):
        seen.append(options)
        return blobs_answer(options["n"])

    spec = spec_with({"name": "blobs", "options": {"n": 60}}, ["dataset.options.seed=4"])
    data = load_dataset(DataOptions(**spec.dataset.model_dump()))
    assert seen == [{"n": 60, "seed": 4}]
    assert len(data.x_train) + len(data.x_val) == 60
    assert "options:\n    n: 60\n    seed: 4\n" in spec.to_yaml()


def test_a_plugin_dataset_s_bad_data_is_a_spec_error_before_ray(plugin) -> None:
    from tuner.driver.preparation import prepare
    from tuner.errors import SpecError

    @plugin("blobs", layout="vector")
    def blobs(options: dict):
        return X, np.ones(30, dtype=np.int64)

    with pytest.raises(SpecError, match=r"dataset 'blobs': y holds one class \(1\)"):
        prepare(spec_with({"name": "blobs"}))


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ({"options": {"path": "x"}}, "dataset.options must not hold path (keys of dataset itself"),
        ({"options": {"a": [1.0, float("nan")]}}, "dataset.options.a.1 must be a finite number"),
        ({"options": [1]}, "dataset.options must be a valid dictionary"),
        ({"options": {"d": {1: 2}}}, "dataset.options.d has the key 1; keys must be strings"),
        ({"options": {"b": b"x"}}, "dataset.options.b is b'x' (bytes); it must be a string,"),
        ({"image_size": [8]}, "dataset.image_size list should have at least 2 items"),
        ({"image_size": [8, 0]}, "dataset.image_size.1 must be greater than or equal to 1"),
        ({"image_size": [8, 5000]}, "dataset.image_size.1 must be less than or equal to 4096"),
        ({"grayscale": "yes"}, "dataset.grayscale must be a valid boolean"),
    ],
)
def test_bad_dataset_keys_in_the_spec(dataset: dict, message: str) -> None:
    from tuner.errors import SpecError

    with pytest.raises(SpecError) as info:
        spec_with({"name": "images", **dataset})
    assert message in str(info.value)


def test_image_keys_travel_into_data_options() -> None:
    spec = spec_with({"name": "images", "path": "/x", "image_size": [12, 10], "grayscale": True})
    options = DataOptions(**spec.dataset.model_dump())
    assert options.image_size == (12, 10) and options.grayscale is True
    assert loader_options(options) == {"path": "/x", "image_size": (12, 10), "grayscale": True}


def test_an_options_alias_loop_is_refused() -> None:
    from tuner.errors import SpecError

    with pytest.raises(SpecError, match=r"dataset.options.n.0 contains itself \(a YAML alias"):
        spec_with({"name": "digits"}, ["dataset.options.n=&a [*a]"])


# --------------------------------------------------------------------------- the test split


def test_test_fraction_holds_out_a_stratified_test_split_before_the_search_split() -> None:
    from trainables.data import DataOptions, load_dataset

    plain_split = load_dataset(DataOptions("digits"))
    held = load_dataset(DataOptions("digits", test_fraction=0.2))
    assert not plain_split.has_test  # without it, the split is the one studies always had
    assert len(held.x_test) == 360 and len(held.x_val) == 360 and len(held.x_train) == 1077
    assert np.bincount(held.y_test).min() >= 35  # stratified: every class about a fifth
    rows = {r.tobytes() for r in held.x_test.reshape(360, -1)}
    search = np.concatenate([held.x_train, held.x_val]).reshape(1437, -1)
    assert rows.isdisjoint(r.tobytes() for r in search)
    assert held.without_test().x_test is None and held.without_test().x_train is held.x_train


def test_windows_test_split_is_the_latest_windows_sharing_no_row_with_earlier_ones() -> None:
    from trainables.data import DataOptions, load_dataset

    sunspots = Path(__file__).resolve().parents[1] / "examples/data/sunspots.csv"
    options = dict(name="table", path=str(sunspots), window=12)
    options["target"] = "next_activity"
    whole = load_dataset(DataOptions(**options))
    held = load_dataset(DataOptions(**options, test_fraction=0.2))
    n = len(whole.x_train) + len(whole.x_val)
    assert len(held.x_test) == round(n * 0.2)
    # the earlier windows lost: the test ones, and the 11 sharing rows with the first test window
    assert len(held.x_train) + len(held.x_val) == n - len(held.x_test) - 11


# --------------------------------------------------------------------------- flips


def test_flips_are_invalid_for_digits_unless_the_spec_says_otherwise(digits: Dataset) -> None:
    """A mirrored digit is not that digit: no built-in dataset may be flipped; a spec (an image
    folder of photos) or a plug-in's registration may say flips keep the label."""
    assert digits.flips_valid is False
    assert load_dataset(DataOptions("digits", options={"flips_valid": True})).flips_valid is True
    with pytest.raises(DatasetError) as info:
        load_dataset(DataOptions("digits", options={"flips_valid": "yes"}))
    assert str(info.value) == (
        "dataset.options.flips_valid: 'yes' is not a boolean: flips_valid must be true (a "
        "mirrored image keeps its label) or false"
    )


def test_a_plugin_may_register_flippable_images_and_only_images(plugin) -> None:
    @plugin("photos", layout="image", flips_valid=True)
    def photos(options: dict):
        x, y = blobs_answer(90)
        return x.reshape(90, 1, 2, 2), y

    @plugin("vectors", layout="vector")
    def vectors(options: dict):
        return blobs_answer(90)

    assert load_dataset(DataOptions("photos")).flips_valid is True
    assert load_dataset(DataOptions("photos", options={"flips_valid": False})).flips_valid is False
    with pytest.raises(DatasetError) as info:
        load_dataset(DataOptions("vectors", options={"flips_valid": True}))
    assert str(info.value) == (
        "dataset.options.flips_valid: true is for image datasets, but dataset 'vectors' has "
        "vector inputs; remove it"
    )
