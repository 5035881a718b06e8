"""What a loaded dataset is: the :class:`Dataset` tuple, the known datasets' names, class counts
and normalisation statistics, and the error for data that cannot be found."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["DATASET_NAMES", "DATASET_STATS", "NUM_CLASSES", "DataNotFoundError", "Dataset"]

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


class Dataset(NamedTuple):
    """A classification dataset held in host memory.

    Attributes:
      name: dataset name, a key of ``DATASET_STATS`` for the known datasets.
      train_images: uint8 ``(N, H, W, C)`` (NHWC), or a lazy ``TfdsImages`` for ImageNet.
      train_labels: int32 ``(N,)``.
      test_images: uint8 ``(M, H, W, C)``, or a lazy ``TfdsImages``.
      test_labels: int32 ``(M,)``.
      num_classes: number of classes; labels lie in ``[0, num_classes)``.
      source: where the data was read, e.g. ``"idx files in /usr/share/datasets/fashion-mnist"``
        (:func:`~supsup_jax.data.load_dataset` sets it; results.json records it).
    """

    name: str
    train_images: Any
    train_labels: np.ndarray
    test_images: Any
    test_labels: np.ndarray
    num_classes: int
    source: str = ""


class DataNotFoundError(FileNotFoundError):
    """A dataset (or one of its files) could not be found; the message says where we looked."""
