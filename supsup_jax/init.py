"""Initialisers for the frozen random weights and for the per-task scores (SPEC 1.1).

All initialisers have the ``jax.nn.initializers`` signature ``init(key, shape, dtype)`` and use
Flax kernel layouts, ``(c_in, c_out)`` for Dense and ``(k_h, k_w, c_in, c_out)`` for Conv, so
``fan_in = prod(shape[:-1])`` and ``fan_out = prod(shape[:-2]) * shape[-1]``. They are pure
functions of the key: a model is regenerated from its seed alone, so a saved SupSup model needs
only the seed and the masks (paper section 4.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "WEIGHT_INITS",
    "fans",
    "kaiming_normal",
    "kaiming_uniform",
    "pytorch_default",
    "score_init",
    "signed_kaiming_constant",
    "weight_init",
    "xavier_normal",
]

Initializer = Callable[..., jax.Array]
RELU_GAIN = math.sqrt(2.0)


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a Flax kernel of the given shape (rank >= 2)."""
    if len(shape) < 2:
        raise ValueError(f"a kernel needs rank >= 2 to have fans, got shape {tuple(shape)}")
    field = math.prod(shape[:-2])
    return field * shape[-2], field * shape[-1]


def _fan(shape, mode: str) -> int:
    fan_in, fan_out = fans(shape)
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")


def signed_kaiming_constant(gain: float = RELU_GAIN, mode: str = "fan_in") -> Initializer:
    """Signed Kaiming constant: ``w = +-gain / sqrt(fan)``, each sign +-1 with probability 1/2.

    SPEC 1.1 (``signed_constant`` in the official ``models/init.py``; paper section 3.1): the
    magnitude is the standard deviation of the Kaiming normal distribution.
    """

    def init(key, shape, dtype=jnp.float32):
        c = gain / math.sqrt(_fan(shape, mode))
        signs = jax.random.rademacher(key, shape, jnp.float32)
        return (signs * jnp.float32(c)).astype(dtype)

    return init


def kaiming_normal(gain: float = RELU_GAIN, mode: str = "fan_in") -> Initializer:
    """``N(0, (gain / sqrt(fan))^2)`` (PyTorch ``kaiming_normal_``)."""

    def init(key, shape, dtype=jnp.float32):
        std = gain / math.sqrt(_fan(shape, mode))
        return (jnp.float32(std) * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return init


def kaiming_uniform(gain: float = RELU_GAIN, mode: str = "fan_in") -> Initializer:
    """``U(-b, b)`` with ``b = gain * sqrt(3 / fan)`` (PyTorch ``kaiming_uniform_``)."""

    def init(key, shape, dtype=jnp.float32):
        bound = gain * math.sqrt(3.0 / _fan(shape, mode))
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)

    return init


def xavier_normal(gain: float = 1.0) -> Initializer:
    """``N(0, gain^2 * 2 / (fan_in + fan_out))`` (PyTorch ``xavier_normal_``; PSP's init, SPEC
    1.10)."""

    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = fans(shape)
        std = gain * math.sqrt(2.0 / (fan_in + fan_out))
        return (jnp.float32(std) * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return init


def pytorch_default() -> Initializer:
    """PyTorch's default conv/linear init, ``kaiming_uniform_(a=sqrt(5))``:
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (the BatchE Rand W weights, SPEC 1.10)."""
    return kaiming_uniform(gain=math.sqrt(1.0 / 3.0))


def score_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """Score initialiser ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (SPEC 1.1, ``mask_init``).

    This is PyTorch's ``kaiming_uniform_(a=sqrt(5))``: gain ``sqrt(2 / (1 + 5))`` times
    ``sqrt(3 / fan_in)``. Under the threshold rule a fresh mask is about 50% dense, at random.
    """
    return kaiming_uniform(gain=math.sqrt(1.0 / 3.0))(key, shape, dtype)


WEIGHT_INITS: dict[str, Callable[[], Initializer]] = {
    "signed_constant": signed_kaiming_constant,
    "kaiming_normal": kaiming_normal,
    "kaiming_uniform": kaiming_uniform,
    "xavier_normal": xavier_normal,
    "pytorch_default": pytorch_default,
}


def weight_init(name: str, **kwargs) -> Initializer:
    """The frozen-weight initialiser called ``name`` (one of ``WEIGHT_INITS``)."""
    try:
        return WEIGHT_INITS[name](**kwargs)
    except KeyError:
        raise ValueError(
            f"unknown weight init {name!r}; choose one of {sorted(WEIGHT_INITS)}"
        ) from None
