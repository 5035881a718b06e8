"""Resumable, random-access minibatch indices with a per-epoch shuffle."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _as_key(key: Any) -> jax.Array:
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    # A legacy raw uint32 key (jax.random.PRNGKey).
    return jax.random.wrap_key_data(key)


class BatchIterator:
    """Indices of minibatches: epoch ``e`` visits the examples in a permutation drawn from (key, e).

    Step ``s`` (global, counting from 0 across epochs) is batch ``s % steps_per_epoch`` of epoch
    ``s // steps_per_epoch``. Any step can be computed directly, so resuming at step n yields
    exactly the batches an uninterrupted run yields from step n on, and the batches do not depend
    on how they are consumed. The epoch order is
    ``np.random.default_rng(jax.random.key_data(jax.random.fold_in(key, e))).permutation(N)``; the
    most recent one is cached. No Python work is done per example.
    """

    def __init__(self, num_examples: int, batch_size: int, key: Any, drop_remainder: bool = True):
        """Creates the iterator.

        Args:
          num_examples: N, the number of examples indexed.
          batch_size: B, examples per batch.
          key: a JAX PRNG key (typed or raw) or an int seed.
          drop_remainder: drop the last ``N % B`` examples of each epoch's order so that every
            batch has B examples; if False, each epoch ends with a smaller batch and every example
            appears exactly once per epoch.

        Raises:
          ValueError: N or B is not positive, or B > N with ``drop_remainder`` (no full batch).
        """
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_remainder and batch_size > num_examples:
            raise ValueError(
                f"batch_size={batch_size} > num_examples={num_examples} with drop_remainder=True "
                "leaves no full batch"
            )
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.drop_remainder = bool(drop_remainder)
        self.key = _as_key(key)
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch: ``N // B`` with ``drop_remainder``, else ``ceil(N / B)``."""
        if self.drop_remainder:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """int32 ``(N,)``: the order in which epoch ``epoch`` visits the examples."""
        if self._cached is None or self._cached[0] != epoch:
            seed = np.asarray(jax.random.key_data(jax.random.fold_in(self.key, epoch)))
            order = np.random.default_rng(seed).permutation(self.num_examples).astype(np.int32)
            self._cached = (epoch, order)
        return self._cached[1]

    def indices(self, step: int) -> np.ndarray:
        """int32 ``(B,)`` example indices of global step ``step`` (shorter for the last batch of
        an epoch when ``drop_remainder=False``)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, s = divmod(int(step), self.steps_per_epoch)
        return self.epoch_order(epoch)[s * self.batch_size : (s + 1) * self.batch_size]

    def index_chunk(self, start: int, count: int) -> np.ndarray:
        """int32 ``(count, B)``: the indices of steps ``start .. start + count - 1``, stacked.

        Equal to ``np.stack([indices(s) for s in range(start, start + count)])``, computed with
        one gather per epoch spanned. Needs ``drop_remainder=True`` (equal batch sizes).
        """
        if not self.drop_remainder:
            raise ValueError("index_chunk needs drop_remainder=True (all batches of equal size)")
        if start < 0 or count < 0:
            raise ValueError(f"start and count must be >= 0, got start={start}, count={count}")
        spe, b = self.steps_per_epoch, self.batch_size
        steps = np.arange(start, start + count, dtype=np.int64)
        epochs, within = np.divmod(steps, spe)
        out = np.empty((count, b), np.int32)
        for epoch in np.unique(epochs):
            rows = epochs == epoch
            table = self.epoch_order(int(epoch))[: spe * b].reshape(spe, b)
            out[rows] = table[within[rows]]
        return out

    def batches(
        self, *arrays: Any, start_step: int = 0, num_steps: int | None = None
    ) -> Iterator[tuple[Any, ...]]:
        """Yields ``tuple(a[indices(step)] for a in arrays)`` for steps from ``start_step`` on.

        Args:
          *arrays: arrays (or lazy image objects) of leading length N, indexed together.
          start_step: first global step.
          num_steps: number of batches; None iterates forever.

        Yields:
          One tuple per step, with one batch per array.
        """
        for a in arrays:
            if len(a) != self.num_examples:
                raise ValueError(
                    f"array of length {len(a)} given to an iterator over {self.num_examples}"
                )
        step = int(start_step)
        stop = None if num_steps is None else step + int(num_steps)
        while stop is None or step < stop:
            idx = self.indices(step)
            yield tuple(a[idx] for a in arrays)
            step += 1
