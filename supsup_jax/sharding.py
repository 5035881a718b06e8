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
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from supsup_jax import bank as bank_lib
from supsup_jax import inference, masking
from supsup_jax import train as train_lib

__all__ = [
    "data_parallel_train_step",
    "make_mesh",
    "shard_bank",
    "sharded_alpha_gradient",
    "sharded_binary",
    "sharded_exhaustive",
    "sharded_one_shot",
]


def make_mesh(shape: Sequence[int], names: Sequence[str]) -> jax.sharding.Mesh:
    """``jax.make_mesh`` with explicit axis types (Auto: shard_map chooses per call)."""
    return jax.make_mesh(tuple(shape), tuple(names), axis_types=(AxisType.Auto,) * len(shape))


def data_parallel_train_step(trainer: train_lib.Trainer, mesh, axis: str = "data"):
    """A jitted ``step(params, state, images, labels, key_data) -> (state, metrics)`` whose batch
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
        return train_lib.TaskState(scores, stats, opt_state), metrics

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


def sharded_alpha_gradient(network, params, bank, alpha, x, weights, objective, mesh,
                           axis: str = "tasks"):
    """``(objective, d objective / d alpha)`` with the bank's task axis sharded over ``axis``.

    Equals :func:`inference.alpha_gradient`. Per device: the partial superposition of its tasks,
    one ``psum`` of ``P`` floats, the forward/backward pass, and the contraction of its tasks.
    """
    shapes = bank.shapes

    def local(bits, alpha, params, x, weights):
        partial = {p: bank_lib._superpose_layer(alpha, bits[p], s) for p, s in shapes}
        sup = jax.lax.psum(partial, axis)

        def f(masks):
            logits, _ = network.apply(masking.mask_params(params, masks), network.batch_stats,
                                      x, bool(jax.tree.leaves(network.batch_stats)))
            return objective(logits, weights)

        value, ct = jax.value_and_grad(f)(sup)
        g = sum(bank_lib._contract_layer(bits[p], ct[p]) for p, _ in shapes)
        return value, g

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(axis), P(), P(), P()),
                       out_specs=(P(), P(axis)), check_vma=False)
    return fn(bank.bits, alpha, params, x, weights)


def sharded_one_shot(network, params, bank, x, weights, objective, mesh, axis="tasks"):
    """One-Shot on a task-sharded bank (same answer as :func:`inference.one_shot`)."""
    _, g = sharded_alpha_gradient(network, params, bank, inference.uniform_alpha(bank), x,
                                  weights, objective, mesh, axis)
    return jnp.argmin(jnp.where(bank.learned(), g, jnp.inf)).astype(jnp.int32)


def sharded_binary(network, params, bank, x, weights, objective, mesh, axis="tasks"):
    """Binary on a task-sharded bank (same answer as :func:`inference.binary`)."""

    def body(alive):
        _, g = sharded_alpha_gradient(network, params, bank, inference.uniform_alpha(bank, alive),
                                      x, weights, objective, mesh, axis)
        return inference.halve(alive, g)

    alive = jax.lax.while_loop(lambda a: jnp.sum(a) > 1, body, bank.learned())
    return jnp.argmax(alive).astype(jnp.int32)


def sharded_exhaustive(network, params, bank, x, weights, mesh, axis="tasks"):
    """Exhaustive (lowest H) on a task-sharded bank: each device scores its own tasks."""
    shapes = bank.shapes
    has_bn = bool(jax.tree.leaves(network.batch_stats))

    def local(bits, stats, params, x, weights):
        def value(i):
            masks = {p: bank_lib._unpack_row(bits[p][i], s).astype(jnp.float32)
                     for p, s in shapes}
            task_stats = jax.tree.map(lambda a: a[i], stats) if has_bn else network.batch_stats
            logits, _ = network.apply(masking.mask_params(params, masks), task_stats, x, False)
            return inference.entropy(logits, weights)

        return jax.lax.map(value, jnp.arange(next(iter(bits.values())).shape[0]))

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(axis), P(), P(), P()),
                       out_specs=P(axis), check_vma=False)
    values = fn(bank.bits, bank.batch_stats, params, x, weights)
    return jnp.argmin(jnp.where(bank.learned(), values, jnp.inf)).astype(jnp.int32)
