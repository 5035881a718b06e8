"""Reading tensorflow-datasets data sources (``tfds.data_source``, no TensorFlow needed):
whole columns into numpy arrays, or ImageNet's images lazily (:class:`TfdsImages`)."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["READ_CHUNK", "TfdsImages", "read_columns", "read_labels", "resize_center_crop"]

# Examples per batched read: bounds the memory of the intermediate list of example dicts.
READ_CHUNK = 4096


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


def read_columns(source: Any, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Reads every example of a tfds data source into one stacked array per feature key."""
    n = len(source)
    if n == 0:
        raise ValueError(f"{source!r} is empty")
    get_many = _get_many(source)
    out: dict[str, np.ndarray] = {}
    # Chunked batched reads bound the memory of the intermediate list of example dicts.
    for start in range(0, n, READ_CHUNK):
        stop = min(n, start + READ_CHUNK)
        examples = get_many(list(range(start, stop)))
        for key in keys:
            column = np.stack([np.asarray(ex[key]) for ex in examples])
            if key not in out:
                out[key] = np.empty((n,) + column.shape[1:], column.dtype)
            out[key][start:stop] = column
    return out


def resize_center_crop(image: np.ndarray, size: int, resize_to: int) -> np.ndarray:
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
    ``Resize(256)`` + ``CenterCrop(224)`` (the official SplitImageNet evaluation transform).

    Training (``load_dataset("imagenet2012")``'s train split) uses ``size=resize_to=224``: the
    shorter side resized to 224 and the centre square kept, i.e. the whole short side, on which
    ``random_resized_crop_flip`` draws torchvision's RandomResizedCrop boxes on device (fixed
    shapes, one key per step, so resumed runs see the same crops). Two differences from
    torchvision, which crops the original image: boxes cannot reach the ends of the long side
    (for a 4:3 image, one eighth at each end), and small boxes are upsampled from the 224-pixel
    view rather than from the original resolution.

    A batch is read and decoded by ``workers`` threads, each on a contiguous part of it (JPEG
    decoding and resizing release the GIL); the training loop also reads the next chunk while
    the device trains (:class:`supsup_jax.loop.StepLoop`). Throughput: benchmarks/README.md.
    """

    def __init__(self, source: Any, size: int = 224, resize_to: int = 256,
                 workers: int | None = None):
        """Wraps ``source``.

        Args:
          source: a tfds data source (``__len__``, ``__getitem__``) whose examples have an
            ``image`` uint8 ``(H, W, 3)``.
          size: side of the square center crop.
          resize_to: the shorter side is resized to this before cropping; must be >= size.
          workers: decoding threads (default: the CPU count, at most 16).
        """
        if resize_to < size:
            raise ValueError(f"resize_to={resize_to} must be >= size={size}")
        workers = min(os.cpu_count() or 1, 16) if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        self.source = source
        self.size = size
        self.resize_to = resize_to
        self.workers = workers
        self._getter: Callable[[list[int]], list[Any]] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.size, self.size, 3)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

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
        out = np.empty((len(keys), self.size, self.size, 3), np.uint8)
        parts = np.array_split(np.arange(len(keys)), min(self.workers, max(len(keys), 1)))

        def decode(rows: np.ndarray) -> None:
            examples = self._getter([int(k) % n for k in keys[rows]]) if rows.size else []
            for i, ex in zip(rows, examples, strict=True):
                out[i] = resize_center_crop(np.asarray(ex["image"]), self.size, self.resize_to)

        if len(parts) == 1:
            decode(parts[0])
        else:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.workers)
            for f in [self._pool.submit(decode, rows) for rows in parts]:
                f.result()
        return out

    def __repr__(self) -> str:
        return (f"TfdsImages({self.source!r}, size={self.size}, resize_to={self.resize_to}, "
                f"workers={self.workers})")


def read_labels(tfds: Any, name: str, split: str, data_dir: str, decoded: Any) -> np.ndarray:
    """Reads the labels of a split without decoding the images when tfds allows it."""
    try:
        raw = tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        return read_columns(raw, ["label"])["label"]
    except Exception:
        # Skipping the image decode only saves time (1.28M JPEGs for ImageNet train); if it fails
        # (tfds.testing.mock_data can only fake undecoded images with TensorFlow installed), read
        # the labels through the decoding source instead.
        return read_columns(decoded, ["label"])["label"]
