"""Where the raw datasets come from: local files first, then tensorflow-datasets.

``load_dataset`` resolves a dataset name in a fixed order and never falls back to random data:

1. an explicit directory (the ``data_dir`` argument, else the ``SUPSUP_DATA_DIR`` environment
   variable) holding idx files (MNIST family) or the CIFAR "python version" pickles;
2. known system locations (``SYSTEM_LOCATIONS``, e.g. the Debian ``dataset-fashion-mnist`` package);
3. tensorflow-datasets: an already prepared dataset read with ``tfds.data_source`` (no TensorFlow
   needed; the explicit directory, if any, is tried as a tfds ``data_dir`` before the tfds
   default), and only then, if ``download=True`` and TensorFlow is importable,
   ``download_and_prepare`` under a socket timeout.

If every step fails, ``DataNotFoundError`` lists each place tried, why it failed, and how to get
the data.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import pickle
import socket
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from supsup_jax.data import idx, tfds_source
from supsup_jax.data.dataset import DATASET_NAMES, NUM_CLASSES, DataNotFoundError, Dataset

# Directories that system packages install datasets into (step 2). Module-level so that tests can
# monkeypatch it away.
SYSTEM_LOCATIONS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
}

DATA_DIR_ENV = "SUPSUP_DATA_DIR"

_TFDS_SPLITS = {
    "mnist": ("train", "test"),
    "fashion_mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    # ImageNet has no public test labels; the validation set is the test set, as in the paper.
    "imagenet2012": ("train", "validation"),
}

_CIFAR_LAYOUT = {
    # name: (folder, train files, test files, label key)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels"),
}

_DOWNLOAD_SOCKET_TIMEOUT_S = 30.0


def _how_to_get(name: str) -> list[str]:
    hints = []
    if name == "fashion_mnist":
        hints.append(
            "Debian/Ubuntu: `apt install dataset-fashion-mnist` (installs the idx files into "
            "/usr/share/datasets/fashion-mnist)"
        )
    layout = {
        "mnist": "the four idx files (train-images-idx3-ubyte[.gz], ...) in DIR/ or DIR/mnist/",
        "fashion_mnist": "the four idx files in DIR/ or DIR/fashion_mnist/",
        "cifar10": "CIFAR-10 python version: DIR/cifar-10-batches-py/{data_batch_1..5,test_batch}",
        "cifar100": "CIFAR-100 python version: DIR/cifar-100-python/{train,test}",
        "imagenet2012": "a tfds-prepared imagenet2012 (array_record format) under DIR",
    }[name]
    hints.append(f"a directory passed as data_dir= or via ${DATA_DIR_ENV}, holding {layout}")
    tfds_hint = (
        "tensorflow-datasets: `pip install -e .[tfds]` (adds TensorFlow) and call "
        "load_dataset(..., download=True) to download and prepare it in array_record format"
    )
    if name == "imagenet2012":
        tfds_hint += "; ImageNet needs the manual download described in the tfds catalog"
    hints.append(tfds_hint)
    return hints


def _not_found(name: str, tried: Sequence[str]) -> DataNotFoundError:
    lines = [f"Could not load dataset {name!r}. Tried, in order:"]
    lines += [f"  - {t}" for t in tried]
    lines.append("How to get the data:")
    lines += [f"  - {h}" for h in _how_to_get(name)]
    return DataNotFoundError("\n".join(lines))


# ----------------------------------------------------------------------------------------------
# Step 1 / 2: local files.


def _load_cifar_batches(paths: Sequence[pathlib.Path], label_key: str) -> tuple[np.ndarray, ...]:
    images, labels = [], []
    for path in paths:
        # The official CIFAR files are pickles; only load them from directories you trust.
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            batch_labels = np.asarray(batch[label_key.encode()], dtype=np.int32)
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a CIFAR python-version batch: {e!r}") from e
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
            raise ValueError(
                f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape} and "
                f"{len(batch_labels)} labels"
            )
        # Rows are stored channel-major (3 planes of 32x32); we keep NHWC everywhere.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def load_cifar_dataset(directory: str | os.PathLike, name: str) -> Dataset:
    """Loads the CIFAR "python version" pickles from one directory.

    Args:
      directory: the extracted folder, ``cifar-10-batches-py`` (``data_batch_1..5``,
        ``test_batch``) or ``cifar-100-python`` (``train``, ``test``; fine labels are used).
      name: ``"cifar10"`` or ``"cifar100"``.

    Returns:
      A ``Dataset`` with images uint8 ``(N, 32, 32, 3)`` and labels int32 ``(N,)``.

    Raises:
      DataNotFoundError: the directory or a batch file is missing.
      ValueError: a batch file is not a CIFAR batch.
    """
    _, train_files, test_files, label_key = _CIFAR_LAYOUT[name]
    directory = pathlib.Path(directory).expanduser()
    if not directory.is_dir():
        raise DataNotFoundError(f"{directory}: no such directory")
    for file in train_files + test_files:
        if not (directory / file).is_file():
            raise DataNotFoundError(f"{directory / file}: no such file")
    train_images, train_labels = _load_cifar_batches(
        [directory / f for f in train_files], label_key
    )
    test_images, test_labels = _load_cifar_batches([directory / f for f in test_files], label_key)
    return Dataset(name, train_images, train_labels, test_images, test_labels, NUM_CLASSES[name])


def _try_directory(
    name: str, directory: pathlib.Path, origin: str, tried: list[str]
) -> Dataset | None:

    if name in ("mnist", "fashion_mnist"):
        candidates = [directory, directory / name, directory / name.replace("_", "-")]
        loader: Callable[[pathlib.Path, str], Dataset] = idx.load_idx_dataset
    elif name in _CIFAR_LAYOUT:
        folder = _CIFAR_LAYOUT[name][0]
        candidates = [directory / folder, directory / name / folder, directory]
        loader = load_cifar_dataset
    else:
        tried.append(
            f"{directory} ({origin}): no directory format for {name}; used as tfds data_dir"
        )
        return None
    kind = "idx" if loader is idx.load_idx_dataset else "CIFAR pickle"
    for candidate in dict.fromkeys(candidates):  # dedupe, keep order
        try:
            return loader(candidate, name)._replace(source=f"{kind} files in {candidate}")
        except DataNotFoundError as e:
            # Malformed files (IdxFormatError, ValueError) propagate: corrupt data is not missing.
            tried.append(f"{candidate} ({origin}): {e}")
    return None


# ----------------------------------------------------------------------------------------------
# Step 3: tensorflow-datasets.


def _tfds_default_data_dir() -> str:
    # Resolved here rather than via tfds.core.constants, which freezes it at import time.
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _one_line(error: Exception) -> str:
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return f"{type(error).__name__}: {text[:300]}"


def _tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


# What tfds.data_source raises for data prepared the default way (tfrecord files).
TFRECORD_ERROR = "Random access data source for file format"


def _try_tfrecord(tfds: Any, name: str, data_dir: str, tried: list[str]) -> Dataset | None:
    """Data prepared as tfrecord (``tfds.load``'s default): read whole through
    ``tfds.load(..., batch_size=-1)`` when TensorFlow is present (not ImageNet, which would not
    fit in memory); otherwise record the conversion command."""
    versions = sorted(p for p in (pathlib.Path(data_dir) / name).glob("*/*") if p.is_dir()) or \
        sorted(p for p in (pathlib.Path(data_dir) / name).glob("*") if p.is_dir())
    version = versions[-1] if versions else pathlib.Path(data_dir) / name / "VERSION"
    out = pathlib.Path(f"{os.fspath(data_dir).rstrip(os.sep)}_array_record")
    convert = (f"tfds convert_format --dataset_version_dir={version} "
               f"--out_file_format=array_record "
               f"--out_dir={out / version.relative_to(data_dir)}, then data_dir={out}")
    where = f"tfds.load({name!r}, data_dir={data_dir!r}) (tfrecord files)"
    if name == "imagenet2012" or not _tensorflow_available():
        why = ("ImageNet is read lazily, which needs random access" if name == "imagenet2012"
               else "reading them needs TensorFlow (pip install -e .[tfds])")
        tried.append(f"{where}: prepared as tfrecord, and {why}; convert them once: {convert}")
        return None
    arrays = {}
    for split in _TFDS_SPLITS[name]:
        images, labels = tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir,
                                                 download=False, batch_size=-1,
                                                 as_supervised=True))
        arrays[split] = (np.asarray(images, np.uint8), np.asarray(labels, np.int32))
    (train_x, train_y), (test_x, test_y) = (arrays[s] for s in _TFDS_SPLITS[name])
    return Dataset(name, train_x, train_y, test_x, test_y, NUM_CLASSES[name], source=where)


def _try_tfds(name: str, data_dir: str, tried: list[str]) -> Dataset | None:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        tried.append(f"tensorflow-datasets: not importable ({e})")
        return None
    train_split, test_split = _TFDS_SPLITS[name]
    where = f"tfds.data_source({name!r}, data_dir={data_dir!r})"
    try:
        sources = {
            split: tfds.data_source(name, split=split, data_dir=data_dir, download=False)
            for split in (train_split, test_split)
        }
        if name == "imagenet2012":
            # Training crops are drawn on device from the whole short side (TfdsImages docs);
            # evaluation is torchvision's Resize(256) + CenterCrop(224).
            images = {train_split: tfds_source.TfdsImages(sources[train_split], 224, 224),
                      test_split: tfds_source.TfdsImages(sources[test_split], 224, 256)}
            labels = {s: tfds_source.read_labels(tfds, name, s, data_dir, src)
                      for s, src in sources.items()}
        else:
            columns = {s: tfds_source.read_columns(src, ["image", "label"])
                       for s, src in sources.items()}
            images = {s: c["image"].astype(np.uint8, copy=False) for s, c in columns.items()}
            labels = {s: c["label"] for s, c in columns.items()}
    # tfds signals "not prepared" with many exception types (NotImplementedError,
    # DatasetNotFoundError, AssertionError, FileNotFoundError, ...); each is recorded as a reason.
    except Exception as e:
        if not (pathlib.Path(data_dir) / name).exists():
            # tfds then reports a confusing file-format error; say what is actually missing.
            tried.append(f"{where}: not prepared there ({pathlib.Path(data_dir) / name} missing)")
        elif TFRECORD_ERROR in str(e):
            return _try_tfrecord(tfds, name, data_dir, tried)
        else:
            tried.append(f"{where}: {_one_line(e)}")
        return None
    return Dataset(
        name=name,
        train_images=images[train_split],
        train_labels=labels[train_split].astype(np.int32),
        test_images=images[test_split],
        test_labels=labels[test_split].astype(np.int32),
        num_classes=NUM_CLASSES[name],
        source=where,
    )


def _tfds_download(name: str, data_dir: str, tried: list[str]) -> bool:
    where = f"tfds download_and_prepare({name!r}, data_dir={data_dir!r})"
    if not _tensorflow_available():
        tried.append(f"{where}: tensorflow not installed (pip install -e .[tfds])")
        return False
    import tensorflow_datasets as tfds

    previous = socket.getdefaulttimeout()
    # A stalled connection would otherwise block forever; fail after 30 s of silence instead.
    socket.setdefaulttimeout(_DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        # array_record is the format tfds.data_source can read without TensorFlow.
        builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # recorded as the reason, see _try_tfds
        tried.append(f"{where}: {_one_line(e)}")
        return False
    finally:
        socket.setdefaulttimeout(previous)
    return True


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True
) -> Dataset:
    """Loads a dataset by name from the first source that has it.

    Args:
      name: one of ``DATASET_NAMES``: ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``,
        ``imagenet2012``.
      data_dir: directory to look in first; defaults to ``$SUPSUP_DATA_DIR``. It is also tried as a
        tfds ``data_dir`` (and is where a tfds download goes).
      download: allow tensorflow-datasets to download and prepare the dataset when nothing local
        is found. Needs TensorFlow (``pip install -e .[tfds]``); without it no download is tried.

    Returns:
      A ``Dataset``: images uint8 NHWC (28x28x1 for the MNIST family, 32x32x3 for CIFAR; lazy
      ``TfdsImages`` of 224x224x3 for ImageNet), labels int32 (CIFAR-100: the 100 fine labels).
      For ImageNet the test split is the validation set.

    Raises:
      ValueError: unknown name, or a local file that is present but malformed.
      DataNotFoundError: no source has the dataset; the message lists every place tried.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASET_NAMES}")
    tried: list[str] = []
    explicit = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    origin = "data_dir argument" if data_dir is not None else f"${DATA_DIR_ENV}"
    if explicit is not None:
        # An explicit directory is the user's choice: never fall back to other data silently.
        if not os.fspath(explicit).strip():
            raise DataNotFoundError(f"{origin} is set but empty; unset it or name a directory")
        explicit = os.path.expanduser(os.fspath(explicit))
        if not os.path.isdir(explicit):
            raise DataNotFoundError(f"{origin} names {explicit!r}, which is not a directory")
        dataset = _try_directory(name, pathlib.Path(explicit), origin, tried)
        if dataset is not None:
            return dataset
        dataset = _try_tfds(name, explicit, tried)
        if dataset is not None:
            return dataset
        if download and _tfds_download(name, explicit, tried):
            dataset = _try_tfds(name, explicit, tried)
            if dataset is not None:
                return dataset
        if not download:
            tried.append("tfds download: not attempted (download=False)")
        tried.append(f"no other location: {origin} was given, so the system locations and the "
                     "tfds default were not tried")
        raise _not_found(name, tried)
    for location in SYSTEM_LOCATIONS.get(name, ()):
        dataset = _try_directory(name, pathlib.Path(location), "system location", tried)
        if dataset is not None:
            return dataset
    tfds_dir = _tfds_default_data_dir()
    dataset = _try_tfds(name, tfds_dir, tried)
    if dataset is not None:
        return dataset
    if download:
        if _tfds_download(name, tfds_dir, tried):
            dataset = _try_tfds(name, tfds_dir, tried)
            if dataset is not None:
                return dataset
    else:
        tried.append("tfds download: not attempted (download=False)")
    raise _not_found(name, tried)
