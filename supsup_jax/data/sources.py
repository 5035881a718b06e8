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
from typing import Any, NamedTuple

import numpy as np

DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet2012")

NUM_CLASSES = {
    "mnist": 10,
    "fashion_mnist": 10,
    "cifar10": 10,
    "cifar100": 100,
    "imagenet2012": 1000,
}

# Per-channel (mean, std) of pixel values scaled to [0, 1]. The CIFAR pair is the one the official
# SupSup code uses for SplitCIFAR100 (SPEC 2.2) and is reused for CIFAR-10.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
    "cifar100": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

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
_READ_CHUNK = 4096


class Dataset(NamedTuple):
    """A classification dataset held in host memory.

    Attributes:
      name: dataset name, a key of ``DATASET_STATS`` for the known datasets.
      train_images: uint8 ``(N, H, W, C)`` (NHWC), or a lazy ``TfdsImages`` for ImageNet.
      train_labels: int32 ``(N,)``.
      test_images: uint8 ``(M, H, W, C)``, or a lazy ``TfdsImages``.
      test_labels: int32 ``(M,)``.
      num_classes: number of classes; labels lie in ``[0, num_classes)``.
    """

    name: str
    train_images: Any
    train_labels: np.ndarray
    test_images: Any
    test_labels: np.ndarray
    num_classes: int


class DataNotFoundError(FileNotFoundError):
    """A dataset (or one of its files) could not be found; the message says where we looked."""


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
    # Imported here: idx.py imports Dataset and DataNotFoundError from this module.
    from supsup_jax.data import idx

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
    for candidate in dict.fromkeys(candidates):  # dedupe, keep order
        try:
            return loader(candidate, name)
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


def _get_many(source: Any) -> Callable[[list[int]], list[Any]]:
    """Returns a batched getter ``keys -> examples`` for a tfds data source."""
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None and len(source) > 0:
        try:
            getitems([0])
            return getitems
        except TypeError:
            # tfds.testing.mock_data (4.9.10) installs an unbound `__getitems__` that raises
            # TypeError; real ArrayRecord sources support it and read records in one call.
            pass
    return lambda keys: [source[k] for k in keys]


def _read_columns(source: Any, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Reads every example of a tfds data source into one stacked array per feature key."""
    n = len(source)
    if n == 0:
        raise ValueError(f"{source!r} is empty")
    get_many = _get_many(source)
    out: dict[str, np.ndarray] = {}
    # Chunked batched reads bound the memory of the intermediate list of example dicts.
    for start in range(0, n, _READ_CHUNK):
        stop = min(n, start + _READ_CHUNK)
        examples = get_many(list(range(start, stop)))
        for key in keys:
            column = np.stack([np.asarray(ex[key]) for ex in examples])
            if key not in out:
                out[key] = np.empty((n,) + column.shape[1:], column.dtype)
            out[key][start:stop] = column
    return out


def _resize_center_crop(image: np.ndarray, size: int, resize_to: int) -> np.ndarray:
    """torchvision ``Resize(resize_to)`` + ``CenterCrop(size)`` on one uint8 ``(H, W, 3)`` image."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - PIL comes with matplotlib
        raise ImportError("resizing ImageNet images needs Pillow: pip install pillow") from e
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.broadcast_to(image.reshape(image.shape[:2] + (1,)), image.shape[:2] + (3,))
    h, w = image.shape[:2]
    # Same rounding as torchvision: the short side becomes resize_to, the long side is truncated.
    if w <= h:
        new_w, new_h = resize_to, int(resize_to * h / w)
    else:
        new_w, new_h = int(resize_to * w / h), resize_to
    resized = np.asarray(
        Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR)
    )
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return resized[top : top + size, left : left + size]


