"""The paper's baselines beside SupSup (SPEC 1.10), selected by ``config.method``.

Every method runs through the same runner (:func:`supsup_jax.runner.train_and_evaluate`),
data streams, metrics, results files and plots as SupSup; see :mod:`.core` for the protocol a
method implements. ``config.method`` is one of :data:`METHODS` and ``config.rand_w`` picks the
Rand W variant where it exists:

======================  ==========================================================  ========
method                  what trains                                                 Rand W
======================  ==========================================================  ========
``supsup``              a supermask per task on frozen random weights (the core)    -
``batche``              W and fast weights on task 0, then ``r_t, s_t`` per task    W random
``psp``                 W on every task, fixed random contexts per task             -
``separate_heads``      trunk on task 0, a head per task                            heads only
``lower_bound``         trunk on every task in turn, a head per task                -
``upper_bound``         every weight on every task, a model kept per task           -
======================  ==========================================================  ========
"""

from __future__ import annotations

import jax

from supsup_jax.baselines import batche, core, dense, psp
from supsup_jax.baselines.batche import BatchE
from supsup_jax.baselines.core import Method, MethodTrainer
from supsup_jax.baselines.dense import Heads, UpperBound
from supsup_jax.baselines.psp import PSP
from supsup_jax.models.network import Network

__all__ = [
    "METHODS",
    "PSP",
    "BatchE",
    "Heads",
    "Method",
    "MethodTrainer",
    "UpperBound",
    "batche",
    "core",
    "dense",
    "make_method",
    "psp",
]

METHODS = ("supsup", "batche", "psp", "separate_heads", "lower_bound", "upper_bound")
_RAND_W = ("batche", "separate_heads")


def make_method(name: str, network: Network, num_tasks: int, *, rand_w: bool = False,
                psp_context: str = "orthogonal", key: jax.Array | None = None) -> Method:
    """The baseline called ``name`` (any of :data:`METHODS` but ``"supsup"``).

    Args:
      rand_w: the Rand W variant (``batche``, ``separate_heads`` only).
      psp_context: ``"orthogonal"`` or ``"binary"`` (``psp`` only).
      key: seeds PSP's contexts.
    """
    if name == "supsup":
        raise ValueError("supsup is the core method: build it with supsup_jax.train.Trainer")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {METHODS}")
    if rand_w and name not in _RAND_W:
        raise ValueError(f"method {name!r} has no Rand W variant (only {_RAND_W})")
    if name == "batche":
        return BatchE(network, num_tasks, rand_w=rand_w)
    if name == "psp":
        return PSP(network, num_tasks, kind=psp_context, key=key)
    if name == "separate_heads":
        return Heads(network, num_tasks, trunk_tasks=0 if rand_w else 1)
    if name == "lower_bound":
        return Heads(network, num_tasks, trunk_tasks=-1)
    return UpperBound(network, num_tasks)
