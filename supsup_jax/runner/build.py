"""From a config to what a run computes with: the task stream, the network and the trainer.

Every field read here is declared, with its default, in ``experiments/configs/base.py``.
"""

from __future__ import annotations

import importlib

import jax
import numpy as np

from supsup_jax import baselines, masking, models
from supsup_jax import train as train_lib
from supsup_jax.data import (
    DATASET_STATS,
    Dataset,
    LazySubset,
    PermutedStream,
    RotatedStream,
    SplitStream,
    load_dataset,
    split_cifar100,
    split_imagenet,
    split_mnist,
)
from supsup_jax.errors import ConfigError
from supsup_jax.runner.keys import Stream, key

__all__ = [
    "SCENARIOS",
    "build_network",
    "build_trainer",
    "check_method",
    "eval_points",
    "input_statistics",
    "make_stream",
    "steps_per_task",
    "test_data",
    "test_sets",
]

SCENARIOS = ("GG", "GNu", "GNs", "NNs")
# Models whose output width is called num_outputs (the others: num_classes).
_NUM_OUTPUTS_MODELS = ("fc1024", "lenet300_100", "bnnet")


def factory(config, field: str):
    """The function a ``"module:function"`` config field names."""
    module, _, name = config[field].partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"config field {field}={config[field]!r}: cannot import it ({e})"
                          ) from None


def make_stream(config):
    """The task stream: MNIST-family streams take whole images, the rest tfds-backed sources;
    ``config.data_factory`` / ``stream_factory`` give the user's own (README)."""
    if config.stream_factory is not None:
        stream = factory(config, "stream_factory")(config)
        missing = [a for a in ("task", "num_tasks", "mean", "std", "augment", "dataset")
                   if not hasattr(stream, a)]
        if missing:
            raise ConfigError(f"stream_factory {config.stream_factory!r} returned a "
                              f"{type(stream).__name__} without {missing}")
        if stream.num_tasks != config.num_tasks:
            raise ConfigError(f"the stream of {config.stream_factory!r} has {stream.num_tasks} "
                              f"tasks, the config asks for {config.num_tasks}")
        return stream
    if config.data_factory is not None:
        ds = factory(config, "data_factory")(config)
        if not isinstance(ds, Dataset):
            raise ConfigError(f"data_factory {config.data_factory!r} returned a "
                              f"{type(ds).__name__}, not a supsup_jax.data.Dataset")
        ds = ds if ds.source else ds._replace(source=f"data_factory {config.data_factory}")
    else:
        ds = load_dataset(config.dataset, config.data_dir)
    ntr, nte = config.max_train_examples, config.max_test_examples
    if ntr > 0 or nte > 0:
        # Lazy images stay lazy (a LazySubset), as in the full-size run.
        cut = lambda a, n: a if n <= 0 else (  # noqa: E731
            a[:n] if isinstance(a, np.ndarray) else LazySubset(a, np.arange(min(n, len(a)))))
        ds = ds._replace(train_images=cut(ds.train_images, ntr),
                         train_labels=cut(ds.train_labels, ntr),
                         test_images=cut(ds.test_images, nte),
                         test_labels=cut(ds.test_labels, nte))
    if jax.process_count() > 1:
        # Each process keeps only its shard of the training examples (rows p::P); every process
        # evaluates on the whole test set.
        p, n = jax.process_index(), jax.process_count()
        rows = np.arange(p, len(ds.train_labels), n)
        images = (ds.train_images[rows] if isinstance(ds.train_images, np.ndarray)
                  else LazySubset(ds.train_images, rows))  # ImageNet: decode only this shard
        ds = ds._replace(train_images=images, train_labels=ds.train_labels[rows])
    kind = config.stream
    if kind == "permuted":
        stream = PermutedStream(ds, config.num_tasks, seed=config.seed)
    elif kind == "rotated":
        stream = RotatedStream(ds, config.num_tasks, degrees_per_task=config.degrees_per_task,
                               interpolation=config.interpolation)
    elif kind == "split":
        stream = SplitStream(ds, config.num_tasks, config.classes_per_task,
                             seed=config.split_seed, relabel=config.relabel)
    elif kind == "split_mnist":
        stream = split_mnist(ds, relabel=config.relabel)
    elif kind == "split_cifar100":
        stream = split_cifar100(ds, seed=config.seed)
    elif kind == "split_imagenet":
        stream = split_imagenet(ds, seed=1)
    else:
        raise ConfigError(f"unknown stream {kind!r}; choose permuted, rotated, split, "
                         "split_mnist, split_cifar100 or split_imagenet")
    if stream.num_tasks != config.num_tasks:
        raise ConfigError(f"the {config.stream} stream has {stream.num_tasks} tasks, the config "
                         f"asks for {config.num_tasks}")
    return stream


