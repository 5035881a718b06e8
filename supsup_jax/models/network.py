"""The functional face of a model: ``apply(params, batch_stats, x, train) -> (logits, stats)``.

The core never sees a Flax module. :func:`from_nnx` splits an NNX module into a graph definition
and two pure-dict pytrees, the parameters (frozen weights) and the BatchNorm running statistics,
following Flax's performance guidance (``nnx.split``/``nnx.merge`` around plain ``jax.jit``).
:func:`from_linen` does the same for a Linen module, so a model we did not write works too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

__all__ = ["Network", "from_linen", "from_nnx"]

Params = Any
ApplyFn = Callable[[Params, Params, jax.Array, bool], tuple[jax.Array, Params]]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params", "batch_stats"],
                   meta_fields=["apply", "input_shape", "num_outputs"])
@dataclasses.dataclass(frozen=True, eq=False)
class Network:
    """A model as pure data plus one pure function.

    A pytree: its leaves are ``params`` and ``batch_stats``, while ``apply``, ``input_shape``
    and ``num_outputs`` are static. Pass it to a jitted function as an ordinary argument (the
    weights are then traced, not baked into the program as constants); for other weights, e.g.
    a baseline's trained ``W``, use ``dataclasses.replace(network, params=w)``.

    Attributes:
      apply: ``apply(params, batch_stats, x, train) -> (logits, new_batch_stats)``; ``x`` is a
        float batch ``(B, *input_shape)``, logits ``(B, num_outputs)``. With ``train=False`` the
        running statistics are used and returned unchanged.
      params: the weights, a pytree of arrays (frozen in SupSup).
      batch_stats: initial BatchNorm running statistics, ``{}`` for models without BN.
      input_shape: the shape of one example, e.g. ``(28, 28, 1)``.
      num_outputs: the width of the output layer (real classes plus superfluous neurons).
    """

    apply: ApplyFn
    params: Params
    batch_stats: Params
    input_shape: tuple[int, ...]
    num_outputs: int

    @property
    def has_bn(self) -> bool:
        """Whether the model keeps BatchNorm running statistics (per task in SupSup)."""
        return bool(jax.tree.leaves(self.batch_stats))


def from_nnx(module: nnx.Module, input_shape: tuple[int, ...]) -> Network:
    """Wrap an NNX module whose ``__call__(x, train)`` returns logits.

    Parameters (``nnx.Param``) and running statistics (``nnx.BatchStat``) become pure dicts; any
    other state (e.g. RNG counters) is frozen into the closure.
    """
    graphdef, params, stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    params, stats = nnx.to_pure_dict(params), nnx.to_pure_dict(stats)

    def apply(params, batch_stats, x, train):
        model = nnx.merge(graphdef, params, batch_stats, rest)
        logits = model(x, train=train)
        new_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)) if train else batch_stats
        return logits, new_stats

    probe = jax.eval_shape(lambda p, s: apply(p, s, jax.numpy.zeros((1, *input_shape)), False)[0],
                           params, stats)
    return Network(apply, params, stats, tuple(input_shape), int(probe.shape[-1]))


def from_linen(
    module, variables, input_shape: tuple[int, ...], train_kwarg: str = "train"
) -> Network:
    """Wrap a Linen module with variables ``{'params': ..., 'batch_stats': ...}``.

    ``module.apply(variables, x, **{train_kwarg: train})`` must return logits; the
    ``batch_stats`` collection (if any) is mutable in training.
    """
    params = variables["params"]
    stats = variables.get("batch_stats", {})

    def apply(params, batch_stats, x, train):
        v = {"params": params}
        if batch_stats:
            v["batch_stats"] = batch_stats
        kwargs = {train_kwarg: train} if train_kwarg else {}
        if train and batch_stats:
            logits, upd = module.apply(v, x, mutable=["batch_stats"], **kwargs)
            return logits, upd["batch_stats"]
        return module.apply(v, x, **kwargs), batch_stats

    probe = jax.eval_shape(lambda p, s: apply(p, s, jax.numpy.zeros((1, *input_shape)), False)[0],
                           params, stats)
    return Network(apply, params, stats, tuple(input_shape), int(probe.shape[-1]))
