"""Fully connected SupSup networks: LeNet 300-100 and FC 1024-1024 (SPEC 2.2).

No biases (the official layers are bias-free 1x1 convolutions); ReLU between layers. The output
layer has ``num_outputs`` units: the real classes first, then the superfluous neurons (s-neurons)
that the G objective uses (SPEC 1.6).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from supsup_jax import init as init_lib
from supsup_jax.models.network import Network, from_nnx

__all__ = ["MLP", "fc1024", "lenet300_100"]


class MLP(nnx.Module):
    """``flatten -> [Dense(h, no bias) -> ReLU]* -> Dense(num_outputs, no bias)``.

    Input ``(B, H, W, C)`` float; output ``(B, num_outputs)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_outputs: int,
        *,
        kernel_init=None,
        rngs: nnx.Rngs,
    ):
        kernel_init = kernel_init or init_lib.signed_kaiming_constant()
        sizes = [in_features, *hidden, num_outputs]
        self.layers = nnx.List(
            [
                nnx.Linear(a, b, use_bias=False, kernel_init=kernel_init, rngs=rngs)
                for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            ]
        )

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no BN, no dropout
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def _mlp(hidden, num_outputs, seed, input_shape, weight_init) -> Network:
    kernel_init = init_lib.weight_init(weight_init)
    in_features = int(jnp.prod(jnp.asarray(input_shape)))
    module = MLP(in_features, hidden, num_outputs, kernel_init=kernel_init, rngs=nnx.Rngs(seed))
    return from_nnx(module, input_shape)


def lenet300_100(num_outputs: int = 10, seed: int = 0, input_shape=(28, 28, 1),
                 weight_init: str = "signed_constant") -> Network:
    """LeNet 300-100: 784-300-100-``num_outputs``.

    The paper uses 100 outputs for 250 tasks and 500 for 2500 tasks.
    """
    return _mlp((300, 100), num_outputs, seed, input_shape, weight_init)


def fc1024(num_outputs: int = 10, seed: int = 0, input_shape=(28, 28, 1),
           weight_init: str = "signed_constant") -> Network:
    """FC 1024-1024: 784-1024-1024-``num_outputs`` (paper: output 500 for PermutedMNIST)."""
    return _mlp((1024, 1024), num_outputs, seed, input_shape, weight_init)
