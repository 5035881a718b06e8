"""Task streams: a sequence of tasks built from one dataset (PermutedMNIST, RotatedMNIST, splits).

A stream's task ``t`` is a deterministic, pure function of (dataset, seed, t): it does not depend
on the batch size, on the order tasks are requested in, or on any global RNG state (the official
code reseeds numpy's global RNG in ``update_task``; SPEC 1.11 item 3).

Every stream exposes ``num_tasks``, ``dataset``, ``mean``/``std`` (for ``transforms.normalize``),
``augment`` (``"none"``, ``"cifar"`` or ``"imagenet"``: which on-device augmentation the trainer
applies) and ``task(t) -> TaskData``.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import jax
import numpy as np

from supsup_jax.data.dataset import DATASET_STATS, Dataset
from supsup_jax.data.transforms import rotate

_AUGMENT = {
    "mnist": "none",
    "fashion_mnist": "none",
    "cifar10": "cifar",
    "cifar100": "cifar",
    "imagenet2012": "imagenet",
}


class TaskData(NamedTuple):
    """The data of one task.

    Attributes:
      train_images: uint8 ``(N, H, W, C)``, or a lazy ``LazySubset`` for lazy (ImageNet) sources.
      train_labels: int32 ``(N,)`` in ``[0, num_classes)``.
      test_images: uint8 ``(M, H, W, C)`` or ``LazySubset``.
      test_labels: int32 ``(M,)``.
      num_classes: label range of this task: 10 for permuted/rotated MNIST, ``classes_per_task``
        for a relabelled split, the dataset's class count for a split with global labels.
    """

    train_images: Any
    train_labels: np.ndarray
    test_images: Any
    test_labels: np.ndarray
    num_classes: int


class LazySubset:
    """A lazy view ``images[indices]`` of lazy images (``__len__``, ``__getitem__(indices)``)."""

    def __init__(self, images: Any, indices: np.ndarray):
        """Creates the view.

        Args:
          images: lazy images (``__len__``, ``__getitem__(int array) -> (n, H, W, C)``).
          indices: int ``(n,)`` positions in ``images``.
        """
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self),) + tuple(self.images.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.images.dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        """Returns ``images[indices[index]]``: one image for an int, a batch for an int array."""
        if isinstance(index, (int, np.integer)):
            return self.images[int(self.indices[index])]
        if not isinstance(index, slice):
            index = np.asarray(index)
        return self.images[self.indices[index]]


def _take(images: Any, indices: np.ndarray) -> Any:
    if isinstance(images, np.ndarray):
        return images[indices]
    return LazySubset(images, indices)


def _check_task(t: int, num_tasks: int) -> int:
    t = operator.index(t)
    if not 0 <= t < num_tasks:
        raise IndexError(
            f"task {t} out of range for a stream of {num_tasks} tasks (0..{num_tasks - 1})"
        )
    return t


def _require_arrays(dataset: Dataset, stream: str) -> None:
    for images in (dataset.train_images, dataset.test_images):
        if not isinstance(images, np.ndarray):
            raise TypeError(f"{stream} needs in-memory image arrays, got {type(images).__name__}")


def _stats(dataset: Dataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if dataset.name in DATASET_STATS:
        return DATASET_STATS[dataset.name]
    # Unknown dataset: per-channel statistics of the training images, scaled to [0, 1].
    pixels = np.asarray(dataset.train_images).reshape(-1, dataset.train_images.shape[-1])
    mean = pixels.mean(axis=0, dtype=np.float64) / 255.0
    std = pixels.std(axis=0, dtype=np.float64) / 255.0
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def permutation(seed: int, task: int, num_pixels: int) -> np.ndarray:
    """The pixel permutation of one PermutedMNIST task.

    ``jax.random.permutation(jax.random.fold_in(jax.random.key(seed), task), num_pixels)``. Every
    task is permuted, task 0 included (as in the official code). Unlike the official code, where
    seed s task i equals seed s+1 task i-1 (SPEC 1.11 item 3), different seeds share no
    permutations.

    Args:
      seed: stream seed.
      task: task index.
      num_pixels: length of the flattened image, ``H * W * C``.

    Returns:
      int32 ``(num_pixels,)``, a permutation of ``0..num_pixels-1``.
    """
    key = jax.random.fold_in(jax.random.key(seed), task)
    return np.asarray(jax.random.permutation(key, num_pixels), dtype=np.int32)


class _Stream:
    """Shared bookkeeping: task range check, statistics and a one-task cache."""

    augment = "none"

    def __init__(self, dataset: Dataset, num_tasks: int):
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.dataset = dataset
        self.num_tasks = int(num_tasks)
        self.mean, self.std = _stats(dataset)
        # Only the most recent task is kept: 2500 permuted copies of MNIST would not fit.
        self._cache: tuple[int, TaskData] | None = None

    def __len__(self) -> int:
        return self.num_tasks

    def task(self, t: int) -> TaskData:
        """The data of task ``t`` (``0 <= t < num_tasks``); raises IndexError otherwise."""
        t = _check_task(t, self.num_tasks)
        if self._cache is None or self._cache[0] != t:
            self._cache = (t, self._make_task(t))
        return self._cache[1]

    def _make_task(self, t: int) -> TaskData:
        raise NotImplementedError


class PermutedStream(_Stream):
    """PermutedMNIST: task t applies a fixed pixel permutation to every image (SPEC 2.2).

    Pixels are permuted over the flattened ``H * W * C`` with the same permutation for train and
    test; images keep their ``(N, H, W, C)`` shape. Labels are unchanged (10 classes per task).
    """

    def __init__(self, dataset: Dataset, num_tasks: int, seed: int = 0):
        """Creates the stream.

        Args:
          dataset: a dataset with in-memory uint8 ``(N, H, W, C)`` images.
          num_tasks: number of tasks.
          seed: permutation seed; task t uses ``permutation(seed, t, H * W * C)``.
        """
        _require_arrays(dataset, "PermutedStream")
        super().__init__(dataset, num_tasks)
        self.seed = int(seed)
        self.num_pixels = int(np.prod(dataset.train_images.shape[1:]))

    def permutation(self, t: int) -> np.ndarray:
        """int32 ``(H * W * C,)``: the pixel permutation of task ``t``."""
        return permutation(self.seed, _check_task(t, self.num_tasks), self.num_pixels)

    def _make_task(self, t: int) -> TaskData:
        perm = self.permutation(t)

        def apply(images: np.ndarray) -> np.ndarray:
            # np.take is ~8x faster than fancy indexing [:, perm] on (60000, 784) uint8.
            return np.take(images.reshape(len(images), -1), perm, axis=1).reshape(images.shape)

        d = self.dataset
        return TaskData(
            apply(d.train_images),
            d.train_labels,
            apply(d.test_images),
            d.test_labels,
            d.num_classes,
        )


class RotatedStream(_Stream):
    """RotatedMNIST: task t rotates every image by ``degrees_per_task * t`` (paper: 10 * t, 0..350).

    See ``transforms.rotate`` for the convention and the choice of interpolation.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_tasks: int,
        degrees_per_task: float = 10.0,
        interpolation: str = "bilinear",
    ):
        """Creates the stream.

        Args:
          dataset: a dataset with in-memory uint8 ``(N, H, W, C)`` images.
          num_tasks: number of tasks (36 in the paper).
          degrees_per_task: angle step in degrees.
          interpolation: ``"bilinear"`` or ``"nearest"`` (the official code's).
        """
        _require_arrays(dataset, "RotatedStream")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(
                f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}"
            )
        super().__init__(dataset, num_tasks)
        self.degrees_per_task = float(degrees_per_task)
        self.interpolation = interpolation

    def degrees(self, t: int) -> float:
        """Rotation angle of task ``t`` in degrees (counter-clockwise)."""
        return self.degrees_per_task * _check_task(t, self.num_tasks)

    def _make_task(self, t: int) -> TaskData:
        deg, d = self.degrees(t), self.dataset
        return TaskData(
            rotate(d.train_images, deg, self.interpolation),
            d.train_labels,
            rotate(d.test_images, deg, self.interpolation),
            d.test_labels,
            d.num_classes,
        )


