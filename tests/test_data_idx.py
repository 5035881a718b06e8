"""idx reader: the real Fashion-MNIST files, and malformed files written to tmp_path."""

import gzip
import os
import pathlib
import time

import numpy as np
import pytest

from supsup_jax.data import DataNotFoundError, IdxFormatError, load_idx_dataset, read_idx

FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i4"): 0x0C}


def write_idx(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
    """Writes ``array`` in idx format (independent of the reader), gzipped if path ends in .gz."""
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, _CODES[dtype], array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def write_idx_dataset(directory: pathlib.Path, n_train: int, n_test: int, seed: int = 0) -> dict:
    """Writes the four standard files of a tiny 28x28 dataset; returns the arrays written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(directory / name, array)
    return arrays


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist absent")
def test_real_fashion_mnist():
    start = time.perf_counter()
    ds = load_idx_dataset(FASHION_DIR, "fashion_mnist")
    elapsed = time.perf_counter() - start
    print(f"Fashion-MNIST (70,000 images + labels, gzipped) loaded in {elapsed:.3f} s")
    assert ds.name == "fashion_mnist" and ds.num_classes == 10
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 28, 28, 1) and ds.test_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(ds.train_labels), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.test_labels), np.full(10, 1000))
    # Same bytes as a reference decode with plain Python slicing of the decompressed file.
    raw = gzip.decompress((FASHION_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    first = np.array(list(raw[16 : 16 + 784]), dtype=np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(ds.test_images[0, :, :, 0], first)
    assert ds.train_images.max() > 200  # real images, not zeros


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, ">i4"])
def test_read_idx_round_trip(tmp_path, suffix, dtype):
    offset = 0 if dtype == np.uint8 else 5  # negative values for the signed types
    array = (np.arange(2 * 3 * 4).reshape(2, 3, 4) - offset).astype(dtype)
    out = read_idx(write_idx(tmp_path / f"a{suffix}", array))
    assert out.dtype == np.dtype(dtype).newbyteorder("=") and out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_truncated_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (60000, 28, 28))
    path.write_bytes(header + bytes(1000))
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg
    assert "60000x28x28 = 47040000 bytes, file has 1000" in msg


def test_truncated_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.zeros((10, 5), np.uint8))
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(IdxFormatError, match="corrupt gzip") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_trailing_bytes(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((4, 5), np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(
        IdxFormatError, match="trailing bytes: header says 4x5 = 20 bytes, file has 21"
    ):
        read_idx(path)


@pytest.mark.parametrize(
    "magic", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00", b"PK\x03\x04"]
)
def test_bad_magic(tmp_path, magic):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(magic + (3).to_bytes(4, "big") + bytes(3))
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and f"bad magic number 0x{magic.hex()}" in msg


def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as err:
        load_idx_dataset(missing, "fashion_mnist")
    assert str(missing) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_missing_file(tmp_path):
    write_idx_dataset(tmp_path, 3, 2)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataNotFoundError) as err:
        load_idx_dataset(tmp_path, "mnist")
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in str(err.value)


def test_small_dataset_layout(tmp_path):
    arrays = write_idx_dataset(tmp_path, 5, 3)
    ds = load_idx_dataset(tmp_path, "mnist")
    np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert ds.test_images.shape == (3, 28, 28, 1) and ds.num_classes == 10


def test_count_mismatch(tmp_path):
    write_idx_dataset(tmp_path, 5, 3)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(IdxFormatError, match="5 images but .* 4 labels") as err:
        load_idx_dataset(tmp_path, "mnist")
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in str(err.value)


def test_label_beyond_the_classes(tmp_path):
    write_idx_dataset(tmp_path, 5, 3)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 200, 3, 4], np.uint8))
    with pytest.raises(IdxFormatError, match="label 200 at index 2; fashion_mnist has 10") as err:
        load_idx_dataset(tmp_path, "fashion_mnist")
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in str(err.value)
