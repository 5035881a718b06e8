"""BNNet, the network of HopSupSup: neuron masks as the scale of a non-affine BatchNorm (SPEC 1.9).

``784 -> 2048 -> BN-mask -> Swish -> 2048 -> BN-mask -> Swish -> num_outputs``, bias-free layers
with frozen signed-constant weights. The official ``FastHopMaskBN`` calls
``F.batch_norm(x, weight=mask, bias=None)`` with ``affine=False, track_running_stats=False``: the
output of every hidden layer is normalised with the *batch* statistics (mean and biased variance,
eps 1e-5), in training and at test time alike, and multiplied per neuron by the task's {0, 1}
mask. Swish(0) = 0, so a masked neuron outputs exactly 0 (paper Eq. 5: every layer's output is
masked except the last's).

The masks enter as parameter leaves ``neuron_masks/<i>`` of ones, shape ``(width,)``: masking
them with ``masking.mask_params`` (``1 * M``) turns the ordinary supermask machinery (scores,
threshold rule, straight-through gradient, :class:`~supsup_jax.train.Trainer`) into neuron masks.
Select them with :func:`neuron_mask_filter`. There are no running statistics
(``batch_stats == {}``), so the output for one example depends on the rest of its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from supsup_jax import init as init_lib
from supsup_jax.models.network import Network, from_nnx

__all__ = ["BNNet", "bnnet", "neuron_mask_filter"]

MASKS = "neuron_masks"


def neuron_mask_filter(path: str, leaf) -> bool:
    """``is_masked`` filter for BNNet: the neuron-mask leaves ``neuron_masks/<i>``."""
    del leaf
    return path.split("/", 1)[0] == MASKS


def batch_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Non-affine batch norm with batch statistics: ``(x - mean) / sqrt(var + eps)`` over axis 0.

    Args:
      x: float ``(B, C)``, B >= 1.

    Returns:
      float ``(B, C)``. The variance is the biased one, as ``F.batch_norm`` normalises with.
    """
    mean = jnp.mean(x, axis=0, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=0, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class BNNet(nnx.Module):
    """``flatten -> [Dense(h, no bias) -> BN * mask -> Swish]* -> Dense(num_outputs, no bias)``.

    Input ``(B, H, W, C)`` float; output ``(B, num_outputs)``. ``B`` must be >= 2 for the batch
    statistics to mean anything (with B = 1 every normalised value is 0).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_outputs: int, *,
                 kernel_init=None, eps: float = 1e-5, rngs: nnx.Rngs):
        kernel_init = kernel_init or init_lib.signed_kaiming_constant()
        sizes = [in_features, *hidden, num_outputs]
        self.layers = nnx.List([
            nnx.Linear(a, b, use_bias=False, kernel_init=kernel_init, rngs=rngs)
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        ])
        self.neuron_masks = nnx.List([nnx.Param(jnp.ones((h,), jnp.float32)) for h in hidden])
        self.eps = eps

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # batch statistics in training and at test time (track_running_stats=False)
        x = x.reshape(x.shape[0], -1)
        for layer, mask in zip(self.layers[:-1], self.neuron_masks, strict=True):
            x = jax.nn.swish(batch_norm(layer(x), self.eps) * mask[None, :])
        return self.layers[-1](x)


def bnnet(num_outputs: int = 10, seed: int = 0, input_shape=(28, 28, 1),
          hidden: Sequence[int] = (2048, 2048), weight_init: str = "signed_constant") -> Network:
    """BNNet (SPEC 1.9) as a :class:`Network`: frozen weights from ``seed``, masks in
    ``params["neuron_masks"]``, no running statistics."""
    if not hidden:
        raise ValueError("BNNet needs at least one hidden (masked) layer")
    module = BNNet(math.prod(input_shape), tuple(hidden), num_outputs,
                   kernel_init=init_lib.weight_init(weight_init), rngs=nnx.Rngs(seed))
    return from_nnx(module, tuple(input_shape))
