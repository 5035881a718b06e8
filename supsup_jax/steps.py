"""The pure pieces of per-task training (SPEC 1.4): a task's state, the official optimisers,
the loss, preprocessing, the data check, and helpers over per-task state stacked on a task axis.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from supsup_jax.data.transforms import normalize, random_crop_flip, random_resized_crop_flip
from supsup_jax.models.network import Network

__all__ = [
    "OPTIMIZERS",
    "Preprocess",
    "SCHEDULES",
    "TaskState",
    "check_data",
    "cross_entropy",
    "make_optimizer",
    "make_preprocess",
    "stack_tasks",
    "take_task",
    "update_running_mean",
]

Params = Any
OPTIMIZERS = ("rmsprop", "adam", "sgd")
SCHEDULES = ("constant", "cosine")


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
    for name_, value, lowest in (("learning_rate", learning_rate, None),
                                 ("weight_decay", weight_decay, 0.0), ("momentum", momentum, 0.0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
                value) or (value <= 0 if lowest is None else value < lowest):
            allowed = "a finite number > 0" if lowest is None else "a finite number >= 0"
            raise ValueError(f"{name_} must be {allowed}, got {value!r}")
    if schedule == "constant":
        lr = learning_rate
    elif schedule == "cosine":
        if not steps_per_epoch or not epochs:
            raise ValueError("the cosine schedule needs steps_per_epoch and epochs")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        # A run no longer than its warm-up never reaches the cosine part (e.g. a smoke run).
        cos_epochs = max(epochs - warmup_epochs, 1)

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
