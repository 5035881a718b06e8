"""Dataset resolution: explicit directory, system location, tfds (mocked), and the failure message.

Nothing here touches the network: tfds is only reached with download=False, through
``tfds.testing.mock_data`` (whose download_and_prepare is a no-op), or with TensorFlow reported
missing.
"""

import importlib.util
import pathlib
import pickle

import numpy as np
import pytest

from supsup_jax.data import (
    DataNotFoundError,
    LazySubset,
    TfdsImages,
    load_dataset,
    split_cifar100,
    split_imagenet,
    tfds_source,
)
from supsup_jax.data import sources as sources_lib

FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


def _write_idx(path: pathlib.Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_idx_dataset(directory: pathlib.Path, n_train: int, n_test: int) -> dict:
    rng = np.random.default_rng(n_train)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        _write_idx(directory / name, array)
    return arrays


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No data anywhere: no SUPSUP_DATA_DIR, no system locations, an empty tfds data_dir."""
    tfds_dir = tmp_path / "tfds"
    tfds_dir.mkdir()
    monkeypatch.delenv("SUPSUP_DATA_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    monkeypatch.setattr(sources_lib, "SYSTEM_LOCATIONS", {})
    return tmp_path


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist absent")
def test_fashion_mnist_system_location(monkeypatch, tmp_path, fashion_mnist):
    monkeypatch.delenv("SUPSUP_DATA_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    ds = load_dataset("fashion_mnist", download=False)
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.test_labels.shape == (10000,)
    # The conftest fixture (default environment) resolves to the same data.
    np.testing.assert_array_equal(ds.test_images, fashion_mnist.test_images)
    np.testing.assert_array_equal(ds.train_labels, fashion_mnist.train_labels)


def test_env_dir_preferred_over_system_location(monkeypatch, tmp_path):
    arrays = _write_idx_dataset(tmp_path / "fashion_mnist", 6, 4)
    monkeypatch.setenv("SUPSUP_DATA_DIR", str(tmp_path))
    ds = load_dataset("fashion_mnist", download=False)
    assert ds.train_images.shape == (6, 28, 28, 1)
    np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])


def test_argument_preferred_over_env(monkeypatch, tmp_path):
    _write_idx_dataset(tmp_path / "env", 6, 4)
    _write_idx_dataset(tmp_path / "arg", 3, 2)  # files directly in the directory
    monkeypatch.setenv("SUPSUP_DATA_DIR", str(tmp_path / "env"))
    ds = load_dataset("mnist", data_dir=tmp_path / "arg", download=False)
    assert len(ds.train_images) == 3 and ds.name == "mnist"


def test_nothing_found_lists_every_place(isolated, monkeypatch):
    empty = isolated / "empty"
    empty.mkdir()
    monkeypatch.setenv("SUPSUP_DATA_DIR", str(empty))
    monkeypatch.setattr(
        sources_lib, "SYSTEM_LOCATIONS", {"fashion_mnist": (str(isolated / "sys"),)}
    )
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion_mnist", download=False)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert f"{empty} ($SUPSUP_DATA_DIR)" in msg
    assert str(empty / "fashion_mnist") in msg
    assert f"tfds.data_source('fashion_mnist', data_dir='{empty}')" in msg
    assert "download=False" in msg
    # An explicit directory is the only place tried: no silent fallback to other data.
    assert "(system location)" not in msg and "were not tried" in msg
    monkeypatch.delenv("SUPSUP_DATA_DIR")
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion_mnist", download=False)
    msg = str(err.value)
    assert f"{isolated / 'sys'} (system location)" in msg
    assert f"data_dir='{isolated / 'tfds'}'" in msg  # the tfds default, from $TFDS_DATA_DIR
    assert "download=False" in msg
    assert "dataset-fashion-mnist" in msg and "pip install -e .[tfds]" in msg
    assert "SUPSUP_DATA_DIR" in msg and "data_dir=" in msg


def test_no_download_without_tensorflow(isolated, monkeypatch):
    monkeypatch.setattr(sources_lib, "_tensorflow_available", lambda: False)
    with pytest.raises(
        DataNotFoundError, match=r"tensorflow not installed \(pip install -e \.\[tfds\]\)"
    ):
        load_dataset("cifar10", download=True)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")


def _cifar_batch(rng, n, label_key, num_classes):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    batch = {b"data": data, label_key.encode(): list(rng.integers(0, num_classes, n))}
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [99] * n  # must not be used
    return batch


def _expected_images(batches):
    # Independent reference: each row is three 32x32 planes (R, G, B).
    data = np.concatenate([b[b"data"] for b in batches])
    out = np.empty((len(data), 32, 32, 3), np.uint8)
    for ch in range(3):
        out[..., ch] = data[:, ch * 1024 : (ch + 1) * 1024].reshape(-1, 32, 32)
    return out


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickles(isolated, name):
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, key, k = isolated / "cifar-10-batches-py", "labels", 10
        train = {f"data_batch_{i}": _cifar_batch(rng, 2, key, k) for i in range(1, 6)}
        test = {"test_batch": _cifar_batch(rng, 3, key, k)}
    else:
        folder, key, k = isolated / "cifar100" / "cifar-100-python", "fine_labels", 100
        train = {"train": _cifar_batch(rng, 7, key, k)}
        test = {"test": _cifar_batch(rng, 3, key, k)}
    folder.mkdir(parents=True)
    for file, batch in {**train, **test}.items():
        with open(folder / file, "wb") as f:
            pickle.dump(batch, f)
    ds = load_dataset(name, data_dir=isolated, download=False)
    assert ds.num_classes == k and ds.train_images.dtype == np.uint8
    np.testing.assert_array_equal(ds.train_images, _expected_images(list(train.values())))
    np.testing.assert_array_equal(ds.test_images, _expected_images(list(test.values())))
    labels = np.concatenate([b[key.encode()] for b in train.values()])
    np.testing.assert_array_equal(ds.train_labels, labels)
    assert ds.train_labels.dtype == np.int32


class _ListSource:
    """A minimal tfds-like data source that counts how it is read."""

    def __init__(self, examples):
        self.examples = examples
        self.batched_calls = 0

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        raise AssertionError("per-example access used although __getitems__ exists")

    def __getitems__(self, keys):
        self.batched_calls += 1
        return [self.examples[k] for k in keys]


def test_read_columns_is_batched(monkeypatch):
    monkeypatch.setattr(tfds_source, "READ_CHUNK", 4)
    examples = [{"image": np.full((2, 2, 1), i, np.uint8), "label": np.int64(i)} for i in range(10)]
    source = _ListSource(examples)
    cols = tfds_source.read_columns(source, ["image", "label"])
    assert cols["image"].shape == (10, 2, 2, 1) and cols["image"].dtype == np.uint8
    np.testing.assert_array_equal(cols["label"], np.arange(10))
    assert source.batched_calls == 1 + 3  # one probe, then ceil(10 / 4) chunks


def test_center_crop_offsets():
    # Shorter side already 256: the resize is the identity and only the crop offsets matter.
    image = np.random.default_rng(0).integers(0, 256, (300, 256, 3), dtype=np.uint8)
    out = tfds_source.resize_center_crop(image, 224, 256)
    np.testing.assert_array_equal(out, image[38:262, 16:240])


# --- tensorflow-datasets, mocked (no TensorFlow, no files, no network) ---------------------------

tfds = pytest.importorskip("tensorflow_datasets")


def _mock(num_examples):
    # USE_CODE: the dataset classes' own feature specs, no metadata files needed.
    return tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
    )


@pytest.mark.parametrize(
    "name,shape,k", [("mnist", (28, 28, 1), 10), ("cifar100", (32, 32, 3), 100)]
)
def test_tfds_mock_arrays(isolated, name, shape, k):
    with _mock(12):
        ds = load_dataset(name, download=False)
        reference = tfds.data_source(name, split="train", download=False)
        expected = np.stack([reference[i]["image"] for i in range(12)])
        expected_labels = np.array([reference[i]["label"] for i in range(12)])
    assert ds.name == name and ds.num_classes == k
    assert ds.train_images.shape == (12,) + shape and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (12,) + shape
    np.testing.assert_array_equal(ds.train_images, expected)
    np.testing.assert_array_equal(ds.train_labels, expected_labels)
    assert ds.train_labels.dtype == np.int32


def test_tfds_mock_split_cifar100(isolated):
    with _mock(300):
        ds = load_dataset("cifar100", download=False)
    stream = split_cifar100(ds, seed=3)
    seen = []
    for t in range(20):
        task = stream.task(t)
        assert task.num_classes == 5 and set(np.unique(task.train_labels)) <= set(range(5))
        seen.append(stream.classes(t)[task.train_labels])
    # Every example lands in exactly one task, with its label restored by classes(t).
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.sort(ds.train_labels))
    assert stream.augment == "cifar" and stream.mean == (0.491, 0.482, 0.447)


def test_tfds_mock_imagenet_lazy(isolated):
    with _mock(30):
        ds = load_dataset("imagenet2012", download=False)
        assert isinstance(ds.train_images, TfdsImages) and len(ds.train_images) == 30
        assert ds.test_labels.shape == (30,) and ds.train_labels.dtype == np.int32
        batch = ds.train_images[np.array([0, 5, 5])]
        assert batch.shape == (3, 224, 224, 3) and batch.dtype == np.uint8
        np.testing.assert_array_equal(batch[1], batch[2])
        # Training: the whole short side at 224 (random crops are drawn from it on device);
        # evaluation: Resize(256) + CenterCrop(224).
        raw = tfds.data_source("imagenet2012", split="train", download=False)[5]["image"]
        np.testing.assert_array_equal(batch[1], tfds_source.resize_center_crop(raw, 224, 224))
        raw = tfds.data_source("imagenet2012", split="validation", download=False)[5]["image"]
        np.testing.assert_array_equal(ds.test_images[np.array([5])][0],
                                      tfds_source.resize_center_crop(raw, 224, 256))

        stream = split_imagenet(ds)
        assert stream.augment == "imagenet" and stream.num_tasks == 100
        sizes = [len(stream.task(t).train_labels) for t in range(100)]
        assert sum(sizes) == 30
        task = stream.task(int(np.argmax(sizes)))
        assert isinstance(task.train_images, LazySubset) and task.num_classes == 10
        images = task.train_images[np.arange(len(task.train_images))]
        assert images.shape == (max(sizes), 224, 224, 3)
        (where,) = np.nonzero(np.isin(ds.train_labels, stream.classes(int(np.argmax(sizes)))))
        np.testing.assert_array_equal(images, ds.train_images[where])


def test_load_dataset_records_its_source(fashion_mnist):
    assert fashion_mnist.source.startswith("idx files in ")
    assert pathlib.Path(fashion_mnist.source.removeprefix("idx files in ")).is_dir()


def _tfrecord_prepared(data_dir):
    """tfds metadata of MNIST prepared the default way (tfrecord), as tfds.load leaves it."""
    b = tfds.builder("mnist", data_dir=str(data_dir), file_format="tfrecord")
    version_dir = pathlib.Path(b.data_dir)
    version_dir.mkdir(parents=True)
    b.info.write_to_directory(version_dir)
    return version_dir


def test_tfrecord_prepared_data_without_tensorflow_says_how_to_convert(isolated, monkeypatch):
    version_dir = _tfrecord_prepared(isolated / "tf")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "tensorflow" else real(n, *a))
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("mnist", data_dir=str(isolated / "tf"), download=False)
    text = str(e.value)
    assert "prepared as tfrecord" in text and "pip install -e .[tfds]" in text
    assert f"tfds convert_format --dataset_version_dir={version_dir} " in text
    assert f"data_dir={isolated / 'tf'}_array_record" in text


def test_tfrecord_prepared_data_reads_through_tfds_load_with_tensorflow(isolated, monkeypatch):
    _tfrecord_prepared(isolated / "tf")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: object() if n == "tensorflow" else real(n, *a))
    rng = np.random.default_rng(0)
    splits = {s: (rng.integers(0, 256, (n, 28, 28, 1), np.uint8), rng.integers(0, 10, n))
              for s, n in (("train", 7), ("test", 5))}
    calls = []

    def load(name, *, split, data_dir, download, batch_size, as_supervised):
        calls.append((name, split, data_dir, download, batch_size, as_supervised))
        return splits[split]

    monkeypatch.setattr(tfds, "load", load)
    monkeypatch.setattr(tfds, "as_numpy", lambda x: x)
    ds = load_dataset("mnist", data_dir=str(isolated / "tf"), download=False)
    assert calls == [("mnist", s, str(isolated / "tf"), False, -1, True) for s in ("train", "test")]
    np.testing.assert_array_equal(ds.train_images, splits["train"][0])
    np.testing.assert_array_equal(ds.test_labels, splits["test"][1])
    assert ds.train_labels.dtype == np.int32 and "tfrecord" in ds.source


def test_tfds_images_decode_in_threads_as_in_one(isolated):
    with _mock(40):
        ds = load_dataset("imagenet2012", download=False)
        idx = np.array([3, 0, 39, 7, 7, 12, 25, 1, 30])
        one = TfdsImages(ds.train_images.source, 224, 224, workers=1)[idx]
        many = TfdsImages(ds.train_images.source, 224, 224, workers=3)[idx]
    np.testing.assert_array_equal(one, many)
    assert ds.train_images.workers >= 1
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        TfdsImages(ds.train_images.source, workers=0)
