"""Reader for the MNIST "idx" file format (MNIST, Fashion-MNIST, KMNIST, ...).

Format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number ``00 00 TT DD`` where ``TT`` is
the element type code and ``DD`` the number of dimensions, then ``DD`` big-endian uint32 sizes, then
the row-major payload. Files are often shipped gzipped; both forms are read.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zlib

import numpy as np

from supsup_jax.data.dataset import DataNotFoundError, Dataset

# idx type code -> big-endian numpy dtype of one element.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Class counts of the idx datasets we know; anything else gets max(label) + 1.
_IDX_NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10}

_SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class IdxFormatError(ValueError):
    """An idx file is malformed; the message names the file and what is wrong."""


def _read_bytes(path: pathlib.Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        # One C call on the whole buffer: ~0.25 s for the 47 MB Fashion-MNIST train images.
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise IdxFormatError(f"{path}: corrupt gzip stream: {e}") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one idx file, plain or gzipped (``.gz``).

    The whole payload is decoded by a single ``np.frombuffer`` (no per-example Python work).

    Args:
      path: path of the file.

    Returns:
      A writable array in native byte order whose shape is the header's dimensions, e.g.
      ``(60000, 28, 28)`` uint8 for ``train-images-idx3-ubyte``, ``(60000,)`` uint8 for labels.

    Raises:
      FileNotFoundError: the file does not exist.
      IdxFormatError: bad magic number, unknown type code, or a payload whose length does not
        match the header (truncated file or trailing bytes).
    """
    path = pathlib.Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise IdxFormatError(f"{path}: truncated: {len(buf)} bytes, shorter than the 4-byte magic")
    magic = int.from_bytes(buf[:4], "big")
    type_code, ndim = buf[2], buf[3]
    if buf[0] != 0 or buf[1] != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise IdxFormatError(
            f"{path}: bad magic number 0x{magic:08x} (expected 0x0000TTDD with type code TT in "
            f"{{{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}}} and DD >= 1 dimensions)"
        )
    header_len = 4 + 4 * ndim
    if len(buf) < header_len:
        raise IdxFormatError(
            f"{path}: truncated: header needs {header_len} bytes for {ndim} dimensions, "
            f"file has {len(buf)}"
        )
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(buf) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "trailing bytes"
        raise IdxFormatError(
            f"{path}: {what}: header says {'x'.join(map(str, dims))} = {expected} bytes, "
            f"file has {actual}"
        )
    data = np.frombuffer(buf, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    # astype copies: the result is writable and in native byte order.
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path:
    # Prefer the uncompressed file: it needs no decompression.
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataNotFoundError(f"{directory / stem}[.gz]: no such file")


def load_idx_dataset(directory: str | os.PathLike, name: str) -> Dataset:
    """Loads the four standard idx files of an MNIST-format dataset from one directory.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte``, each optionally with a ``.gz`` suffix.

    Args:
      directory: the directory holding the files.
      name: dataset name stored in the result (e.g. ``"fashion_mnist"``); it selects the
        normalisation statistics downstream.

    Returns:
      A ``Dataset`` with images uint8 ``(N, 28, 28, 1)`` (NHWC) and labels int32 ``(N,)``.

    Raises:
      DataNotFoundError: the directory or one of the files is missing (the message names it).
      IdxFormatError: a file is malformed, has the wrong rank, or images and labels disagree in
        count.
    """
    directory = pathlib.Path(directory).expanduser()
    if not directory.is_dir():
        raise DataNotFoundError(f"{directory}: no such directory")
    paths = {key: _find(directory, stem) for key, stem in _SPLIT_FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_path, label_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise IdxFormatError(
                f"{image_path}: expected uint8 images of rank 3 (N, H, W), got "
                f"{images.dtype} of shape {images.shape}"
            )
        if labels.ndim != 1:
            raise IdxFormatError(f"{label_path}: expected rank-1 labels, got shape {labels.shape}")
        if len(images) != len(labels):
            raise IdxFormatError(
                f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels"
            )
    labels_max = max(
        int(arrays["train_labels"].max(initial=0)), int(arrays["test_labels"].max(initial=0))
    )
    num_classes = _IDX_NUM_CLASSES.get(name, labels_max + 1)
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        if labels.size and labels.max() >= num_classes:
            bad = int(np.argmax(labels >= num_classes))
            raise IdxFormatError(f"{paths[f'{split}_labels']}: label {int(labels[bad])} at "
                                 f"index {bad}; {name} has {num_classes} classes")
    return Dataset(
        name=name,
        train_images=arrays["train_images"][..., None],
        train_labels=arrays["train_labels"].astype(np.int32),
        test_images=arrays["test_images"][..., None],
        test_labels=arrays["test_labels"].astype(np.int32),
        num_classes=num_classes,
    )
