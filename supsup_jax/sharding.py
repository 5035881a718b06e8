"""Many devices through JAX's SPMD machinery: a named mesh, ``NamedSharding`` and ``jax.shard_map``.

* :func:`data_parallel_train_step`: the batch is sharded over the ``data`` mesh axis, the frozen
  weights and the task's state are replicated. Inside ``shard_map`` (``check_vma=True``) the
  gradient of a replicated input comes back already summed over the devices, so each device's
  loss is its share of the *global* mean (local sum / global batch) and no ``pmean`` follows:
  one step on N devices equals one step on one device with the whole batch.
* :func:`sharded_alpha_gradient` and the task-inference methods built on it: the task axis of the
  mask bank is sharded over the ``tasks`` mesh axis, so a bank too large for one device is
  spread over several. Each device superposes its own tasks' masks (one ``psum`` of a ``P``-float
  partial sum), every device runs the network on the superposed mask, and each contracts the
  resulting per-weight vector with its own masks only: the per-task gradients (``capacity``
  floats) are the only task-indexed data that crosses devices.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from supsup_jax import bank as bank_lib
from supsup_jax import inference
from supsup_jax.steps import TaskState

__all__ = [
    "data_parallel_train_step",
    "make_mesh",
    "shard_bank",
    "sharded_alpha_gradient",
    "sharded_binary",
    "sharded_exhaustive",
    "sharded_gradient",
    "sharded_one_shot",
]


def make_mesh(shape: Sequence[int], names: Sequence[str]) -> jax.sharding.Mesh:
    """``jax.make_mesh`` with explicit axis types (Auto: shard_map chooses per call)."""
    return jax.make_mesh(tuple(shape), tuple(names), axis_types=(AxisType.Auto,) * len(shape))


def data_parallel_train_step(trainer, mesh, axis: str = "data"):
    """For a :class:`~supsup_jax.train.Trainer`, a jitted
    ``step(params, state, images, labels, key_data) -> (state, metrics)`` whose batch
    is sharded over ``axis``; it equals :meth:`Trainer.train_step` on the whole batch with key
    ``jax.random.wrap_key_data(key_data)`` (raw key data, so that it can be a global array).

    BatchNorm running statistics are averaged over the devices (``pmean``); the normalisation
    itself uses each device's batch statistics, as standard data parallelism does, so BN networks
    match single-device training only up to that difference.
    """
    n = mesh.shape[axis]

    def local(params, state, images, labels, key_data):
        x = trainer.preprocess(images, jax.random.wrap_key_data(key_data), True)
        global_batch = images.shape[0] * n

        def loss_fn(scores):
            logits, stats = trainer.logits(params, trainer.mask_fn(scores), state.batch_stats,
                                           x, train=True)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
            # Each device's share of the global mean; the gradient of the replicated scores
            # is summed over devices by shard_map itself.
            return jnp.sum(ce) / global_batch, (stats, jnp.sum(correct) / global_batch)

        (loss, (stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.scores)
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam, see Trainer.train_step
            updates, opt_state = trainer.optimizer.update(grads, state.opt_state, state.scores)
        scores = optax.apply_updates(state.scores, updates)
        stats = jax.lax.pmean(stats, axis)
        metrics = {"loss": jax.lax.psum(loss, axis), "accuracy": jax.lax.psum(acc, axis)}
        return TaskState(scores, stats, opt_state), metrics

    step = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(axis), P(axis), P()),
                         out_specs=(P(), P()))
    batch = NamedSharding(mesh, P(axis))

    @jax.jit
    def run(params, state, images, labels, key_data):
        images = jax.lax.with_sharding_constraint(images, batch)
        labels = jax.lax.with_sharding_constraint(labels, batch)
        return step(params, state, images, labels, key_data)

    return run


def shard_bank(bank: bank_lib.MaskBank, mesh, axis: str = "tasks") -> bank_lib.MaskBank:
    """Place the bank's task axis across ``axis`` (capacity padded to a multiple of its size)."""
    n = mesh.shape[axis]
    capacity = -(-bank.capacity // n) * n
    bank = bank.grow(capacity) if capacity != bank.capacity else bank
    spec = NamedSharding(mesh, P(axis))
    return dataclasses.replace(
        bank,
        bits=jax.tree.map(lambda b: jax.device_put(b, spec), bank.bits),
        batch_stats=jax.tree.map(lambda b: jax.device_put(b, spec), bank.batch_stats),
        num_tasks=jax.device_put(bank.num_tasks, NamedSharding(mesh, P())))


def _local_bank(bank: bank_lib.MaskBank, bits, batch_stats=None) -> bank_lib.MaskBank:
    """Inside ``shard_map``: this device's slots as a bank of their own (all counted learned;
    the caller masks the unlearned ones on the global task axis)."""
    n = next(iter(bits.values())).shape[0]
    return bank_lib.MaskBank(bits, {} if batch_stats is None else batch_stats,
                             jnp.int32(n), bank.shapes)


def sharded_alpha_gradient(network, params, bank, alpha, x, weights, objective,
                           superposed=None, grad_rows=None, *, mesh, axis: str = "tasks",
                           layers=None):
    """``(objective, d objective / d alpha)`` with the bank's task axis sharded over ``axis``.

    Equals :func:`inference.alpha_gradient` (same signature, ``superposed`` ignored: each device
    superposes its own slots). Per device: the partial superposition of its tasks, one ``psum``
    of ``P`` floats, the forward/backward pass, and the contraction of its tasks' ``grad_rows``
    (over the paths ``layers`` only, when given).
    """
    del superposed
    rows = bank.learned() if grad_rows is None else grad_rows

    def local(bits, alpha, rows, params, x, weights):
        part = _local_bank(bank, bits)
        sup = jax.lax.psum(bank_lib.superpose(alpha, part), axis)
        value, ct = jax.value_and_grad(
            lambda m: objective(inference.masked_logits(network, params, m, x), weights))(sup)
        if layers is not None:
            part, ct = part.select(layers), {p: ct[p] for p in layers}
        return value, bank_lib.contract(part, ct, rows)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(axis), P(axis), P(), P(), P()),
                       out_specs=(P(), P(axis)), check_vma=False)
    return fn(bank.bits, alpha, rows, params, x, weights)


