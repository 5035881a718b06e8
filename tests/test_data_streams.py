"""Task streams (permuted, rotated, split) and the image transforms they and the trainer use."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax.data import (
    DATASET_STATS,
    Dataset,
    PermutedStream,
    RotatedStream,
    SplitStream,
    normalize,
    permutation,
    random_crop_flip,
    random_resized_crop_flip,
    rotate,
    split_cifar100,
    split_mnist,
)


def _dataset(name="mnist", n_train=60, n_test=20, shape=(6, 6, 1), num_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset(
        name=name,
        train_images=rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8),
        train_labels=(np.arange(n_train) % num_classes).astype(np.int32),
        test_images=rng.integers(0, 256, (n_test,) + shape, dtype=np.uint8),
        test_labels=(np.arange(n_test) % num_classes).astype(np.int32),
        num_classes=num_classes,
    )


# --- permutations ---------------------------------------------------------------------------------


def test_permutation_is_deterministic_and_valid():
    p = permutation(0, 3, 784)
    assert p.dtype == np.int32 and p.shape == (784,)
    np.testing.assert_array_equal(np.sort(p), np.arange(784))
    np.testing.assert_array_equal(p, permutation(0, 3, 784))
    assert not np.array_equal(permutation(0, 0, 784), np.arange(784))  # task 0 is permuted too


def test_permutations_distinct_across_tasks_and_seeds():
    perms = {(s, t): permutation(s, t, 784).tobytes() for s in range(3) for t in range(6)}
    assert len(set(perms.values())) == len(perms)
    # The official code's overlap (seed s task i == seed s+1 task i-1) is gone.
    for s, i in itertools.product(range(2), range(1, 6)):
        assert perms[(s, i)] != perms[(s + 1, i - 1)]


def test_permuted_stream_train_and_test_share_the_permutation():
    ds = _dataset()
    stream = PermutedStream(ds, num_tasks=4, seed=7)
    assert stream.augment == "none" and (stream.mean, stream.std) == DATASET_STATS["mnist"]
    for t in (0, 3):
        task = stream.task(t)
        perm = stream.permutation(t)
        np.testing.assert_array_equal(perm, permutation(7, t, 36))
        assert task.train_images.shape == ds.train_images.shape and task.num_classes == 10
        inverse = np.argsort(perm)
        for permuted, original in (
            (task.train_images, ds.train_images),
            (task.test_images, ds.test_images),
        ):
            recovered = permuted.reshape(len(permuted), -1)[:, inverse].reshape(original.shape)
            np.testing.assert_array_equal(recovered, original)
        # Independent forward check on one pixel: output pixel j is input pixel perm[j].
        flat_in, flat_out = ds.test_images.reshape(20, -1), task.test_images.reshape(20, -1)
        np.testing.assert_array_equal(flat_out[:, 5], flat_in[:, perm[5]])
        np.testing.assert_array_equal(task.train_labels, ds.train_labels)


@pytest.mark.parametrize("t", [-1, 4, 100])
def test_task_index_out_of_range(t):
    stream = PermutedStream(_dataset(), num_tasks=4)
    with pytest.raises(IndexError, match=f"task {t} out of range for a stream of 4 tasks"):
        stream.task(t)
    with pytest.raises(IndexError):
        stream.permutation(t)


def test_stats_fallback_for_unknown_dataset():
    ds = _dataset(name="my_data", shape=(4, 4, 2))
    stream = PermutedStream(ds, num_tasks=1)
    pixels = ds.train_images.reshape(-1, 2).astype(np.float64) / 255
    np.testing.assert_allclose(stream.mean, pixels.mean(0))
    np.testing.assert_allclose(stream.std, pixels.std(0))


# --- rotations ------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_rotate_quarter_turns_equal_rot90(interpolation):
    images = np.random.default_rng(0).integers(0, 256, (3, 9, 9, 2), dtype=np.uint8)
    np.testing.assert_array_equal(rotate(images, 0.0, interpolation), images)
    for k in (1, 2, 3, -1):
        expected = np.rot90(images, k, axes=(1, 2))
        np.testing.assert_array_equal(rotate(images, 90.0 * k, interpolation), expected)
    # Non-square: a half turn is still exact.
    wide = images[:, :4, :, :]
    np.testing.assert_array_equal(rotate(wide, 180.0, interpolation), wide[:, ::-1, ::-1])


def test_rotate_bilinear_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    images = np.random.default_rng(1).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    for degrees in (10.0, 30.0, -45.0, 200.0):
        # grid-constant: zero fill *with* interpolation across the border, as zero padding.
        ref = ndimage.rotate(
            images.astype(np.float64),
            degrees,
            axes=(1, 2),
            reshape=False,
            order=1,
            mode="grid-constant",
            cval=0.0,
        )
        expected = np.clip(np.rint(ref), 0, 255)
        np.testing.assert_allclose(rotate(images, degrees).astype(np.float64), expected, atol=1)


def test_rotated_stream():
    ds = _dataset(shape=(8, 8, 1))
    stream = RotatedStream(ds, num_tasks=36, degrees_per_task=90.0, interpolation="nearest")
    np.testing.assert_array_equal(stream.task(0).train_images, ds.train_images)
    np.testing.assert_array_equal(
        stream.task(1).test_images, np.rot90(ds.test_images, 1, axes=(1, 2))
    )
    assert RotatedStream(ds, 36).degrees(35) == 350.0
    with pytest.raises(IndexError):
        stream.task(36)


# --- splits ---------------------------------------------------------------------------------------


def test_split_mnist_pairs_with_global_labels():
    ds = _dataset()
    stream = split_mnist(ds)
    assert stream.num_tasks == 5 and stream.augment == "none"
    for t in range(5):
        np.testing.assert_array_equal(stream.classes(t), [2 * t, 2 * t + 1])
        task = stream.task(t)
        assert task.num_classes == 10
        assert set(task.train_labels) == {2 * t, 2 * t + 1}
        np.testing.assert_array_equal(
            task.test_images, ds.test_images[np.isin(ds.test_labels, [2 * t, 2 * t + 1])]
        )


@pytest.mark.parametrize("seed", [None, 0, 5])
def test_split_partitions_and_relabels(seed):
    ds = _dataset(num_classes=10, n_train=100)
    stream = SplitStream(ds, num_tasks=5, classes_per_task=2, seed=seed, relabel=True)
    all_classes = np.concatenate([stream.classes(t) for t in range(5)])
    np.testing.assert_array_equal(np.sort(all_classes), np.arange(10))  # each class exactly once
    for t in range(5):
        task, classes = stream.task(t), stream.classes(t)
        assert task.num_classes == 2
        # Independent reference: a Python loop over examples.
        ref = [
            (img, list(classes).index(lab))
            for img, lab in zip(ds.train_images, ds.train_labels, strict=True)
            if lab in classes
        ]
        np.testing.assert_array_equal(task.train_images, np.stack([r[0] for r in ref]))
        np.testing.assert_array_equal(task.train_labels, [r[1] for r in ref])
        assert task.train_labels.dtype == np.int32


def test_seeded_split_order():
    ds = _dataset(num_classes=100, n_train=200)
    fixed = SplitStream(ds, 20, 5)
    np.testing.assert_array_equal(fixed.classes(3), [15, 16, 17, 18, 19])
    a, b, a2 = split_cifar100(ds, 0), split_cifar100(ds, 1), split_cifar100(ds, 0)
    np.testing.assert_array_equal(a.classes(0), a2.classes(0))
    assert not np.array_equal(a.class_order, b.class_order)
    np.testing.assert_array_equal(
        a.class_order, np.asarray(jax.random.permutation(jax.random.key(0), 100))
    )


def test_split_validation():
    with pytest.raises(ValueError, match="6 tasks x 2 classes = 12 classes"):
        SplitStream(_dataset(), num_tasks=6, classes_per_task=2)
    stream = SplitStream(_dataset(), num_tasks=3, classes_per_task=2, relabel=False)
    assert stream.task(2).num_classes == 10 and set(stream.task(2).test_labels) == {4, 5}


# --- transforms -----------------------------------------------------------------------------------


def test_normalize_matches_numpy_and_jits():
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    mean, std = DATASET_STATS["cifar100"]
    expected = (images / 255.0 - np.array(mean)) / np.array(std)
    out = jax.jit(normalize, static_argnums=(1, 2))(images, mean, std)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _find_window(padded, out):
    """All (dy, dx, flip) whose window of ``padded`` equals ``out`` (brute force)."""
    h, w = out.shape[:2]
    hits = []
    for dy in range(padded.shape[0] - h + 1):
        for dx in range(padded.shape[1] - w + 1):
            window = padded[dy : dy + h, dx : dx + w]
            hits += [(dy, dx, False)] * np.array_equal(window, out)
            hits += [(dy, dx, True)] * np.array_equal(window[:, ::-1], out)
    return hits


def test_random_crop_flip_is_a_window_of_the_padded_image():
    images = np.random.default_rng(0).integers(1, 256, (16, 8, 8, 3), dtype=np.uint8)
    out = np.asarray(jax.jit(random_crop_flip)(jax.random.key(0), images))
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    params = []
    for image, result in zip(padded, out, strict=True):
        hits = _find_window(image, result)
        assert len(hits) == 1
        params.append(hits[0])
    # Over 16 images the offsets and flips vary (not a fixed transform).
    assert len({p[:2] for p in params}) > 1 and len({p[2] for p in params}) == 2
    np.testing.assert_array_equal(out, random_crop_flip(jax.random.key(0), images))


def test_random_resized_crop_flip():
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    fn = jax.jit(random_resized_crop_flip, static_argnames=("size", "scale", "ratio"))
    out = fn(jax.random.key(1), images, size=8)
    assert out.shape == (4, 8, 8, 3) and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0
    # The whole image at its own size: identity or mirror image.
    full = np.asarray(fn(jax.random.key(2), images, size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0)))
    for image, result in zip(images.astype(np.float32), full, strict=True):
        same = np.allclose(result, image, atol=1e-3) or np.allclose(
            result, image[:, ::-1], atol=1e-3
        )
        assert same
