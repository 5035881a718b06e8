"""The one accuracy of every method: arg-max over all outputs against the labels, in padded
batches (label ``-1`` marks padding, which never counts), so that test sets of different sizes
stack on a task axis and one ``vmap`` (or ``lax.map``) evaluates many tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["accuracy", "count_correct", "stack_test_sets"]


def count_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """int32 count of ``argmax(logits) == labels`` over the examples with ``labels >= 0``."""
    return jnp.sum((jnp.argmax(logits, -1) == labels) & (labels >= 0))


def accuracy(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
             labels: jax.Array, batch_size: int) -> jax.Array:
    """float32 accuracy of ``logits_fn`` (uint8 batch ``[b, ...]`` -> logits ``[b, C]``).

    ``images`` ``(N, ...)`` and ``labels`` ``(N,)`` are padded to a multiple of ``batch_size``
    and mapped batch by batch (``lax.map``), so memory holds one batch's activations.
    """
    n = images.shape[0]
    pad = -n % batch_size
    images = jnp.pad(images, [(0, pad)] + [(0, 0)] * (images.ndim - 1))
    labels = jnp.pad(labels, (0, pad), constant_values=-1)
    images = images.reshape(-1, batch_size, *images.shape[1:])
    labels = labels.reshape(-1, batch_size)
    correct = jax.lax.map(lambda b: count_correct(logits_fn(b[0]), b[1]), (images, labels)).sum()
    return correct / jnp.maximum(jnp.sum(labels >= 0), 1)


def stack_test_sets(test_sets: Sequence[tuple[np.ndarray, np.ndarray]]):
    """``[(images (N_i, ...), labels (N_i,))]`` as uint8 ``(T, N, ...)`` and int32 ``(T, N)``,
    ``N = max N_i``, the shorter sets padded with zero images and label ``-1``."""
    n = max(len(y) for _, y in test_sets)
    shape = test_sets[0][0].shape[1:]
    images = np.zeros((len(test_sets), n, *shape), np.uint8)
    labels = np.full((len(test_sets), n), -1, np.int32)
    for t, (x, y) in enumerate(test_sets):
        images[t, :len(y)] = x
        labels[t, :len(y)] = y
    return images, labels
