"""Per-task mask training (scenario GG) and evaluation with a task's own mask (SPEC 1.4).

Only the current task's scores (and its BatchNorm running statistics) change; the weights are
frozen and passed to every jitted function as an argument, never closed over, so one compilation
serves every task. A task's optimiser state is created by :meth:`Trainer.init_task` and dropped
with its :class:`~supsup_jax.steps.TaskState` when the task ends (SPEC 1.4 step 8).

The step loop is :class:`supsup_jax.loop.StepLoop` (chunks of ``chunk_size`` steps, each one
jitted ``lax.scan``; no host syncs inside a chunk). Per-task state is stacked on a leading task
axis, and :meth:`Trainer.evaluate_bank` evaluates many tasks of a mask bank in one call
(``jax.vmap`` over that axis; ``lax.map`` on CPU). The pure pieces (optimisers, loss,
preprocessing, data check) live in :mod:`supsup_jax.steps` and are re-exported here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from supsup_jax import evaluate as evaluate_lib
from supsup_jax import masking, sharding
from supsup_jax.data.iterator import BatchIterator
from supsup_jax.loop import StepLoop, check_finite, default_step_loop
from supsup_jax.models.network import Network
from supsup_jax.steps import (
    Preprocess,
    TaskState,
    check_data,
    cross_entropy,
    make_optimizer,
    make_preprocess,
    stack_tasks,
    take_task,
    update_running_mean,
)

__all__ = [
    "Preprocess",
    "TaskState",
    "Trainer",
    "check_data",
    "cross_entropy",
    "make_optimizer",
    "make_preprocess",
    "stack_tasks",
    "take_task",
    "update_running_mean",
]

Params = Any


class Trainer:
    """Compiled mask training and evaluation for one network, mask rule and optimiser.

    Every jitted routine takes the frozen ``params`` as an argument and keeps the shapes of its
    inputs from task to task, so learning task ``t + 1`` reuses what task ``t`` compiled.

    Args:
      network: the model as a :class:`~supsup_jax.models.Network`.
      mask_fn: ``{path: scores} -> {path: mask}``, from :func:`masking.make_mask_fn`.
      optimizer: an optax transformation of the scores (a fresh state per task).
      preprocess: from :func:`make_preprocess`.
      is_masked: which parameter leaves are masked (kernels by default).
      chunk_size: optimiser steps per jitted ``lax.scan`` call.
      eval_batch_size: examples per evaluation batch.
      step_loop: ``"scan"`` runs each chunk as one jitted ``lax.scan``; ``"python"`` dispatches
        one jitted step per optimiser step (asynchronously: still no host sync inside a chunk);
        ``"auto"`` picks ``"python"`` for convolutional networks on CPU, ``"scan"`` otherwise.
      data_parallel: shard each batch over all devices (``sharding.data_parallel_train_step``);
        ``None`` does so whenever there is more than one device. Multi-process runs always do.
    """

    def __init__(
        self,
        network: Network,
        mask_fn: masking.MaskFn,
        optimizer: optax.GradientTransformation,
        preprocess: Preprocess,
        *,
        is_masked: masking.PathFilter = masking.default_mask_filter,
        chunk_size: int = 100,
        eval_batch_size: int = 1000,
        step_loop: str = "auto",
        data_parallel: bool | None = None,
    ):
        self.network = network
        self.mask_fn = mask_fn
        self.optimizer = optimizer
        self.preprocess = preprocess
        self.is_masked = is_masked
        self.chunk_size = chunk_size
        self.eval_batch_size = eval_batch_size
        self.data_parallel = data_parallel
        self.weights = masking.masked_leaves(network.params, is_masked)
        self.step_loop = default_step_loop(self.weights, step_loop)
        # XLA:CPU runs a batch of per-task products no faster than one task after another (and
        # convolutions slower), so on CPU tasks are evaluated in sequence (benchmarks/README.md).
        self.tasks_in_sequence = jax.default_backend() == "cpu"
        self.loop = StepLoop(self.train_step, chunk_size=chunk_size, step_loop=self.step_loop)
        self._dp_mesh = self._dp_step = None
        self._evaluate = jax.jit(self._accuracy)
        self._evaluate_tasks = jax.jit(self._task_accuracies)
        self._evaluate_bank = jax.jit(self._bank_accuracies)

    # ----------------------------------------------------------------------------- training
    def logits(self, params, masks, batch_stats, x, train: bool = False):
        """``f(x; W * M)`` for float inputs ``x``; returns ``(logits, new_batch_stats)``."""
        return self.network.apply(masking.mask_params(params, masks), batch_stats, x, train)

    def loss(self, scores, params, batch_stats, x, labels):
        """Cross-entropy of ``f(x; W * mask(scores))`` and the updated BN statistics."""
        logits, new_stats = self.logits(params, self.mask_fn(scores), batch_stats, x, train=True)
        loss = cross_entropy(logits, labels)
        correct = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return loss, (new_stats, correct)

    def train_step(self, params, state: TaskState, images, labels, key):
        """One optimiser step on the scores (pure; ``images`` uint8 ``(B, *input_shape)``)."""
        x = self.preprocess(images, key, True)
        (loss, (stats, acc)), grads = jax.value_and_grad(self.loss, has_aux=True)(
            state.scores, params, state.batch_stats, x, labels)
        # optax's Adam bias correction (`decay ** count`) relies on implicit promotion; scope it
        # so that callers (and our tests) may run with strict dtype promotion everywhere else.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = self.optimizer.update(grads, state.opt_state, state.scores)
        scores = optax.apply_updates(state.scores, updates)
        return TaskState(scores, stats, opt_state), {"loss": loss, "accuracy": acc}

    def train_batches(self, state: TaskState, images, labels, key: jax.Array, start_step: int):
        """Train on given batches: uint8 ``images`` ``[c, B, *input_shape]``, ``labels``
        ``[c, B]``; step ``start_step + i`` uses ``fold_in(key, start_step + i)``.

        Returns ``(state, metrics)`` with the chunk's mean loss and accuracy (device scalars).

        Raises:
          TrainingDivergedError: the loss or the new state is not finite (one host sync).
        """
        state = jax.tree.map(jnp.copy, state)  # run_chunk donates it; the caller keeps theirs
        state, metrics = self.loop.run_chunk(self.network.params, state, jnp.asarray(images),
                                             jnp.asarray(labels, jnp.int32), key, start_step)
        check_finite(state, metrics, start_step, start_step + len(images))
        return state, metrics

    def init_task(self, key: jax.Array, batch_stats: Params | None = None,
                  scores: Mapping[str, jax.Array] | None = None) -> TaskState:
        """A fresh task: Kaiming-uniform scores from ``key`` (or the given ``scores``, e.g. the
        Transfer running mean), the network's initial BN statistics and a new optimiser state."""
        if scores is None:
            scores = masking.init_scores(key, self.network.params, self.is_masked)
        else:
            masking.check_scores(self.weights, scores)
            scores = {p: jnp.array(s) for p, s in scores.items()}
        stats = self.network.batch_stats if batch_stats is None else batch_stats
        # Copies: the train step donates its state, and the caller keeps these buffers.
        stats = jax.tree.map(jnp.copy, stats)
        return TaskState(scores, stats, self.optimizer.init(scores))

    def train_task(
        self,
        state: TaskState,
        images,
        labels,
        key: jax.Array,
        num_steps: int,
        batch_size: int,
        *,
        start_step: int = 0,
        on_chunk: Callable[[int, dict], None] | None = None,
    ) -> TaskState:
        """Train one task's scores for ``num_steps`` optimiser steps from ``start_step``.

        In a multi-process run every process passes only its own shard of the examples.

        Batches are drawn by a :class:`BatchIterator` (reshuffled per epoch from ``key``, last
        partial batch dropped) from ``images`` (uint8 ``(N, *input_shape)``, in memory or a lazy
        source with ``__getitem__(indices)``) and ``labels`` (int ``(N,)``).

        Args:
          on_chunk: called after each chunk with ``(steps_done, metrics)`` for progress reporting
            (outside jit; the metrics are device scalars, so reading them syncs).
        """
        params = self.network.params
        self._check_data(images, labels)
        masking.check_scores(self.weights, state.scores)
        data_parallel = (jax.device_count() > 1 if self.data_parallel is None
                         else self.data_parallel)
        if data_parallel or jax.process_count() > 1:
            return self._train_data_parallel(state, images, labels, key, num_steps,
                                             batch_size, start_step, params, on_chunk)
        return self.loop.run(params, state, images, labels, key, num_steps, batch_size,
                              start_step=start_step, on_chunk=on_chunk)

    def _train_data_parallel(self, state, images, labels, key, num_steps, batch_size,
                             start_step, params, on_chunk):
        # Data parallel over every device of every process (supsup_jax.sharding). With several
        # processes (supsup_jax.distributed), `images`/`labels` are this process's own shard of
        # the examples, and it draws batch_size / P of them per step from its own shuffle; the
        # global batch is their concatenation. One process draws exactly the batches of the
        # 1-device loop.
        nproc, pid = jax.process_count(), jax.process_index()
        if batch_size % jax.device_count():
            raise ValueError(f"batch size {batch_size} is not a multiple of the "
                             f"{jax.device_count()} devices of this multi-process run")
        mesh = sharding.make_mesh((jax.device_count(),), ("data",))
        if self._dp_mesh != mesh:
            self._dp_mesh, self._dp_step = mesh, sharding.data_parallel_train_step(self, mesh)
        replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        to_global = lambda tree, s: jax.tree.map(  # noqa: E731
            lambda a: jax.make_array_from_process_local_data(s, np.asarray(a)), tree)
        iterator = BatchIterator(len(labels), batch_size // nproc,
                                 jax.random.fold_in(key, pid) if nproc > 1 else key)
        gparams, gstate = to_global(params, replicated), to_global(state, replicated)
        labels = np.asarray(labels)
        for step in range(start_step, start_step + num_steps):
            idx = iterator.indices(step)
            x = to_global(np.asarray(images[idx]), rows)
            y = to_global(labels[idx].astype(np.int32), rows)
            kd = to_global(jax.random.key_data(jax.random.fold_in(key, step)), replicated)
            gstate, metrics = self._dp_step(gparams, gstate, x, y, kd)
            done = step + 1 - start_step
            if done % self.chunk_size == 0 or done == num_steps:
                check_finite(gstate, metrics, max(start_step, step + 1 - self.chunk_size),
                             step + 1)
            if on_chunk is not None and done % self.chunk_size == 0:
                on_chunk(step + 1, metrics)
        # Every process holds the same replicated state: continue with the local copy.
        return jax.tree.map(lambda a: a.addressable_data(0), gstate)

    def masks(self, scores: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """The finished binary masks of a task, as bool arrays (1 byte per weight).

        Raises:
          ValueError: a score is NaN or infinite (the mask would be meaningless).
        """
        if not any(isinstance(s, jax.core.Tracer) for s in scores.values()):
            masking.check_scores(self.weights, scores)
        return {p: m.astype(bool) for p, m in self.mask_fn(scores).items()}

    # --------------------------------------------------------------------------- evaluation
    def _accuracy(self, params, masks, batch_stats, images, labels):
        masks = {p: m.astype(jnp.float32) for p, m in masks.items()}
        effective = masking.mask_params(params, masks)

        def logits(x):
            return self.network.apply(effective, batch_stats, self.preprocess(x, None, False),
                                      False)[0]

        return evaluate_lib.accuracy(logits, images, labels, self.eval_batch_size)

    def _over_tasks(self, fn, *xs):
        # fn over the leading task axis of xs: one task after another on CPU, else one vmap.
        if self.tasks_in_sequence:
            return jax.lax.map(lambda a: fn(*a), xs)
        return jax.vmap(fn)(*xs)

    def _task_accuracies(self, params, masks, batch_stats, images, labels):
        return self._over_tasks(functools.partial(self._accuracy, params), masks, batch_stats,
                                images, labels)

    def _bank_accuracies(self, params, bank, tasks, images, labels):
        def one(t, x, y):
            stats = bank.task_batch_stats(t) if self.network.has_bn else self.network.batch_stats
            return self._accuracy(params, bank.task_masks(t), stats, x, y)

        return self._over_tasks(one, tasks, images, labels)

    def evaluate(self, masks, batch_stats, images, labels):
        """GG accuracy of one task: argmax over all outputs of ``f(x; W * M)`` against labels.

        Args:
          masks: ``{path: [...]}`` the task's mask (bool or float).
          batch_stats: the task's BN running statistics.
          images: uint8 ``(N, *input_shape)``; labels: int ``(N,)``.

        Returns:
          A float32 scalar.
        """
        params = self.network.params
        self._check_data(images, labels)
        self._check_masks(masks, stacked=False)
        return self._evaluate(params, masks, batch_stats, jnp.asarray(images),
                              jnp.asarray(labels, jnp.int32))

    def evaluate_tasks(self, masks, batch_stats, images, labels):
        """GG accuracy of every task in one call, ``jax.vmap`` over the leading task axis
        (``lax.map`` on CPU, where that is faster).

        Args:
          masks: ``{path: [T, ...]}`` stacked masks.
          batch_stats: stacked ``[T, ...]`` BN statistics (``{}`` without BN).
          images: uint8 ``(T, N, *input_shape)``, each task's test set (pad with anything).
          labels: int ``(T, N)``, ``-1`` marking padding.

        Returns:
          float32 ``(T,)`` accuracies.
        """
        params = self.network.params
        images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
        self._check_masks(masks, stacked=True)
        num = next(iter(masks.values())).shape[0]
        if images.shape[0] != num or labels.shape[0] != num:
            raise ValueError(f"{num} tasks of masks but images/labels for "
                             f"{images.shape[0]}/{labels.shape[0]} tasks")
        for t in range(num):
            self._check_data(images[t], labels[t], padded=True)
        return self._evaluate_tasks(params, masks, batch_stats, images, labels)

    def evaluate_bank(self, bank, tasks, images, labels):
        """GG accuracy of several tasks of a mask bank, each with its own mask and BN statistics,
        in one call: ``jax.vmap`` over the tasks (``lax.map`` on CPU). The masks are unpacked
        inside the call, so memory holds ``len(tasks)`` of them (one with ``lax.map``).

        Args:
          bank: a :class:`~supsup_jax.bank.MaskBank` of this network's masked weights.
          tasks: int ``(G,)`` learned slots (repeats allowed).
          images: uint8 ``(G, N, *input_shape)``, task ``tasks[g]``'s test set at ``g``.
          labels: int ``(G, N)``, ``-1`` marking padding
            (:func:`supsup_jax.evaluate.stack_test_sets`).

        Returns:
          float32 ``(G,)`` accuracies.
        """
        params = self.network.params
        tasks, images, labels = np.asarray(tasks), np.asarray(images), np.asarray(labels)
        if set(bank.bits) != set(self.weights):
            raise ValueError(f"the bank holds masks of {sorted(bank.bits)}; the masked weights "
                             f"are {sorted(self.weights)}")
        learned = int(bank.num_tasks)
        if tasks.ndim != 1 or not np.issubdtype(tasks.dtype, np.integer) or (
                tasks.size and (tasks.min() < 0 or tasks.max() >= learned)):
            raise IndexError(f"tasks {tasks.tolist()} must be a 1-D list of the {learned} "
                             "learned slots")
        if images.shape[0] != tasks.size or labels.shape[0] != tasks.size:
            raise ValueError(f"{tasks.size} tasks but images/labels for "
                             f"{images.shape[0]}/{labels.shape[0]} tasks")
        for g in range(tasks.size):
            self._check_data(images[g], labels[g], padded=True)
        return self._evaluate_bank(params, bank, jnp.asarray(tasks, jnp.int32),
                                   jnp.asarray(images), jnp.asarray(labels, jnp.int32))

    # ---------------------------------------------------------------------------- checking
    def _check_data(self, images, labels, padded: bool = False) -> None:
        check_data(self.network, images, labels, padded)

    def _check_masks(self, masks, *, stacked: bool) -> None:
        masking.check_masks({p: w.shape for p, w in self.weights.items()}, masks,
                            stacked=stacked)
