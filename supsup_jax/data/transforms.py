"""Pure image transforms: normalisation and augmentation (jax), task rotations (numpy).

All images are NHWC. Augmentations take uint8 (or float in [0, 255]) images *before*
``normalize``, so that padding is black as in torchvision, where ``RandomCrop(32, padding=4)`` pads
the uint8 PIL image before ``ToTensor`` and ``Normalize``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Images rotated per gather in ``rotate``; bounds the float32 temporaries of bilinear sampling.
_ROTATE_CHUNK = 8192


def normalize(
    images: jax.Array | np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> jax.Array:
    """Scales pixels to [0, 1] and standardises each channel: ``(x / 255 - mean) / std``.

    Args:
      images: uint8 ``(..., C)`` (or float in [0, 255]), channels last.
      mean: per-channel mean of ``x / 255``, length C (or 1, broadcast).
      std: per-channel standard deviation of ``x / 255``, same length as ``mean``.

    Returns:
      float32 array of the same shape. Works under ``jax.jit``.
    """
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    # Explicit broadcast shape: implicit rank promotion is an error under strict numerics.
    shape = (1,) * (x.ndim - 1) + (-1,)
    mean_ = jnp.asarray(mean, jnp.float32).reshape(shape)
    std_ = jnp.asarray(std, jnp.float32).reshape(shape)
    return (x - mean_) / std_


def _cos_sin(degrees: float) -> tuple[float, float]:
    # Exact values at multiples of 90 degrees, so that those rotations are exact permutations.
    quarter, rest = divmod(float(degrees), 90.0)
    if rest == 0.0:
        return [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][int(quarter) % 4]
    rad = math.radians(degrees)
    return math.cos(rad), math.sin(rad)


def rotate(images: np.ndarray, degrees: float, interpolation: str = "bilinear") -> np.ndarray:
    """Rotates every image about its centre, counter-clockwise for positive ``degrees``.

    The convention is that of ``np.rot90`` and torchvision's ``rotate``: the centre is
    ``((H - 1) / 2, (W - 1) / 2)`` in pixel-index coordinates, so a 90 degree rotation of a square
    image equals ``np.rot90(image)`` exactly, for both interpolations. Pixels that come from
    outside the input are 0. The sampling grid is computed once and applied to all images by one
    gather (per neighbour for bilinear).

    torchvision's ``rotate`` (used by the official RotatingMNIST on PIL images) defaults to
    nearest-neighbour. We default to bilinear because nearest-neighbour duplicates and drops
    pixels at angles that are not multiples of 90 degrees, giving jagged strokes that make the
    tasks differ by aliasing as well as by angle; pass ``interpolation="nearest"`` to reproduce
    the official data.

    Args:
      images: uint8 ``(N, H, W, C)``.
      degrees: rotation angle in degrees.
      interpolation: ``"bilinear"`` or ``"nearest"`` (round half to even, as torch's
        ``grid_sample``).

    Returns:
      uint8 ``(N, H, W, C)``.
    """
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 NHWC images, got {images.dtype} of shape {images.shape}")
    n, h, w, _ = images.shape
    cos, sin = _cos_sin(degrees)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rows, cols = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )
    # Inverse map: output pixel -> input location (rotate by -degrees), in a y-up frame.
    x, y = cols - cx, cy - rows
    src_col = cx + cos * x + sin * y
    src_row = cy - (-sin * x + cos * y)

    flat = images.reshape(n, h * w, -1)
    out = np.empty_like(flat)
    # Gathers go through np.take on flat pixel indices: ~8x faster than 2-D fancy indexing.
    if interpolation == "nearest":
        r, q = np.rint(src_row).astype(np.intp), np.rint(src_col).astype(np.intp)
        inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
        src = np.where(inside, r * w + q, 0).reshape(-1)
        keep = inside.reshape(1, -1, 1)
        for s in range(0, n, _ROTATE_CHUNK):
            out[s : s + _ROTATE_CHUNK] = np.where(
                keep, np.take(flat[s : s + _ROTATE_CHUNK], src, 1), 0
            )
        return out.reshape(images.shape)

    # Bilinear: four neighbours, each a flat index and a weight; a neighbour outside the image
    # gets weight 0, which is the zero fill (and empties locations more than a pixel outside).
    r0, q0 = np.floor(src_row), np.floor(src_col)
    fr, fq = src_row - r0, src_col - q0
    neighbours = []
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dq, wq in ((0, 1 - fq), (1, fq)):
            rr, qq = r0.astype(np.intp) + dr, q0.astype(np.intp) + dq
            valid = (rr >= 0) & (rr < h) & (qq >= 0) & (qq < w)
            index = np.where(valid, rr * w + qq, 0).reshape(-1)
            weight = np.where(valid, wr * wq, 0.0).astype(np.float32).reshape(1, -1, 1)
            neighbours.append((index, weight))
    for s in range(0, n, _ROTATE_CHUNK):
        chunk = flat[s : s + _ROTATE_CHUNK]
        acc = np.zeros(chunk.shape, np.float32)
        for index, weight in neighbours:
            acc += np.take(chunk, index, 1) * weight
        out[s : s + _ROTATE_CHUNK] = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
    return out.reshape(images.shape)


def random_crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """CIFAR augmentation: random crop of the zero-padded image and random horizontal flip.

    Matches torchvision ``RandomCrop(H, padding=pad)`` + ``RandomHorizontalFlip()`` (SPEC 2.2),
    with an independent offset and flip per image. Jittable.

    Args:
      key: PRNG key.
      images: ``(N, H, W, C)``, any dtype (uint8 before ``normalize`` for black padding).
      pad: zero padding on each side; offsets are uniform in ``[0, 2 * pad]``.

    Returns:
      Array of the same shape and dtype as ``images``.
    """
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(k: jax.Array, image: jax.Array) -> jax.Array:
        k_row, k_col, k_flip = jax.random.split(k, 3)
        dy = jax.random.randint(k_row, (), 0, 2 * pad + 1)
        dx = jax.random.randint(k_col, (), 0, 2 * pad + 1)
        crop = jax.lax.dynamic_slice(image, (dy, dx, jnp.zeros((), dy.dtype)), (h, w, c))
        return jnp.where(jax.random.bernoulli(k_flip), crop[:, ::-1], crop)

    return jax.vmap(one)(jax.random.split(key, n), padded)


def _crop_box(
    key: jax.Array,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    attempts: int = 10,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """torchvision ``RandomResizedCrop.get_params``, with its 10 attempts vectorised."""
    k_area, k_ratio, k_row, k_col = jax.random.split(key, 4)
    area = (
        height * width * jax.random.uniform(k_area, (attempts,), minval=scale[0], maxval=scale[1])
    )
    aspect = jnp.exp(
        jax.random.uniform(
            k_ratio, (attempts,), minval=math.log(ratio[0]), maxval=math.log(ratio[1])
        )
    )
    ws = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    hs = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    ok = (ws > 0) & (hs > 0) & (ws <= width) & (hs <= height)
    first = jnp.argmax(ok)
    # Fallback (no attempt fits): the largest centred crop whose ratio is clamped to `ratio`.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    found = ok.any()
    h = jnp.where(found, hs[first], fh)
    w = jnp.where(found, ws[first], fw)
    top = jnp.where(found, jax.random.randint(k_row, (), 0, height - h + 1), (height - fh) // 2)
    left = jnp.where(found, jax.random.randint(k_col, (), 0, width - w + 1), (width - fw) // 2)
    return top, left, h, w


def random_resized_crop_flip(
    key: jax.Array,
    images: jax.Array,
    size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> jax.Array:
    """ImageNet augmentation: ``RandomResizedCrop(size, scale, ratio)`` + horizontal flip.

    The crop box is drawn as in torchvision (10 attempts, then a centred fallback) and resized
    with antialiased bilinear ``jax.image.scale_and_translate`` straight from the full image (the
    kernel may read the pixels just outside the box, where torchvision crops first). Jittable;
    one independent box and flip per image.

    Args:
      key: PRNG key.
      images: ``(N, H, W, C)`` uint8 or float in [0, 255].
      size: output side.
      scale: range of the crop area as a fraction of the image area.
      ratio: range of the crop aspect ratio (width / height), sampled log-uniformly.

    Returns:
      float32 ``(N, size, size, C)`` in the input's value range (feed it to ``normalize``).
    """
    n, height, width, c = images.shape

    def one(k: jax.Array, image: jax.Array) -> jax.Array:
        k_box, k_flip = jax.random.split(k)
        top, left, h, w = _crop_box(k_box, height, width, scale, ratio)
        s = jnp.stack([size / h.astype(jnp.float32), size / w.astype(jnp.float32)])
        t = -jnp.stack([top, left]).astype(jnp.float32) * s
        out = jax.image.scale_and_translate(
            image.astype(jnp.float32),
            (size, size, c),
            (0, 1),
            s,
            t,
            method="linear",
            antialias=True,
        )
        return jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)

    return jax.vmap(one)(jax.random.split(key, n), images)