class TfdsImages:
    """Lazy images of a tfds data source: decoded, resized and center-cropped on access.

    ``images[indices]`` returns uint8 ``(n, size, size, 3)``: each image's shorter side is resized
    to ``resize_to`` (bilinear, PIL) and the centre ``size x size`` is cropped, as torchvision's
    ``Resize(256)`` + ``CenterCrop(224)`` (the official SplitImageNet evaluation transform). For
    training, build a larger view with ``with_size`` and apply ``random_resized_crop_flip`` on
    device.

    Decoding is per image in Python; run the fetch in a background thread to overlap it with the
    device step.
    """

    def __init__(self, source: Any, size: int = 224, resize_to: int = 256):
        """Wraps ``source``.

        Args:
          source: a tfds data source (``__len__``, ``__getitem__``) whose examples have an
            ``image`` uint8 ``(H, W, 3)``.
          size: side of the square center crop.
          resize_to: the shorter side is resized to this before cropping; must be >= size.
        """
        if resize_to < size:
            raise ValueError(f"resize_to={resize_to} must be >= size={size}")
        self.source = source
        self.size = size
        self.resize_to = resize_to
        self._getter: Callable[[list[int]], list[Any]] | None = None

    def with_size(self, size: int, resize_to: int | None = None) -> TfdsImages:
        """The same images with another crop size (and shorter-side resize, default ``size``)."""
        return TfdsImages(self.source, size, size if resize_to is None else resize_to)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: Any) -> np.ndarray:
        """Decodes images.

        Args:
          index: an int (returns ``(size, size, 3)``), a slice, or an integer array of indices
            (returns ``(n, size, size, 3)``).

        Returns:
          uint8 image(s).
        """
        if isinstance(index, (int, np.integer)):
            return self[np.asarray([index])][0]
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        keys = np.asarray(index).reshape(-1)
        n = len(self)
        if keys.size and (keys.min() < -n or keys.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        if self._getter is None:
            self._getter = _get_many(self.source)
        examples = self._getter([int(k) % n for k in keys]) if keys.size else []
        out = np.empty((len(keys), self.size, self.size, 3), np.uint8)
        for i, ex in enumerate(examples):
            out[i] = _resize_center_crop(np.asarray(ex["image"]), self.size, self.resize_to)
        return out

    def __repr__(self) -> str:
        return f"TfdsImages({self.source!r}, size={self.size}, resize_to={self.resize_to})"


def _tfds_labels(tfds: Any, name: str, split: str, data_dir: str, decoded: Any) -> np.ndarray:
    """Reads the labels of a split without decoding the images when tfds allows it."""
    try:
        raw = tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        return _read_columns(raw, ["label"])["label"]
    except Exception:
        # Skipping the image decode only saves time (1.28M JPEGs for ImageNet train); if it fails
        # (tfds.testing.mock_data can only fake undecoded images with TensorFlow installed), read
        # the labels through the decoding source instead.
        return _read_columns(decoded, ["label"])["label"]


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
            images = {s: TfdsImages(src) for s, src in sources.items()}
            labels = {s: _tfds_labels(tfds, name, s, data_dir, src) for s, src in sources.items()}
        else:
            columns = {s: _read_columns(src, ["image", "label"]) for s, src in sources.items()}
            images = {s: c["image"].astype(np.uint8, copy=False) for s, c in columns.items()}
            labels = {s: c["label"] for s, c in columns.items()}
    # tfds signals "not prepared" with many exception types (NotImplementedError,
    # DatasetNotFoundError, AssertionError, FileNotFoundError, ...); each is recorded as a reason.
    except Exception as e:
        if not (pathlib.Path(data_dir) / name).exists():
            # tfds then reports a confusing file-format error; say what is actually missing.
            tried.append(f"{where}: not prepared there ({pathlib.Path(data_dir) / name} missing)")
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
    explicit = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    origin = "data_dir argument" if data_dir is not None else f"${DATA_DIR_ENV}"
    if explicit is not None:
        explicit = os.path.expanduser(os.fspath(explicit))
        dataset = _try_directory(name, pathlib.Path(explicit), origin, tried)
        if dataset is not None:
            return dataset
    for location in SYSTEM_LOCATIONS.get(name, ()):
        dataset = _try_directory(name, pathlib.Path(location), "system location", tried)
        if dataset is not None:
            return dataset
    tfds_dirs = list(dict.fromkeys([d for d in (explicit, _tfds_default_data_dir()) if d]))
    for tfds_dir in tfds_dirs:
        dataset = _try_tfds(name, tfds_dir, tried)
        if dataset is not None:
            return dataset
    if download:
        if _tfds_download(name, tfds_dirs[0], tried):
            dataset = _try_tfds(name, tfds_dirs[0], tried)
            if dataset is not None:
                return dataset
    else:
        tried.append("tfds download: not attempted (download=False)")
    raise _not_found(name, tried)