class SplitStream(_Stream):
    """Class-incremental split: the classes are partitioned into tasks of ``classes_per_task``.

    Task t holds the examples of ``classes(t)``. With ``seed=None`` the classes are taken in order
    (task t has ``t*c .. t*c+c-1``); otherwise in the order of
    ``jax.random.permutation(jax.random.key(seed), num_classes)`` (RandSplitCIFAR100,
    SplitImageNet). With ``relabel=True`` a label becomes its position in ``classes(t)``
    (``0..c-1``, as the official ``partition_dataset``); with ``relabel=False`` labels stay global.
    Lazy images (ImageNet) stay lazy: the task's images are ``LazySubset`` views.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_tasks: int,
        classes_per_task: int,
        seed: int | None = None,
        relabel: bool = True,
    ):
        """Creates the stream.

        Args:
          dataset: the dataset; its images may be lazy.
          num_tasks: number of tasks.
          classes_per_task: classes in each task.
          seed: class-order seed, None for the natural order.
          relabel: map labels to ``0..classes_per_task-1`` within each task.

        Raises:
          ValueError: ``num_tasks * classes_per_task > dataset.num_classes``.
        """
        if classes_per_task < 1:
            raise ValueError(f"classes_per_task must be >= 1, got {classes_per_task}")
        if num_tasks * classes_per_task > dataset.num_classes:
            raise ValueError(
                f"{num_tasks} tasks x {classes_per_task} classes = {num_tasks * classes_per_task} "
                f"classes, but {dataset.name} has only {dataset.num_classes}"
            )
        super().__init__(dataset, num_tasks)
        self.classes_per_task = int(classes_per_task)
        self.seed = seed
        self.relabel = bool(relabel)
        self.augment = _AUGMENT.get(dataset.name, "none")
        if seed is None:
            self.class_order = np.arange(dataset.num_classes, dtype=np.int32)
        else:
            key = jax.random.key(seed)
            self.class_order = np.asarray(
                jax.random.permutation(key, dataset.num_classes), np.int32
            )

    def classes(self, t: int) -> np.ndarray:
        """int32 ``(classes_per_task,)``: the global labels of task ``t``, in relabelling order."""
        t = _check_task(t, self.num_tasks)
        c = self.classes_per_task
        return self.class_order[t * c : (t + 1) * c]

    def _make_task(self, t: int) -> TaskData:
        classes, d = self.classes(t), self.dataset
        # Lookup table global label -> task label (-1: not in this task).
        lut = np.full(d.num_classes, -1, np.int32)
        lut[classes] = np.arange(len(classes), dtype=np.int32)

        def select(images: Any, labels: np.ndarray) -> tuple[Any, np.ndarray]:
            (idx,) = np.nonzero(lut[labels] >= 0)
            new = lut[labels[idx]] if self.relabel else labels[idx]
            return _take(images, idx), new.astype(np.int32)

        train_images, train_labels = select(d.train_images, d.train_labels)
        test_images, test_labels = select(d.test_images, d.test_labels)
        num_classes = self.classes_per_task if self.relabel else d.num_classes
        return TaskData(train_images, train_labels, test_images, test_labels, num_classes)


def split_mnist(dataset: Dataset, relabel: bool = False) -> SplitStream:
    """SplitMNIST as in HopSupSup (SPEC 2.2): 5 tasks, classes (0,1), (2,3), ..., global labels."""
    return SplitStream(dataset, num_tasks=5, classes_per_task=2, seed=None, relabel=relabel)


def split_cifar100(dataset: Dataset, seed: int) -> SplitStream:
    """RandSplitCIFAR100 (SPEC 2.2): 20 tasks x 5 classes, class split seeded, labels 0..4."""
    return SplitStream(dataset, num_tasks=20, classes_per_task=5, seed=seed, relabel=True)


def split_imagenet(dataset: Dataset, seed: int = 1) -> SplitStream:
    """SplitImageNet (SPEC 2.2): 100 tasks x 10 classes from a fixed class permutation, labels 0..9.

    The permutation is ``jax.random.permutation(jax.random.key(seed), 1000)``; it is fixed, but
    not the official code's numpy permutation.
    """
    return SplitStream(dataset, num_tasks=100, classes_per_task=10, seed=seed, relabel=True)
