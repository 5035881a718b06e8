"""Evaluation without task identity: scenarios GNu and GNs (SPEC 1.6, paper section 4.2).

A test set is shuffled (from a key) into batches of ``batch_size`` (128 in the paper). The task of
a batch is inferred from its first ``m`` images (``m=1``: one image decides; ``m=batch_size``:
"full batch"), or of every image on its own (``per_example=True``), then the batch is evaluated
with the inferred mask:

* GNu (unshared labels): a batch (or an image) whose inferred task is wrong scores 0;
* GNs (shared labels): the inferred mask is scored against the labels whatever the task.

The class is the arg-max over all outputs, superfluous neurons included. The last, partial batch
is padded and its padding never counts nor decides.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import bank as bank_lib
from supsup_jax import inference, sharding
from supsup_jax.errors import NoTaskSignalError
from supsup_jax.models.network import Network

__all__ = ["TaskInference", "evaluate_unknown_task", "raise_if_no_signal", "shuffled_batches"]


@dataclasses.dataclass(frozen=True)
class TaskInference:
    """How the task is inferred: method, objective, and how many images decide.

    Attributes:
      method: one of ``inference.METHODS`` (``"one_shot"``, ``"binary"``, ``"exhaustive"``,
        ``"gradient_descent"``, ``"shortlist"``).
      objective: ``"h"``, ``"g"`` or ``"s"`` (``inference.OBJECTIVES``), whose gradient ranks.
      num_real: real classes (the G and S objectives' real neurons).
      m: the first ``m`` images of a batch decide its task (ignored with ``per_example``).
      per_example: infer the task of every image on its own (``vmap``).
      shortlist: tasks the ``"shortlist"`` method re-ranks.
      rerank: the objective whose value under each mask alone ranks tasks for ``"shortlist"``
        and ``"exhaustive"``: ``"s"`` (measured best, RESULTS.md; needs superfluous neurons)
        or ``"h"``.
      layers: masked-layer paths whose alpha-gradient terms rank the tasks (``None``: all),
        for the gradient methods (``inference.alpha_gradient``'s ``layers``).
      mesh: a ``jax.sharding.Mesh`` with a ``"tasks"`` axis to spread the bank's task axis
        over (:func:`supsup_jax.sharding.shard_bank`; :func:`evaluate_unknown_task` places
        it): the gradient and Exhaustive's scores are then computed per device on its own
        tasks. ``None``: one device.
    """

    method: str = "one_shot"
    objective: str = "h"
    num_real: int = 10
    m: int = 1
    per_example: bool = False
    shortlist: int = 16
    rerank: str = "s"
    layers: tuple[str, ...] | None = None
    mesh: jax.sharding.Mesh | None = None

    def __post_init__(self):
        if self.method not in inference.METHODS:
            raise ValueError(f"unknown inference method {self.method!r}; choose one of "
                             f"{sorted(inference.METHODS)}")
        inference.make_objective(self.objective, self.num_real)
        if self.m < 1:
            raise ValueError(f"m (images that decide a batch) must be >= 1, got {self.m}")
        inference.check_shortlist_size(self.shortlist)
        if self.rerank not in inference.RERANKS:
            raise ValueError(f"rerank must be one of {inference.RERANKS} (G's value does not rank "
                             f"tasks), got {self.rerank!r}")
        inference.make_objective(self.rerank, self.num_real)
        if self.layers is not None:
            if not isinstance(self.layers, tuple) or not self.layers \
                    or not all(isinstance(p, str) for p in self.layers):
                raise ValueError(f"layers must be a non-empty tuple of masked-layer paths, or "
                                 f"None for all, got {self.layers!r}")
            if self.method == "exhaustive":
                raise ValueError("layers selects the gradient's terms; exhaustive uses no "
                                 "gradient")
        if self.mesh is not None and "tasks" not in self.mesh.shape:
            raise ValueError(f"mesh must have a 'tasks' axis, got axes {tuple(self.mesh.shape)}")

    def precompute(self, bank: bank_lib.MaskBank):
        """Per-bank work every batch shares: One-Shot's uniform superposition ``sum_i M_i / k``
        (the same for every batch) for One-Shot and the shortlist, ``None`` otherwise."""
        if self.method not in ("one_shot", "shortlist") or self.mesh is not None:
            return None  # sharded: each device superposes its own tasks
        return bank_lib.superpose(inference.uniform_alpha(bank), bank)

    def infer(self, network: Network, params, bank, x, valid, precomputed=None) -> jax.Array:
        """int32 task per batch (``[]``) or per example (``[B]``) for float inputs ``x``.

        ``precomputed``: :meth:`precompute` of this bank, computed once for many batches."""
        method = inference.METHODS[self.method]
        score = inference.make_objective(self.rerank, self.num_real)
        if self.method == "shortlist":
            method = functools.partial(method, size=self.shortlist, rerank=score)
        elif self.method == "exhaustive":
            method = functools.partial(method, score=score)
        if self.mesh is not None and self.method == "exhaustive":
            method = lambda net, p, b, x, w, objective: sharding.sharded_exhaustive(  # noqa: E731
                net, p, b, x, w, self.mesh, score=score)
        elif self.mesh is not None:
            method = functools.partial(method, gradient=sharding.sharded_gradient(
                self.mesh, layers=self.layers))
        elif self.layers is not None:
            method = functools.partial(method, gradient=functools.partial(
                inference.alpha_gradient, layers=self.layers))
        if precomputed is not None:
            method = functools.partial(method, superposed=precomputed)
        objective = inference.make_objective(self.objective, self.num_real)
        if self.per_example:
            one = lambda xi: method(network, params, bank, xi[None], jnp.ones((1,)), objective)
            return jax.vmap(one)(x)
        x, weights = inference.deciding_images(network, x, self.m, valid)
        return method(network, params, bank, x, weights, objective)


@functools.partial(jax.jit, static_argnames=("how", "preprocess", "shared_labels"))
def _evaluate_batches(network, bank, images, labels, true_task, *, how, preprocess,
                      shared_labels):
    params = network.params
    precomputed = how.precompute(bank)

    def one(batch):
        x_u8, y = batch
        valid = y >= 0
        x = preprocess(x_u8, None, False)
        task = how.infer(network, params, bank, x, valid, precomputed)
        logits_for = functools.partial(inference.task_logits, network, params, bank)
        if how.per_example:
            logits = jax.vmap(lambda t, xi: logits_for(t, xi[None])[0])(task, x)
            right_task = task == true_task
        else:
            logits = logits_for(task, x)
            right_task = jnp.broadcast_to(task == true_task, y.shape)
        no_task = jnp.broadcast_to(task == inference.NO_TASK, y.shape) & valid
        correct = (jnp.argmax(logits, -1) == y) & valid & ~no_task
        if not shared_labels:
            correct = correct & right_task
        return jnp.sum(correct), jnp.sum(right_task & valid), jnp.sum(no_task)

    correct, task_correct, no_task = jax.lax.map(one, (images, labels))
    return jnp.sum(correct), jnp.sum(task_correct), jnp.sum(no_task)


def evaluate_unknown_task(
    network: Network,
    bank: bank_lib.MaskBank,
    images: np.ndarray,
    labels: np.ndarray,
    true_task: int | None,
    how: TaskInference,
    preprocess,
    key: jax.Array,
    *,
    batch_size: int = 128,
    shared_labels: bool = False,
) -> dict[str, float]:
    """GNu (or GNs with ``shared_labels``) accuracy of one task's test set.

    Args:
      network: the model (its frozen weights ``network.params`` are a traced argument).
      bank: the learned masks (at least one task).
      images: uint8 ``(N, *input_shape)``; labels: int ``(N,)``; true_task: the slot that
        learned this data (for GNu scoring and the task-inference accuracy), or ``None`` when
        no slot corresponds to it (NNs: needs ``shared_labels``; no task accuracy).
      how: the inference method, objective and granularity.
      preprocess: ``preprocess(images_uint8, key, train) -> float32`` (``train.make_preprocess``).
      key: shuffles the test set into batches (the official test loaders shuffle).

    Returns:
      ``{"accuracy": ..., "task_accuracy": ...}``: correct predictions over N, and the fraction
      of images whose inferred task is ``true_task``.
    """
    _check(network, bank, images, labels, how, batch_size, true_task, shared_labels)
    if how.mesh is not None:
        bank = sharding.shard_bank(bank, how.mesh)
    n = len(labels)
    x, y = shuffled_batches(images, labels, key, batch_size)
    correct, task_correct, no_task = _evaluate_batches(
        network, bank, x, y,
        jnp.int32(-1 if true_task is None else true_task), how=how,
        preprocess=preprocess, shared_labels=shared_labels)
    raise_if_no_signal(int(no_task), n, how)
    out = {"accuracy": float(correct) / n}
    if true_task is not None:
        out["task_accuracy"] = float(task_correct) / n
    return out


def raise_if_no_signal(no_task: int, n: int, how: TaskInference) -> None:
    """Raise :class:`NoTaskSignalError` if task inference found no task for ``no_task`` of
    ``n`` test images (:data:`inference.NO_TASK`)."""
    if not no_task:
        return
    why = (" G's gradient flows only through superfluous output neurons: give the network more "
           f"outputs than the {how.num_real} real classes, or use the H objective"
           if how.objective == "g" else "")
    raise NoTaskSignalError(
        f"task inference ({how.method}, objective {how.objective!r}) got no information for "
        f"{no_task} of {n} test images: the gradient was equal for every learned task or not "
        f"finite.{why}")


def shuffled_batches(images, labels, key: jax.Array, batch_size: int):
    """The test set shuffled by ``key`` into ``(x [nb, B, ...] uint8, y [nb, B] int32)``; the
    last batch is padded with zero images and label -1 (which no accuracy counts)."""
    n = len(labels)
    order = np.asarray(jax.random.permutation(key, n))
    pad = -n % batch_size
    x = np.concatenate([np.asarray(images)[order], np.zeros((pad, *images.shape[1:]), np.uint8)])
    y = np.concatenate([np.asarray(labels, np.int32)[order], np.full(pad, -1, np.int32)])
    return (jnp.asarray(x.reshape(-1, batch_size, *images.shape[1:])),
            jnp.asarray(y.reshape(-1, batch_size)))


def _check(network, bank, images, labels, how, batch_size, true_task, shared_labels):
    num = int(bank.num_tasks)
    if num == 0:
        raise ValueError("the mask bank is empty: learn at least one task before inference")
    if tuple(images.shape[1:]) != network.input_shape:
        raise ValueError(f"images have example shape {tuple(images.shape[1:])}; the network "
                         f"expects {network.input_shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if len(labels) != len(images) or len(labels) == 0:
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if true_task is None:
        if not shared_labels:
            raise ValueError("GNu scoring needs the true task; pass shared_labels=True (GNs)")
    elif not 0 <= true_task < num:
        raise IndexError(f"true task {true_task} is outside the {num} learned tasks")
    if how.m > batch_size:
        raise ValueError(f"m={how.m} images cannot decide a batch of {batch_size}")
