"""Mask rules: from real-valued scores to a binary supermask, with straight-through gradients.

Two rules, as in the official code (SPEC 1.2):

* :func:`threshold_mask`, Piggyback-style ``M = 1[s >= 0]`` (SPEC 1.2b), used for the GNu/NNs
  MNIST runs. Backward: ``dL/ds = dL/dM`` (the straight-through estimator).
* :func:`topk_mask`, edge-popup: per layer keep the fraction ``density`` of weights with the
  largest ``|s|`` (SPEC 1.2a), used for the GG ResNets. Backward: ``dL/ds = sign(s) * dL/dM``,
  because the ranking goes through ``|s|`` and the straight-through step passes the cotangent
  to ``|s|`` unchanged.

Both are ``jax.custom_vjp`` functions: the forward is an exact {0, 1} array in the scores' dtype,
the backward is the identity on the mask cotangent.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "MASK_RULES",
    "er_density",
    "kept_count",
    "threshold_mask",
    "topk_mask",
]


@jax.custom_vjp
def threshold_mask(scores: jax.Array) -> jax.Array:
    """``M = 1[s >= 0]`` with a straight-through gradient (SPEC 1.2b).

    Args:
      scores: float array of any shape.

    Returns:
      A {0, 1} array of the same shape and dtype (NaN where a score is NaN, so that a broken
      score is never read as a pruned weight); ``d M / d s`` is taken as the identity.
    """
    return jnp.where(jnp.isnan(scores), scores, (scores >= 0).astype(scores.dtype))


def _threshold_fwd(scores):
    return threshold_mask(scores), None


def _threshold_bwd(_, g):
    return (g,)


threshold_mask.defvjp(_threshold_fwd, _threshold_bwd)


def kept_count(numel: int, density: float) -> int:
    """Number of weights a top-k mask keeps: ``numel - int((1 - density) * numel)`` (SPEC 1.2a).

    The official code zeroes the lowest ``j = int((1 - k) * numel)`` entries; this is the exact
    complement, including its rounding.
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    return numel - int((1.0 - density) * numel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _straight_through_topk(magnitudes: jax.Array, keep: int) -> jax.Array:
    # Exactly `keep` ones: rank by a stable sort, so ties are broken by position as the official
    # code's `sort()` does, and the count never depends on ties.
    flat = magnitudes.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    mask = ranks >= flat.size - keep
    return mask.astype(magnitudes.dtype).reshape(magnitudes.shape)


def _topk_fwd(magnitudes, keep):
    return _straight_through_topk(magnitudes, keep), None


def _topk_bwd(keep, _, g):
    return (g,)


_straight_through_topk.defvjp(_topk_fwd, _topk_bwd)


def topk_mask(scores: jax.Array, density: float) -> jax.Array:
    """Edge-popup mask: keep the ``kept_count(size, density)`` largest ``|s|`` (SPEC 1.2a).

    ``density`` is the fraction of weights KEPT (the official ``--sparsity`` flag). The mask is
    per array, i.e. per layer. Gradient: ``sign(s) * dL/dM`` (through ``abs``).

    Args:
      scores: float array of any shape (one layer).
      density: Python float in [0, 1]; static.

    Returns:
      A {0, 1} array of the same shape and dtype with exactly ``kept_count`` ones.
    """
    return _straight_through_topk(jnp.abs(scores), kept_count(math.prod(scores.shape), density))


def er_density(shape: Sequence[int], scale: float, cap: float = 0.5) -> float:
    """Erdos-Renyi layer-wise density ``min(cap, s * (c_out + c_in) / (c_out * c_in * k_h * k_w))``.

    SPEC 1.2 (``--er-sparsity`` in the official ``main.py``; Mocanu et al.). Flax kernel layouts are
    ``(..., c_in, c_out)``: ``(c_in, c_out)`` for Dense and ``(k_h, k_w, c_in, c_out)`` for Conv,
    so the receptive field is the product of the leading dimensions.

    Args:
      shape: the kernel shape, at least 2-D.
      scale: the integer-valued "ER scale" s (the launchers use 1, 2, 4, ..., 32).
      cap: the maximum density (0.5 in the official code).
    """
    if len(shape) < 2:
        raise ValueError(f"ER density needs a kernel of rank >= 2, got shape {tuple(shape)}")
    c_in, c_out = shape[-2], shape[-1]
    field = math.prod(shape[:-2])
    return min(cap, scale * (c_out + c_in) / (c_out * c_in * field))


MASK_RULES = ("threshold", "topk")