def check_method(config) -> None:
    """Raise unless ``config.method`` runs in ``config.scenario`` with these options."""
    if config.scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {config.scenario!r}; choose one of {SCENARIOS}")
    method = config.method
    if jax.process_count() > 1 and (method != "supsup" or config.scenario == "NNs"):
        # Each process holds 1/P of the training data (make_stream); only SupSup's trainer
        # reduces gradients across processes, so any other learner would diverge per process.
        what = "scenario NNs" if method == "supsup" else f"method {method!r}"
        raise ConfigError(
            f"{what} trains on one process only: this run has {jax.process_count()} processes "
            "(jax.distributed), and only SupSup in GG/GNu/GNs is data parallel across them; "
            "run it as a single process (it uses one device)")
    if method == "hopsupsup":
        if config.model != "bnnet" or config.stream != "split_mnist":
            raise ConfigError("hopsupsup runs BNNet (model 'bnnet') on the split_mnist stream")
        return
    if method not in baselines.METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of "
                         f"{(*baselines.METHODS, 'hopsupsup')}")
    if method == "supsup":
        if config.rand_w:
            raise ConfigError("rand_w is a baseline variant; SupSup's weights are always random")
        return
    if config.transfer:
        raise ConfigError(f"transfer (SupSup Transfer) does not apply to method {method!r}")
    if config.scenario == "GNu" and method == "batche":
        if config.inference.method not in ("one_shot", "shortlist") \
                or config.inference.per_example:
            raise ConfigError("BatchE infers tasks per batch with One-Shot (paper Fig. 5 right) "
                             f"or the shortlist only, not {config.inference.method!r}")
        if config.inference.layers:
            raise ConfigError("inference.layers selects masked layers; BatchE's gradient is "
                              "over its rank-one factors (leave it ())")
    elif config.scenario != "GG":
        raise ConfigError(f"method {method!r} runs in scenario GG (task given)"
                         + (" or GNu with One-Shot" if method == "batche" else "")
                         + f", not {config.scenario}")


def build_network(config, stream) -> models.Network:
    """``config.model`` with the stream's input shape, frozen weights from ``config.seed``."""
    kwargs = dict(config.model_kwargs)
    kwargs.setdefault("seed", config.seed)
    kwargs["input_shape"] = tuple(stream.task(0).train_images.shape[1:])
    kwargs["weight_init"] = config.weight_init
    out_key = "num_outputs" if config.model in _NUM_OUTPUTS_MODELS else "num_classes"
    kwargs[out_key] = config.num_outputs
    return models.get_model(config.model, **kwargs)


def input_statistics(normalization: str, stream, channels: int = 1):
    """``(mean, std)`` per channel for ``normalization``: ``"dataset"`` (the stream's own) or
    ``"mnist"``, MNIST's statistics whatever the data, as the official pipeline uses for its
    MNIST-family runs (RESULTS.md measures what this choice does to task inference)."""
    if normalization == "mnist":
        mean, std = DATASET_STATS["mnist"]
        return mean * channels, std * channels
    if normalization == "dataset":
        return stream.mean, stream.std
    raise ConfigError(f"unknown normalization {normalization!r}; choose 'mnist' or 'dataset'")


def steps_per_task(config, stream) -> int:
    """``config.steps``, or ``config.epochs`` epochs of the first task's training set."""
    if config.steps > 0:
        return config.steps
    n = len(stream.task(0).train_labels)
    return config.epochs * max(n // config.batch_size, 1)


def build_trainer(config, stream, network, **trainer_kwargs):
    """SupSup's :class:`~supsup_jax.train.Trainer` or, for a baseline, its
    :class:`~supsup_jax.baselines.MethodTrainer` (``trainer_kwargs`` go to either)."""
    input_shape = network.input_shape
    mean, std = input_statistics(config.normalization, stream, input_shape[-1])
    steps = steps_per_task(config, stream)
    steps_per_epoch = max(len(stream.task(0).train_labels) // config.batch_size, 1)

    def make_optimizer(lr):
        return train_lib.make_optimizer(
            config.optimizer, lr, weight_decay=config.weight_decay,
            momentum=config.momentum, schedule=config.schedule, steps_per_epoch=steps_per_epoch,
            epochs=-(-steps // steps_per_epoch), warmup_epochs=config.warmup_epochs)

    preprocess = train_lib.make_preprocess(mean, std, stream.augment)
    if config.method not in ("supsup", "hopsupsup"):
        method = baselines.make_method(
            config.method, network, config.num_tasks, rand_w=config.rand_w,
            psp_context=config.psp_context, key=key(config, Stream.METHOD_SETUP))
        weight_lr = config.lr if config.weight_lr is None else config.weight_lr
        return baselines.MethodTrainer(method, make_optimizer,
                                       {"lr": config.lr, "weight_lr": weight_lr}, preprocess,
                                       chunk_size=config.chunk_size, **trainer_kwargs)
    if config.mask_rule == "topk" and config.er_scale:
        weights = masking.masked_leaves(network.params)
        mask_fn = masking.make_mask_fn("topk", masking.er_densities(weights, config.er_scale))
    else:
        mask_fn = masking.make_mask_fn(config.mask_rule, config.density)
    return train_lib.Trainer(network, mask_fn, make_optimizer(config.lr), preprocess,
                             chunk_size=config.chunk_size, **trainer_kwargs)


def test_data(config, stream, i):
    """Task ``i``'s test images and labels, cut to ``config.max_eval_examples`` if set."""
    task = stream.task(i)
    cut = config.max_eval_examples
    x, y = task.test_images, task.test_labels
    x, y = (x[:cut], y[:cut]) if cut > 0 else (x, y)
    if not isinstance(x, np.ndarray):  # a lazy test set is decoded once per evaluation row
        x = np.asarray(x[np.arange(len(y))])
    return x, y


# Test sets kept between rows (the streams build a task's test set on demand).
TEST_CACHE = 64


def test_sets(config, stream):
    """``i -> test_data(config, stream, i)``, keeping the last :data:`TEST_CACHE` built."""
    cache: dict[int, tuple] = {}

    def test_set(i):
        if i not in cache:
            cache[i] = test_data(config, stream, i)
            if len(cache) > TEST_CACHE:
                cache.pop(next(iter(cache)))
        return cache[i]

    return test_set


def eval_points(config) -> set[int]:
    """Task counts after which every learned task is evaluated (all when ``eval_at`` is empty)."""
    pts = list(config.eval_at)
    return set(pts) | {config.num_tasks} if pts else set(range(1, config.num_tasks + 1))