def sharded_gradient(mesh, axis: str = "tasks", layers=None) -> inference.GradientFn:
    """:func:`sharded_alpha_gradient` on ``mesh``, as the ``gradient`` of the inference methods."""
    return functools.partial(sharded_alpha_gradient, mesh=mesh, axis=axis, layers=layers)


def sharded_one_shot(network, params, bank, x, weights, objective, mesh, axis="tasks"):
    """One-Shot on a task-sharded bank (same answer as :func:`inference.one_shot`)."""
    return inference.one_shot(network, params, bank, x, weights, objective,
                              gradient=sharded_gradient(mesh, axis))


def sharded_binary(network, params, bank, x, weights, objective, mesh, axis="tasks"):
    """Binary on a task-sharded bank (same answer as :func:`inference.binary`)."""
    return inference.binary(network, params, bank, x, weights, objective,
                            gradient=sharded_gradient(mesh, axis))


def sharded_exhaustive(network, params, bank, x, weights, mesh, axis="tasks", *, score=None):
    """Exhaustive (lowest ``score``, default H) on a task-sharded bank: each device scores its
    own tasks (same answer as :func:`inference.exhaustive`)."""

    def local(bits, stats, params, x, weights):
        return inference.task_values(network, params, _local_bank(bank, bits, stats), x,
                                     weights, score)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(axis), P(), P(), P()),
                       out_specs=P(axis), check_vma=False)
    return inference.lowest_learned(bank, fn(bank.bits, bank.batch_stats, params, x, weights))
