"""The one host loop of every trainer (SupSup's, the baselines', HopSupSup's): optimiser steps in
chunks, each chunk one jitted ``lax.scan`` or one jitted call per step.

A trainer gives a pure ``step(args, carry, images, labels, key) -> (carry, metrics)``: ``args``
is read but never changed (the frozen weights, a baseline's fixed variables), ``carry`` is what
training changes (scores, BN statistics, optimiser state; donated, so each chunk updates it in
place). Step ``s`` uses ``fold_in(key, s)``. The host only slices batch indices between chunks,
drawn by a :class:`~supsup_jax.data.BatchIterator` (no host syncs inside a chunk).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax.data.iterator import BatchIterator
from supsup_jax.errors import TrainingDivergedError

__all__ = ["STEP_LOOPS", "StepLoop", "check_finite", "default_step_loop", "healthy_fn"]

STEP_LOOPS = ("auto", "scan", "python")
Step = Callable[[Any, Any, jax.Array, jax.Array, jax.Array], tuple[Any, dict]]


def default_step_loop(params: Any, step_loop: str = "auto") -> str:
    """``"python"`` for convolutional networks on CPU, ``"scan"`` otherwise (``"auto"``).

    XLA:CPU runs convolution gradients inside a while loop several times slower than at top
    level, while scanning an MLP saves the per-step dispatch (benchmarks/README.md)."""
    if step_loop not in STEP_LOOPS:
        raise ValueError(f"step_loop must be one of {STEP_LOOPS}, got {step_loop!r}")
    if step_loop != "auto":
        return step_loop
    conv = any(np.ndim(w) > 2 for w in jax.tree.leaves(params))
    return "python" if conv and jax.default_backend() == "cpu" else "scan"


class StepLoop:
    """Runs ``step`` over batches, ``chunk_size`` steps per jitted call (or per host loop)."""

    def __init__(self, step: Step, *, chunk_size: int = 100, step_loop: str = "scan"):
        if step_loop not in ("scan", "python"):
            raise ValueError(f"step_loop must be 'scan' or 'python', got {step_loop!r}")
        _check_int("chunk_size (steps per jitted call)", chunk_size, 1)
        self.step = step
        self.chunk_size = chunk_size
        self.step_loop = step_loop
        self._chunk = jax.jit(self._chunk_impl, donate_argnums=(1,))
        self._indexed = jax.jit(self._indexed_impl, donate_argnums=(1,))
        self._gather = jax.jit(lambda images, labels, idx: (images[idx], labels[idx]))

    def _chunk_impl(self, args, carry, images, labels, key, step0):
        def body(carry, inputs):
            x, y, i = inputs
            return self.step(args, carry, x, y, jax.random.fold_in(key, step0 + i))

        steps = jnp.arange(images.shape[0])
        carry, metrics = jax.lax.scan(body, carry, (images, labels, steps))
        return carry, jax.tree.map(jnp.mean, metrics)

    def _indexed_impl(self, args, carry, images, labels, key, step0, i):
        return self.step(args, carry, images[i], labels[i], jax.random.fold_in(key, step0 + i))

    def run_chunk(self, args, carry, images, labels, key, step0: int):
        """Steps ``step0 .. step0 + c - 1`` on batches ``images [c, B, ...]``, ``labels [c, B]``;
        returns ``(carry, metrics)`` with the chunk's mean metrics (device scalars)."""
        if self.step_loop == "scan":
            return self._chunk(args, carry, images, labels, key, step0)
        metrics = []
        for i in range(images.shape[0]):
            carry, m = self._indexed(args, carry, images, labels, key, step0, i)
            metrics.append(m)
        return carry, jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *metrics)

    def compiled_chunks(self) -> int:
        """How many programs the chunk step has compiled (one per distinct chunk shape)."""
        return (self._chunk if self.step_loop == "scan" else self._indexed)._cache_size()

    def run(self, args, carry, images, labels, key: jax.Array, num_steps: int,
            batch_size: int, *, start_step: int = 0,
            on_chunk: Callable[[int, dict], None] | None = None):
        """``num_steps`` steps from ``start_step`` on batches of ``batch_size`` drawn from
        ``images`` (uint8 ``(N, ...)``, in memory or a lazy source with
        ``__getitem__(indices)``) and ``labels`` (int ``(N,)``), reshuffled per epoch from
        ``key``. ``on_chunk(steps_done, metrics)`` is called after each chunk. Returns the
        carry."""
        _check_int("num_steps", num_steps, 0)
        _check_int("batch_size", batch_size, 1, len(labels))
        iterator = BatchIterator(len(labels), batch_size, key)
        # The chunks donate the carry: train a copy, so the caller's state stays usable.
        carry = jax.tree.map(jnp.copy, carry)
        pending = None  # the last chunk's health flag, read after the next chunk is queued
        for step, count, x, y in self._batches(images, labels, iterator, batch_size, start_step,
                                               start_step + num_steps):
            carry, metrics = self.run_chunk(args, carry, x, y, key, step)
            healthy = healthy_fn(carry, metrics)
            if pending is not None:
                _raise_unless(*pending)
            pending = (healthy, step, step + count)
            if on_chunk is not None:
                on_chunk(step + count, metrics)
        if pending is not None:
            _raise_unless(*pending)
        return carry

    def _batches(self, images, labels, iterator, batch_size: int, start: int, end: int):
        """``(step, count, images [count, B, ...], labels [count, B])`` per chunk. In-memory
        data is gathered on device; a lazy source's next chunk is read (and decoded) in a
        background thread while the device trains on this one, the same batches either way."""
        chunks = [(s, min(self.chunk_size, end - s)) for s in range(start, end, self.chunk_size)]
        if isinstance(images, np.ndarray | jax.Array):
            images_dev, labels_dev = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
            for s, c in chunks:
                yield s, c, *self._gather(images_dev, labels_dev,
                                          jnp.asarray(iterator.index_chunk(s, c)))
            return

        def fetch(s: int, c: int):
            flat = iterator.index_chunk(s, c).reshape(-1)
            return (np.asarray(images[flat]).reshape(c, batch_size, *images.shape[1:]),
                    np.asarray(labels)[flat].reshape(c, batch_size).astype(np.int32))

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(fetch, *chunks[0]) if chunks else None
            for k, (s, c) in enumerate(chunks):
                x, y = ahead.result()
                if k + 1 < len(chunks):
                    ahead = pool.submit(fetch, *chunks[k + 1])
                yield s, c, x, y


def _check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo or (
            hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}] (the examples)"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")


@jax.jit
def healthy_fn(carry, metrics) -> jax.Array:
    """bool: every float leaf of the carry (scores, statistics, optimiser state) and the loss
    in ``metrics`` are finite."""
    leaves = [x for x in jax.tree.leaves((carry, metrics.get("loss", 0.0)))
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def check_finite(carry, metrics, first: int, stop: int) -> None:
    """Raise :class:`TrainingDivergedError` for steps ``first..stop-1`` unless
    :func:`healthy_fn` holds (one host sync)."""
    _raise_unless(healthy_fn(carry, metrics), first, stop)


def _raise_unless(healthy, first: int, stop: int) -> None:
    # One host sync per chunk, one chunk behind, so the device queue never drains.
    if not bool(healthy):
        raise TrainingDivergedError(
            f"training diverged in steps {first}..{stop - 1}: the loss or the trained "
            "parameters are NaN or infinite (is the learning rate finite and not too large?)")
