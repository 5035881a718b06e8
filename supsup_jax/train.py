"""Per-task mask training (scenario GG) and evaluation with a task's own mask (SPEC 1.4).

Only the current task's scores (and its BatchNorm running statistics) change; the weights are
frozen and passed to every jitted function as an argument, never closed over, so one compilation
serves every task. A task's optimiser state is created by :meth:`Trainer.init_task` and dropped
with its :class:`TaskState` when the task ends (SPEC 1.4 step 8).

The step loop runs on device: :meth:`Trainer.train_task` hands chunks of ``chunk_size`` steps to
one jitted ``lax.scan``; the host only slices index arrays between chunks (no callbacks, no host
syncs inside the loop).

Per-task state is stacked on a leading task axis (``{path: [T, ...]}`` masks and ``[T, ...]``
batch statistics), and :meth:`Trainer.evaluate_tasks` evaluates every learned task in one call
with ``jax.vmap`` over that axis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from supsup_jax import masking
from supsup_jax.data.iterator import BatchIterator
from supsup_jax.data.transforms import normalize, random_crop_flip, random_resized_crop_flip
from supsup_jax.models.network import Network

__all__ = [
    "TaskState",
    "Trainer",
    "cross_entropy",
    "make_optimizer",
    "make_preprocess",
    "stack_tasks",
    "take_task",
    "update_running_mean",
]

Params = Any


class TaskState(NamedTuple):
    """What changes while one task trains.

    Attributes:
      scores: ``{path: float[...]}`` real-valued scores, one per masked weight.
      batch_stats: this task's BatchNorm running statistics (``{}`` without BN).
      opt_state: the optimiser state of the scores; it never outlives the task.
    """

    scores: dict[str, jax.Array]
    batch_stats: Params
    opt_state: optax.OptState


def make_optimizer(
    name: str,
    learning_rate: float,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    schedule: str = "constant",
    steps_per_epoch: int | None = None,
    epochs: int | None = None,
    warmup_epochs: int = 0,
) -> optax.GradientTransformation:
    """The official code's optimisers, with PyTorch semantics (SPEC 1.4).

    * ``"rmsprop"``: PyTorch ``RMSprop`` defaults: ``alpha = 0.99``, ``eps = 1e-8`` added outside
      the square root, no momentum, no weight decay.
    * ``"adam"``: PyTorch ``Adam(weight_decay=wd)``, i.e. L2 added to the gradient before the
      moments (coupled, not AdamW).
    * ``"sgd"``: PyTorch ``SGD(momentum, weight_decay=wd)``, coupled L2, no dampening.

    ``schedule="cosine"`` is ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch, i.e.
    ``lr * (1 + cos(pi * e / epochs)) / 2`` during epoch ``e``, after ``warmup_epochs`` epochs of
    linear warm-up ``lr * (e + 1) / warmup_epochs`` (SplitImageNet); ``"constant"`` is the
    official ``--no-scheduler``.
    """
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if schedule == "constant":
        lr = learning_rate
    elif schedule == "cosine":
        if not steps_per_epoch or not epochs:
            raise ValueError("the cosine schedule needs steps_per_epoch and epochs")
        cos_epochs = epochs - warmup_epochs

        def lr(count):
            e = (count // steps_per_epoch).astype(jnp.float32)
            warm = learning_rate * (e + 1) / max(warmup_epochs, 1)
            cos = 0.5 * learning_rate * (1 + jnp.cos(jnp.pi * (e - warmup_epochs) / cos_epochs))
            return jnp.where(e < warmup_epochs, warm, cos)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose 'constant' or 'cosine'")

    if name == "rmsprop":
        return optax.rmsprop(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False)
    if name == "adam":
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum))
    raise ValueError(f"unknown optimizer {name!r}; choose 'rmsprop', 'adam' or 'sgd'")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over all outputs (s-neurons included); labels ``int[B]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


Preprocess = Callable[[jax.Array, jax.Array, bool], jax.Array]


def make_preprocess(mean, std, augment: str = "none") -> Preprocess:
    """``preprocess(images_uint8, key, train) -> float32``: augmentation (train only) and
    per-channel normalisation (SPEC 2.2). ``augment`` is ``"none"``, ``"cifar"`` (random crop
    with 4-pixel padding and horizontal flip) or ``"imagenet"`` (random resized crop and flip).
    """
    if augment not in ("none", "cifar", "imagenet"):
        raise ValueError(f"unknown augmentation {augment!r}; choose 'none', 'cifar' or 'imagenet'")
    mean, std = tuple(mean), tuple(std)

    def preprocess(images, key, train):
        if train and augment == "cifar":
            images = random_crop_flip(key, images, pad=4)
        elif train and augment == "imagenet":
            images = random_resized_crop_flip(key, images, size=images.shape[1])
        return normalize(images, mean, std)

    return preprocess


def update_running_mean(mean: Mapping[str, jax.Array] | None, count: int,
                        scores: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Running mean of the scores of the ``count`` tasks so far, updated with one more task.

    The Transfer variant (SPEC 1.8) initialises task ``t`` with the mean of the *scores* (not the
    masks) of tasks ``0..t-1``; keeping the running mean avoids storing old scores.
    """
    if mean is None or count == 0:
        return dict(scores)
    return {p: mean[p] + (scores[p] - mean[p]) / (count + 1) for p in scores}


