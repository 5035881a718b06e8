"""BatchIterator: determinism, resumption, per-epoch coverage, and the vectorised chunk."""

import jax
import numpy as np
import pytest

from supsup_jax.data import BatchIterator


def _take(it, start, count):
    return [it.indices(s) for s in range(start, start + count)]


def test_same_key_same_batches_and_key_forms_agree():
    a = BatchIterator(100, 16, jax.random.key(3))
    b = BatchIterator(100, 16, 3)  # int seed == jax.random.key(seed)
    c = BatchIterator(100, 16, jax.random.PRNGKey(3))  # legacy raw key
    for s in range(20):
        np.testing.assert_array_equal(a.indices(s), b.indices(s))
        np.testing.assert_array_equal(a.indices(s), c.indices(s))
        assert a.indices(s).dtype == np.int32 and a.indices(s).shape == (16,)


def test_different_key_different_batches():
    a, b = BatchIterator(100, 16, 0), BatchIterator(100, 16, 1)
    assert not np.array_equal(np.stack(_take(a, 0, 6)), np.stack(_take(b, 0, 6)))


def test_epochs_reshuffle():
    it = BatchIterator(64, 8, 0)
    assert it.steps_per_epoch == 8
    assert not np.array_equal(it.epoch_order(0), it.epoch_order(1))


@pytest.mark.parametrize("n,b", [(100, 16), (37, 5), (10, 10)])
def test_every_example_once_per_epoch(n, b):
    it = BatchIterator(n, b, 0, drop_remainder=False)
    assert it.steps_per_epoch == -(-n // b)
    for epoch in range(3):
        batches = _take(it, epoch * it.steps_per_epoch, it.steps_per_epoch)
        assert all(len(x) == b for x in batches[:-1]) and len(batches[-1]) == n - b * (
            len(batches) - 1
        )
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(n))


def test_drop_remainder_batches_are_full_and_distinct():
    it = BatchIterator(37, 5, 0)
    assert it.steps_per_epoch == 7
    epoch = np.concatenate(_take(it, 7, 7))
    assert len(epoch) == 35 and len(np.unique(epoch)) == 35


def test_resume_gives_the_same_stream():
    data = np.arange(50) * 10
    labels = np.arange(50)
    full = list(BatchIterator(50, 8, 4).batches(data, labels, num_steps=20))
    # A fresh iterator (as after a restart) started at step 13.
    resumed = list(BatchIterator(50, 8, 4).batches(data, labels, start_step=13, num_steps=7))
    assert len(resumed) == 7
    for (x, y), (rx, ry) in zip(full[13:], resumed, strict=True):
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(x, y * 10)  # arrays are indexed together


def test_batches_is_endless_without_num_steps():
    gen = BatchIterator(10, 3, 0).batches(np.arange(10))
    assert len([next(gen) for _ in range(25)]) == 25


def test_index_chunk_equals_stacked_indices():
    it = BatchIterator(37, 5, 2)
    for start, count in [(0, 3), (5, 10), (20, 1), (3, 0)]:  # (5, 10) spans epochs 0-2
        chunk = it.index_chunk(start, count)
        assert chunk.shape == (count, 5) and chunk.dtype == np.int32
        if count:
            np.testing.assert_array_equal(chunk, np.stack(_take(it, start, count)))


def test_validation():
    with pytest.raises(ValueError, match="batch_size=20 > num_examples=10"):
        BatchIterator(10, 20, 0)
    BatchIterator(10, 20, 0, drop_remainder=False)  # one short batch per epoch is fine
    with pytest.raises(ValueError, match="drop_remainder"):
        BatchIterator(10, 3, 0, drop_remainder=False).index_chunk(0, 2)
    with pytest.raises(ValueError, match="length 9"):
        next(BatchIterator(10, 3, 0).batches(np.arange(9)))
    with pytest.raises(ValueError):
        BatchIterator(0, 1, 0)
