"""Named random streams of a run: every random choice is ``key(config, STREAM, *path)``.

Each stream is folded into ``jax.random.key(config.seed)`` with its own number, so a resumed run
draws exactly what an uninterrupted one draws, and adding a stream never shifts another. The
numbers are those of the first round's runs (their results stay reproducible).
"""

from __future__ import annotations

import enum

import jax

__all__ = ["Stream", "key"]


class Stream(enum.IntEnum):
    SCORE_INIT = 0  # (task): a task's initial scores
    TRAIN_BATCHES = 1  # (task): batch order and augmentation of a task's training
    EVALUATION = 2  # (row, task) or (task): test-batch shuffles of the evaluations
    NNS = 3  # the NNs learner's scores, reference masks and batch keys
    METHOD_SETUP = 4  # a baseline's fixed random parts (PSP's contexts)
    METHOD_INIT = 5  # a baseline's initial state
    NNS_ORDER = 6  # the order in which NNs' returning task pieces arrive (revisit)


def key(config, stream: Stream, *path: int) -> jax.Array:
    """``fold_in(... fold_in(fold_in(key(config.seed), stream), path[0]) ..., path[-1])``."""
    k = jax.random.fold_in(jax.random.key(config.seed), int(stream))
    for p in path:
        k = jax.random.fold_in(k, p)
    return k