def stack_tasks(trees: Iterable[Params]) -> Params:
    """Stack per-task pytrees on a new leading task axis."""
    trees = list(trees)
    if not trees:
        raise ValueError("cannot stack an empty list of tasks")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def take_task(stacked: Params, task: int) -> Params:
    """Task ``task``'s slice of a stacked pytree, with a range check."""
    leaves = jax.tree.leaves(stacked)
    num = leaves[0].shape[0] if leaves else 0
    if not 0 <= task < num:
        raise IndexError(f"task index {task} is outside the {num} learned tasks")
    return jax.tree.map(lambda x: x[task], stacked)


def check_data(network: Network, images, labels, padded: bool = False) -> None:
    """Raise a clear error unless ``images`` are uint8 ``(N, *network.input_shape)`` with ``N``
    integer labels in ``[0, num_outputs)`` (``-1`` allowed as padding when ``padded``)."""
    shape = tuple(images.shape[1:])
    if shape != network.input_shape:
        raise ValueError(f"images have example shape {shape}; the network expects "
                         f"{network.input_shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (normalised on device), got {images.dtype}")
    if len(labels) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(labels)} labels")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    lo = -1 if padded else 0
    if labels.size and (labels.min() < lo or labels.max() >= network.num_outputs):
        raise ValueError(f"labels span [{labels.min()}, {labels.max()}]; the network has "
                         f"{network.num_outputs} outputs")


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
        # XLA:CPU runs convolution gradients inside a while loop ~15x slower than at top level
        # (GEMResNet18: 0.75 s vs 0.05 s per step here) and a conv vmapped over per-task kernels
        # ~7x slower than a loop over tasks, while scanning an MLP saves the per-step dispatch
        # (FC 1024-1024: 13.6 ms vs 19 ms per step) and vmapping it is one batched matmul.
        self.conv_on_cpu = (any(w.ndim > 2 for w in self.weights.values())
                            and jax.default_backend() == "cpu")
        if step_loop == "auto":
            step_loop = "python" if self.conv_on_cpu else "scan"
        if step_loop not in ("scan", "python"):
            raise ValueError(f"step_loop must be 'auto', 'scan' or 'python', got {step_loop!r}")
        self.step_loop = step_loop
        self._train_chunk = jax.jit(self._train_chunk_impl, donate_argnums=(1,))
        self._train_indexed_step = jax.jit(self._indexed_step_impl, donate_argnums=(1,))
        self._gather = jax.jit(lambda images, labels, idx: (images[idx], labels[idx]))
        self._evaluate = jax.jit(self._accuracy)
        self._evaluate_tasks = jax.jit(
            jax.vmap(self._accuracy, in_axes=(None, 0, 0, 0, 0)))

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

    def _train_chunk_impl(self, params, state, images, labels, key, step0):
        def body(state, inputs):
            x, y, i = inputs
            return self.train_step(params, state, x, y, jax.random.fold_in(key, step0 + i))

        steps = jnp.arange(images.shape[0])
        state, metrics = jax.lax.scan(body, state, (images, labels, steps))
        return state, jax.tree.map(jnp.mean, metrics)

    def _indexed_step_impl(self, params, state, images, labels, key, step0, i):
        return self.train_step(params, state, images[i], labels[i],
                               jax.random.fold_in(key, step0 + i))

    def train_batches(self, state: TaskState, images, labels, key: jax.Array, start_step: int,
                      *, params: Params | None = None):
        """Train on given batches: uint8 ``images`` ``[c, B, *input_shape]``, ``labels``
        ``[c, B]``; step ``start_step + i`` uses ``fold_in(key, start_step + i)``.

        Returns ``(state, metrics)`` with the chunk's mean loss and accuracy (device scalars).
        """
        params = self.network.params if params is None else params
        return self._run_chunk(params, state, jnp.asarray(images), jnp.asarray(labels, jnp.int32),
                               key, start_step)

    def _run_chunk(self, params, state, images, labels, key, step0):
        if self.step_loop == "scan":
            return self._train_chunk(params, state, images, labels, key, step0)
        metrics = []
        for i in range(images.shape[0]):
            state, m = self._train_indexed_step(params, state, images, labels, key, step0, i)
            metrics.append(m)
        return state, jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *metrics)

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
        params: Params | None = None,
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
        params = self.network.params if params is None else params
        self._check_data(images, labels)
        masking.check_scores(self.weights, state.scores)
        data_parallel = (jax.device_count() > 1 if self.data_parallel is None
                         else self.data_parallel)
        if data_parallel or jax.process_count() > 1:
            return self._train_data_parallel(state, images, labels, key, num_steps,
                                             batch_size, start_step, params, on_chunk)
        iterator = BatchIterator(len(labels), batch_size, key)
        in_memory = isinstance(images, np.ndarray | jax.Array)
        if in_memory:
            images_dev, labels_dev = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
        step = start_step
        end = start_step + num_steps
        while step < end:
            count = min(self.chunk_size, end - step)
            idx = iterator.index_chunk(step, count)
            if in_memory:
                x, y = self._gather(images_dev, labels_dev, jnp.asarray(idx))
            else:
                flat = idx.reshape(-1)
                x = np.asarray(images[flat]).reshape(count, batch_size, *images.shape[1:])
                y = np.asarray(labels)[flat].reshape(count, batch_size).astype(np.int32)
            state, metrics = self._run_chunk(params, state, x, y, key, step)
            step += count
            if on_chunk is not None:
                on_chunk(step, metrics)
        return state

    def _train_data_parallel(self, state, images, labels, key, num_steps, batch_size,
                             start_step, params, on_chunk):
        # Data parallel over every device of every process (supsup_jax.sharding). With several
        # processes (supsup_jax.distributed), `images`/`labels` are this process's own shard of
        # the examples, and it draws batch_size / P of them per step from its own shuffle; the
        # global batch is their concatenation. One process draws exactly the batches of the
        # 1-device loop.
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        from supsup_jax import sharding

        nproc, pid = jax.process_count(), jax.process_index()
        if batch_size % jax.device_count():
            raise ValueError(f"batch size {batch_size} is not a multiple of the "
                             f"{jax.device_count()} devices of this multi-process run")
        mesh = sharding.make_mesh((jax.device_count(),), ("data",))
        if getattr(self, "_dp_mesh", None) != mesh:
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
            if on_chunk is not None and (step + 1 - start_step) % self.chunk_size == 0:
                on_chunk(step + 1, metrics)
        # Every process holds the same replicated state: continue with the local copy.
        return jax.tree.map(lambda a: a.addressable_data(0), gstate)

    def masks(self, scores: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """The finished binary masks of a task, as bool arrays (1 byte per weight)."""
        return {p: m.astype(bool) for p, m in self.mask_fn(scores).items()}

    # --------------------------------------------------------------------------- evaluation
    def _accuracy(self, params, masks, batch_stats, images, labels):
        # `labels < 0` marks padding, so tasks with test sets of different sizes stack.
        bs = self.eval_batch_size
        n = images.shape[0]
        pad = -n % bs
        images = jnp.pad(images, [(0, pad)] + [(0, 0)] * (images.ndim - 1))
        labels = jnp.pad(labels, (0, pad), constant_values=-1)
        images = images.reshape(-1, bs, *images.shape[1:])
        labels = labels.reshape(-1, bs)
        masks = {p: m.astype(jnp.float32) for p, m in masks.items()}
        effective = masking.mask_params(params, masks)

        def one(batch):
            x, y = batch
            logits, _ = self.network.apply(effective, batch_stats,
                                           self.preprocess(x, None, False), False)
            return jnp.sum((jnp.argmax(logits, -1) == y) & (y >= 0))

        correct = jax.lax.map(one, (images, labels)).sum()
        return correct / jnp.maximum(jnp.sum(labels >= 0), 1)

    def evaluate(self, masks, batch_stats, images, labels, *, params: Params | None = None):
        """GG accuracy of one task: argmax over all outputs of ``f(x; W * M)`` against labels.

        Args:
          masks: ``{path: [...]}`` the task's mask (bool or float).
          batch_stats: the task's BN running statistics.
          images: uint8 ``(N, *input_shape)``; labels: int ``(N,)``.

        Returns:
          A float32 scalar.
        """
        params = self.network.params if params is None else params
        self._check_data(images, labels)
        self._check_masks(masks, stacked=False)
        return self._evaluate(params, masks, batch_stats, jnp.asarray(images),
                              jnp.asarray(labels, jnp.int32))

    def evaluate_tasks(self, masks, batch_stats, images, labels, *, params: Params | None = None):
        """GG accuracy of every task in one call, ``jax.vmap`` over the leading task axis
        (a loop over tasks for convolutional networks on CPU, where that is faster).

        Args:
          masks: ``{path: [T, ...]}`` stacked masks.
          batch_stats: stacked ``[T, ...]`` BN statistics (``{}`` without BN).
          images: uint8 ``(T, N, *input_shape)``, each task's test set (pad with anything).
          labels: int ``(T, N)``, ``-1`` marking padding.

        Returns:
          float32 ``(T,)`` accuracies.
        """
        params = self.network.params if params is None else params
        images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
        self._check_masks(masks, stacked=True)
        num = next(iter(masks.values())).shape[0]
        if images.shape[0] != num or labels.shape[0] != num:
            raise ValueError(f"{num} tasks of masks but images/labels for "
                             f"{images.shape[0]}/{labels.shape[0]} tasks")
        for t in range(num):
            self._check_data(images[t], labels[t], padded=True)
        if self.conv_on_cpu:
            return jnp.stack([self._evaluate(params, *take_task((masks, batch_stats, images,
                                                                 labels), t))
                              for t in range(num)])
        return self._evaluate_tasks(params, masks, batch_stats, images, labels)

    # ---------------------------------------------------------------------------- checking
    def _check_data(self, images, labels, padded: bool = False) -> None:
        check_data(self.network, images, labels, padded)

    def _check_masks(self, masks, *, stacked: bool) -> None:
        if set(masks) != set(self.weights):
            raise ValueError(f"masks cover {sorted(masks)}; the masked weights are "
                             f"{sorted(self.weights)}")
        for p, w in self.weights.items():
            shape = tuple(masks[p].shape[1:] if stacked else masks[p].shape)
            if shape != tuple(w.shape):
                raise ValueError(f"mask {p!r} has shape {tuple(masks[p].shape)}, weight "
                                 f"{tuple(w.shape)}" + (" (plus the task axis)" if stacked else ""))

