"""``train_and_evaluate(config, workdir)``: one continual-learning run, resumable, with results.

The task loop (SPEC 1.4): for each task, train its scores (GG protocol), store the finished mask
in the bit-packed bank, evaluate the learned tasks at the configured points (with the task given,
and inferred for GNu/GNs), then checkpoint. Re-running on the same workdir resumes after the last
finished task; every random choice derives from ``(config.seed, task)``, so a resumed run's
results equal an uninterrupted run's. Scenario NNs runs the unlabelled stream through
:class:`~supsup_jax.nns.NNsLearner` instead, and a baseline (``config.method``, one of
:data:`supsup_jax.baselines.METHODS`; ``"supsup"`` when the field is absent) runs the same task
loop over its own state (:func:`_run_tasks` with :class:`_BaselineTasks`).

The workdir receives ``results.json``, ``accuracy.csv``, PNG plots and ``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from supsup_jax import bank as bank_lib
from supsup_jax import (
    baselines,
    distributed,
    masking,
    metrics,
    models,
    nns,
    plots,
    results,
    scenarios,
)
from supsup_jax import checkpoint as ckpt_lib
from supsup_jax import train as train_lib
from supsup_jax.data import (
    DATASET_STATS,
    BatchIterator,
    LazySubset,
    PermutedStream,
    RotatedStream,
    SplitStream,
    load_dataset,
    split_cifar100,
    split_imagenet,
    split_mnist,
)

__all__ = ["SCENARIOS", "build", "input_statistics", "train_and_evaluate"]

SCENARIOS = ("GG", "GNu", "GNs", "NNs")
# Keys that do not change what a run computes, so a resumed run may differ in them.
_RUNTIME_KEYS = ("quiet", "data_dir", "tensorboard")


def _key(config, *path: int) -> jax.Array:
    k = jax.random.key(config.seed)
    for p in path:
        k = jax.random.fold_in(k, p)
    return k


# Streams of the MNIST family take the whole images; the rest come from the tfds-backed sources.
def _make_stream(config):
    ds = load_dataset(config.dataset, config.get("data_dir"))
    if config.get("max_train_examples", -1) > 0 or config.get("max_test_examples", -1) > 0:
        ntr = config.get("max_train_examples", -1)
        nte = config.get("max_test_examples", -1)
        cut = lambda a, n: a if n <= 0 else a[:n]
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
        return PermutedStream(ds, config.num_tasks, seed=config.seed)
    if kind == "rotated":
        return RotatedStream(ds, config.num_tasks, degrees_per_task=config.degrees_per_task)
    if kind == "split":
        return SplitStream(ds, config.num_tasks, config.classes_per_task,
                           seed=config.get("split_seed"), relabel=config.relabel)
    if kind == "split_mnist":
        return split_mnist(ds, relabel=config.relabel)
    if kind == "split_cifar100":
        return split_cifar100(ds, seed=config.seed)
    if kind == "split_imagenet":
        return split_imagenet(ds, seed=1)
    raise ValueError(f"unknown stream {kind!r}; choose permuted, rotated, split, split_mnist, "
                     "split_cifar100 or split_imagenet")


def _method(config) -> str:
    return config.get("method", "supsup")


def _check_method(config) -> None:
    method = _method(config)
    if method not in baselines.METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {baselines.METHODS}")
    if method == "supsup":
        if config.get("rand_w", False):
            raise ValueError("rand_w is a baseline variant; SupSup's weights are always random")
        return
    if config.transfer:
        raise ValueError(f"transfer (SupSup Transfer) does not apply to method {method!r}")
    if config.scenario == "GNu" and method == "batche":
        if config.inference.method != "one_shot" or config.inference.per_example:
            raise ValueError("BatchE infers tasks with One-Shot per batch only (paper Fig. 5 "
                             f"right), not {config.inference.method!r}")
    elif config.scenario != "GG":
        raise ValueError(f"method {method!r} runs in scenario GG (task given)"
                         + (" or GNu with One-Shot" if method == "batche" else "")
                         + f", not {config.scenario}")


def build(config):
    """The stream, network and trainer a config describes: ``(stream, trainer)``.

    The trainer is a :class:`~supsup_jax.train.Trainer` for SupSup, or a
    :class:`~supsup_jax.baselines.MethodTrainer` for a baseline (``config.method``).
    """
    if config.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {config.scenario!r}; choose one of {SCENARIOS}")
    _check_method(config)
    stream = _make_stream(config)
    if stream.num_tasks != config.num_tasks:
        raise ValueError(f"the {config.stream} stream has {stream.num_tasks} tasks, the config "
                         f"asks for {config.num_tasks}")
    input_shape = tuple(stream.task(0).train_images.shape[1:])
    kwargs = dict(config.get("model_kwargs", {}) or {})
    kwargs.setdefault("seed", config.seed)
    kwargs["input_shape"] = input_shape
    kwargs["weight_init"] = config.weight_init
    out_key = "num_outputs" if config.model in ("fc1024", "lenet300_100") else "num_classes"
    kwargs[out_key] = config.num_outputs
    network = models.get_model(config.model, **kwargs)
    if config.mask_rule == "topk" and config.get("er_scale"):
        weights = masking.masked_leaves(network.params)
        mask_fn = masking.make_mask_fn("topk", masking.er_densities(weights, config.er_scale))
    else:
        mask_fn = masking.make_mask_fn(config.mask_rule, config.get("density"))
    mean, std = input_statistics(config.normalization, stream, input_shape[-1])
    steps = _steps_per_task(config, stream)
    steps_per_epoch = max(len(stream.task(0).train_labels) // config.batch_size, 1)

    def make_optimizer(lr):
        return train_lib.make_optimizer(
            config.optimizer, lr, weight_decay=config.weight_decay,
            momentum=config.momentum, schedule=config.schedule, steps_per_epoch=steps_per_epoch,
            epochs=-(-steps // steps_per_epoch), warmup_epochs=config.get("warmup_epochs", 0))

    preprocess = train_lib.make_preprocess(mean, std, stream.augment)
    if _method(config) != "supsup":
        method = baselines.make_method(
            _method(config), network, config.num_tasks, rand_w=config.get("rand_w", False),
            psp_context=config.get("psp_context", "orthogonal"), key=_key(config, 4))
        lrs = {"lr": config.lr, "weight_lr": config.get("weight_lr", config.lr)}
        return stream, baselines.MethodTrainer(method, make_optimizer, lrs, preprocess,
                                               chunk_size=config.chunk_size)
    optimizer = make_optimizer(config.lr)
    trainer = train_lib.Trainer(network, mask_fn, optimizer, preprocess,
                                chunk_size=config.chunk_size)
    return stream, trainer


def input_statistics(normalization: str, stream, channels: int = 1):
    """``(mean, std)`` per channel for ``normalization``: ``"dataset"`` (the stream's own) or
    ``"mnist"``, MNIST's statistics whatever the data, as the official pipeline uses for its
    MNIST-family runs (and did when run on Fashion-MNIST for our reference numbers).

    It matters for task inference: on PermutedFashionMNIST (FC 1024-1024, 5 tasks, One-Shot from
    one image) we measured task-inference accuracy 0.995 (H) / 1.000 (G) with MNIST's statistics
    against 0.795 (H) / 0.990 (G) with Fashion-MNIST's own, at equal GG accuracy.
    """
    if normalization == "mnist":
        mean, std = DATASET_STATS["mnist"]
        return mean * channels, std * channels
    if normalization == "dataset":
        return stream.mean, stream.std
    raise ValueError(f"unknown normalization {normalization!r}; choose 'mnist' or 'dataset'")


def _test_data(config, stream, i):
    """Task ``i``'s test images and labels, cut to ``config.max_eval_examples`` if set."""
    task = stream.task(i)
    cut = config.get("max_eval_examples", -1)
    x, y = task.test_images, task.test_labels
    return (x[:cut], y[:cut]) if cut > 0 else (x, y)


def _steps_per_task(config, stream) -> int:
    if config.steps > 0:
        return config.steps
    n = len(stream.task(0).train_labels)
    return config.epochs * max(n // config.batch_size, 1)


def _eval_points(config) -> set[int]:
    pts = list(config.get("eval_at", []) or [])
    return set(pts) | {config.num_tasks} if pts else set(range(1, config.num_tasks + 1))


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("supsup-jax", "jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


@dataclasses.dataclass
class _Progress:
    quiet: bool
    num_tasks: int
    start: int

    def __post_init__(self):
        self.quiet = self.quiet or not distributed.is_primary()
        self.tasks = tqdm(total=self.num_tasks, initial=self.start, desc="tasks", unit="task",
                          disable=self.quiet, dynamic_ncols=True)

    def steps(self, t: int, total: int):
        return tqdm(total=total, desc=f"task {t}", unit="step", leave=False,
                    disable=self.quiet, dynamic_ncols=True)

    def task_done(self, line: str):
        self.tasks.update(1)
        if not self.quiet:
            tqdm.write(line)

    def close(self):
        self.tasks.close()


class _Scalars:
    """TensorBoard scalars in ``workdir/tensorboard`` when tensorboardX is installed."""

    def __init__(self, workdir: str, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, float | None]) -> None:
        if self.writer is not None:
            for name, value in scalars.items():
                if value is not None:
                    self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _row_scalars(row: dict | None, t: int) -> dict[str, float | None]:
    """The new task's accuracies and, on rows that evaluated every learned task, their means."""
    if not row:
        return {}
    out = {}
    for key in ("gg", "inferred", "task_inference"):
        values = row.get(key)
        if values is None:
            continue
        out[f"{key}/new_task"] = values[t]
        if None not in values:
            out[f"{key}/mean_learned"] = float(np.mean(values))
    return out


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """Run (or resume) the experiment ``config`` in ``workdir`` and return its results dict.

    Raises:
      CheckpointError: the workdir holds a checkpoint of a different config, or a corrupt one.
    """
    if _method(config) == "hopsupsup":  # its own task loop: train all, store, then recover
        from supsup_jax import hopsupsup
        return hopsupsup.train_and_evaluate(config, workdir)
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    stream, trainer = build(config)
    ckpts = ckpt_lib.RunCheckpoints(workdir)
    try:
        if config.scenario == "NNs" and _method(config) == "supsup":
            out = _run_nns(config, workdir, stream, trainer, ckpts)
        else:
            learner = (_SupSupTasks if _method(config) == "supsup" else _BaselineTasks)(
                config, stream, trainer)
            out = _run_tasks(config, workdir, stream, learner, ckpts)
    finally:
        ckpts.close()
    return out


def _comparable(config) -> str:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.dumps({k: v for k, v in d.items() if k not in _RUNTIME_KEYS}, sort_keys=True,
                      default=str)


def _resume_meta(config, ckpts) -> tuple[int, dict | None]:
    step = ckpts.latest_step()
    if step is None:
        return 0, None
    meta = ckpts.restore_meta(step)
    if meta.get("config") != _comparable(config):
        stored, now = json.loads(meta.get("config") or "{}"), json.loads(_comparable(config))
        diff = {k: (stored.get(k), now.get(k)) for k in sorted(set(stored) | set(now))
                if stored.get(k) != now.get(k)}
        raise ckpt_lib.CheckpointError(
            f"{ckpts.directory} holds a run of a different config (field: stored vs now: "
            + "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
            + "); use another workdir or delete that one")
    return step, meta


class _SupSupTasks:
    """SupSup's side of :func:`_run_tasks`: scores trained per task, masks kept in the bank."""

    def __init__(self, config, stream, trainer):
        self.config, self.trainer = config, trainer
        self.has_bn = bool(jax.tree.leaves(trainer.network.batch_stats))
        self.how = None
        if config.scenario in ("GNu", "GNs"):
            inf = config.inference
            self.how = scenarios.TaskInference(inf.method, inf.objective,
                                               num_real=stream.task(0).num_classes, m=inf.m,
                                               per_example=inf.per_example)

    def init(self):
        bank = bank_lib.MaskBank.create(self.trainer.weights,
                                        self.trainer.network.batch_stats or None,
                                        capacity=self.config.num_tasks)
        running_mean = (masking.init_scores(jax.random.key(0), self.trainer.network.params)
                        if self.config.transfer else {})
        return {"bank": bank, "running_mean": running_mean}

    def restore(self, ckpts, step, state):
        return ckpts.restore_state(step, state)

    def saved(self, state):
        return state

    def train(self, state, t, task, steps, on_chunk):
        c, trainer = self.config, self.trainer
        running_mean = state["running_mean"]
        ts = trainer.init_task(_key(c, 0, t), scores=running_mean if c.transfer and t else None)
        ts = trainer.train_task(ts, task.train_images, task.train_labels, _key(c, 1, t), steps,
                                c.batch_size, on_chunk=on_chunk)
        jax.block_until_ready(ts.scores)
        if c.transfer:
            running_mean = train_lib.update_running_mean(running_mean, t, ts.scores)
        # Donated: the mask is written in place. Safe because nothing else holds the old bank
        # (checkpoints are saved synchronously, see checkpoint.py).
        bank = state["bank"].add(trainer.masks(ts.scores), ts.batch_stats if self.has_bn else None,
                                 donate=True)
        return {"bank": bank, "running_mean": running_mean}

    def row(self, state, t, test_set, only):
        """Each task's own mask and, for GNu/GNs, the inferred task's."""
        c, trainer, bank, how = self.config, self.trainer, state["bank"], self.how

        def given(i, x, y):
            stats = bank.task_batch_stats(i) if self.has_bn else {}
            return float(trainer.evaluate(bank.task_masks(i), stats, x, y))

        def inferred(i, x, y):
            r = scenarios.evaluate_unknown_task(
                trainer.network, bank, x, y, i, how, trainer.preprocess, _key(c, 2, t, i),
                batch_size=c.test_batch_size, shared_labels=c.scenario == "GNs")
            return r["accuracy"], r["task_accuracy"]

        return _accuracy_row(t, test_set, only, given, inferred if how is not None else None)

    def bytes_per_task(self, state, done):
        del done
        return _bank_bytes(state["bank"])


class _BaselineTasks:
    """A baseline's side of :func:`_run_tasks` (``config.method``, :mod:`supsup_jax.baselines`):
    the method's state and the per-task BN statistics, stacked on the task axis."""

    def __init__(self, config, stream, trainer):
        self.config, self.trainer = config, trainer
        self.has_bn = bool(jax.tree.leaves(trainer.network.batch_stats))
        self.how = None
        if config.scenario == "GNu":
            self.how = scenarios.TaskInference(config.inference.method,
                                               config.inference.objective,
                                               num_real=stream.task(0).num_classes,
                                               m=config.inference.m)

    def init(self):
        return {"method": self.trainer.method.init(_key(self.config, 5)),
                "stats": baselines.core.stacked_zeros(self.trainer.network.batch_stats,
                                                      self.config.num_tasks)}

    # Saved as a flat list of leaves: orbax needs no knowledge of our path-keyed dicts.
    def restore(self, ckpts, step, state):
        leaves, treedef = jax.tree.flatten(state)
        return jax.tree.unflatten(treedef, ckpts.restore_state(step, leaves))

    def saved(self, state):
        return jax.tree.leaves(state)

    def train(self, state, t, task, steps, on_chunk):
        c = self.config
        mstate, stats = self.trainer.train_task(state["method"], t, task.train_images,
                                                task.train_labels, _key(c, 1, t), steps,
                                                c.batch_size, on_chunk=on_chunk)
        jax.block_until_ready(mstate)
        return {"method": mstate,
                "stats": baselines.core.put(state["stats"], t, stats) if self.has_bn else {}}

    def row(self, state, t, test_set, only):
        """GG accuracy of tasks ``0..t`` with their own state and, for BatchE in GNu, accuracy
        and task-inference accuracy with BatchE's One-Shot."""
        trainer, how = self.trainer, self.how

        def given(i, x, y):
            stats = baselines.core.take(state["stats"], i) if self.has_bn else {}
            return float(trainer.evaluate(state["method"], i, stats, x, y))

        def inferred(i, x, y):
            r = baselines.batche.evaluate_unknown_task(
                trainer, state["method"], state["stats"], x, y, i, t + 1, how,
                _key(self.config, 2, t, i), batch_size=self.config.test_batch_size)
            return r["accuracy"], r["task_accuracy"]

        return _accuracy_row(t, test_set, only, given, inferred if how is not None else None)

    def bytes_per_task(self, state, done):
        done = max(done, 1)
        return self.trainer.method.stored_bytes(state["method"], done) / done


def _run_tasks(config, workdir, stream, learner, ckpts):
    """The task loop (SPEC 1.4) for SupSup and every baseline: train task ``t``, evaluate row
    ``t`` (every learned task at the evaluation points, else only the new one), checkpoint, and
    write the results. ``learner`` is a :class:`_SupSupTasks` or :class:`_BaselineTasks`."""
    num = config.num_tasks
    steps = _steps_per_task(config, stream)
    state = learner.init()
    start, meta = _resume_meta(config, ckpts)
    rows: dict[str, dict] = {}
    wall: list[float] = []
    right_after: list[float] = []  # GG accuracy of each task right after learning it
    if meta is not None:
        state = learner.restore(ckpts, start, state)
        rows, wall, right_after = meta["rows"], meta["wall"], meta["right_after"]
    points = _eval_points(config)
    progress = _Progress(config.quiet, num, start)
    scalars = _Scalars(workdir, config.get("tensorboard", False) and distributed.is_primary())
    test_cache: dict[int, Any] = {}

    def test_set(i):
        if i not in test_cache:
            test_cache[i] = _test_data(config, stream, i)
            if len(test_cache) > 64:
                test_cache.pop(next(iter(test_cache)))
        return test_cache[i]

    for t in range(start, num):
        t0 = time.perf_counter()
        bar = progress.steps(t, steps)
        state = learner.train(state, t, stream.task(t), steps,
                              on_chunk=lambda s, m, bar=bar: bar.update(s - bar.n))
        train_secs = time.perf_counter() - t0
        bar.close()
        # Off the evaluation points only the new task: the diagonal R[t, t] that BWT and
        # forgetting need.
        row = learner.row(state, t, test_set, only=None if t + 1 in points else t)
        rows[str(t)] = row
        right_after.append(row["gg"][t])
        wall.append(time.perf_counter() - t0)
        meta = {"config": _comparable(config), "rows": rows, "wall": wall,
                "right_after": right_after}
        ckpts.save(t + 1, learner.saved(state), meta)
        res = _results(config, rows, wall, learner.bytes_per_task(state, t + 1), None)
        if distributed.is_primary():
            results.write_results(workdir, res)
        scalars.write(t + 1, {"train/steps_per_second": steps / train_secs,
                              **_row_scalars(row, t)})
        line = (f"task {t}: {steps / train_secs:.0f} steps/s, GG {right_after[-1]:.4f}, "
                f"running average {np.mean(right_after):.4f}")
        inf_row = row.get("inferred")
        if inf_row is not None and None not in inf_row:  # a row that evaluated every task
            line += f", {config.scenario} over learned {np.mean(inf_row):.4f}"
        elif None not in row["gg"]:
            line += f", GG over learned {np.mean(row['gg']):.4f}"
        progress.task_done(line)
    progress.close()
    scalars.close()
    res = _results(config, rows, wall, learner.bytes_per_task(state, len(wall)), None)
    if distributed.is_primary():
        results.write_results(workdir, res)
        plots.write_plots(res, workdir)
    return res


def _accuracy_row(t, test_set, only, given, inferred=None) -> dict:
    """Row ``t`` of the accuracy matrices: ``given(i, x, y)`` (task given) and, if set,
    ``inferred(i, x, y) -> (accuracy, task_accuracy)`` for tasks ``0..t``; with ``only=i`` just
    entry ``i`` (the others None)."""
    gg, inf, task_acc = [], [], []
    for i in range(t + 1):
        if only is not None and i != only:
            gg.append(None)
            inf.append(None)
            task_acc.append(None)
            continue
        x, y = test_set(i)
        gg.append(given(i, x, y))
        if inferred is not None:
            a, ta = inferred(i, x, y)
            inf.append(a)
            task_acc.append(ta)
    row = {"gg": gg}
    if inferred is not None:
        row.update(inferred=inf, task_inference=task_acc)
    return row


def _matrix(rows, num, key):
    if not any(key in r for r in rows.values()):
        return None
    m = [[None] * num for _ in range(num)]
    for t, r in rows.items():
        for i, v in enumerate(r.get(key) or []):
            m[int(t)][i] = v
    return m


def _summary(matrix):
    """ACC, BWT and forgetting at the last fully evaluated row (see ``metrics``)."""
    if matrix is None:
        return None, None, None
    r = np.array([[np.nan if v is None else v for v in row] for row in matrix], np.float64)
    full = [t for t in range(len(r)) if not np.isnan(r[t, : t + 1]).any()]
    if not full:
        return None, None, None
    sub = r[: full[-1] + 1, : full[-1] + 1]
    acc = float(np.mean(sub[-1]))
    if np.isnan(np.diag(sub)).any():  # e.g. NNs evaluated only at checkpoints
        return acc, None, None
    return acc, metrics.backward_transfer(sub), metrics.forgetting(sub)


def _bank_bytes(bank) -> float:
    """Bits of the learned tasks' masks (and their BN statistics) per task, not spare capacity."""
    learned = max(int(bank.num_tasks), 1)
    return bank.nbytes() * (learned / bank.capacity) / learned


def _results(config, rows, wall, bytes_per_task, masks_allocated) -> dict[str, Any]:
    num = config.num_tasks
    gg = _matrix(rows, num, "gg")
    inferred = _matrix(rows, num, "inferred")
    task_inf = _matrix(rows, num, "task_inference")
    main = inferred if inferred is not None else gg
    acc, bwt, fgt = _summary(main) if main is not None else (None, None, None)
    gg_acc = _summary(gg)[0] if gg is not None else None
    tia = None
    if task_inf is not None:
        full = [t for t, r in rows.items() if None not in r["task_inference"]]
        tia = float(np.mean(rows[max(full, key=int)]["task_inference"])) if full else None
    return {
        "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
        "seed": config.seed,
        "versions": _versions(),
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "scenario": config.scenario,
        "num_tasks": num,
        "accuracy_matrix": gg,
        "inferred_accuracy_matrix": inferred,
        "task_inference_matrix": task_inf,
        "task_inference_accuracy": tia,
        "average_accuracy": acc,
        "gg_average_accuracy": gg_acc,
        "backward_transfer": bwt,
        "forgetting": fgt,
        "method": _method(config),
        "bytes_per_task": bytes_per_task,
        "wall_time_per_task": list(wall),
        "masks_allocated": masks_allocated,
    }


def _run_nns(config, workdir, stream, trainer, ckpts):
    """NNs: the stream visits the true tasks in order; the learner sees only batches."""
    num = config.num_tasks
    steps = _steps_per_task(config, stream)
    every = config.nns.decide_every
    learner = nns.NNsLearner(trainer, budget=config.nns.budget, key=_key(config, 3),
                             objective=config.inference.objective,
                             num_real=stream.task(0).num_classes, eps=config.nns.eps)
    start, meta = _resume_meta(config, ckpts)
    rows: dict[str, dict] = {}
    wall: list[float] = []
    usage: list[list[int | None]] = []
    if meta is not None:
        slots = meta["num_masks"]
        abstract = {"bank": learner.bank,
                    "states": [trainer.init_task(jax.random.key(0)) for _ in range(slots)]}
        state = ckpts.restore_state(start, abstract)
        learner.bank, learner.states = state["bank"], list(state["states"])
        learner.steps, learner.decisions = meta["steps"], meta["decisions"]
        rows, wall, usage = meta["rows"], meta["wall"], meta["usage"]
    how = scenarios.TaskInference("one_shot", config.inference.objective,
                                  num_real=stream.task(0).num_classes, m=config.inference.m)
    points = _eval_points(config)
    progress = _Progress(config.quiet, num, start)
    for t in range(start, num):
        t0 = time.perf_counter()
        task = stream.task(t)
        it = BatchIterator(len(task.train_labels), config.batch_size, _key(config, 1, t))
        used = []
        bar = progress.steps(t, steps)
        for s in range(0, steps, every):
            idx = it.index_chunk(s, min(every, steps - s))
            used.append(learner.learn_block(task.train_images[idx], task.train_labels[idx]))
            bar.update(len(idx))
        bar.close()
        usage.append(used)
        if t + 1 in points:
            rows[str(t)] = _evaluate_nns_row(config, learner, stream, usage, t, how)
        wall.append(time.perf_counter() - t0)
        meta = {"config": _comparable(config), "rows": rows, "wall": wall, "usage": usage,
                "num_masks": learner.num_masks, "steps": learner.steps,
                "decisions": learner.decisions}
        ckpts.save(t + 1, {"bank": learner.bank, "states": learner.states}, meta)
        res = _results(config, rows, wall, _bank_bytes(learner.bank), learner.num_masks)
        if distributed.is_primary():
            results.write_results(workdir, res)
        progress.task_done(f"task {t}: {steps / wall[-1]:.0f} steps/s, masks allocated "
                           f"{learner.num_masks}")
    progress.close()
    res = _results(config, rows, wall, _bank_bytes(learner.bank), learner.num_masks)
    if distributed.is_primary():
        results.write_results(workdir, res)
        plots.write_plots(res, workdir)
    return res


def _evaluate_nns_row(config, learner, stream, usage, t, how) -> dict:
    # "Given" accuracy of a true task uses the slot the learner trained most on its data.
    gg, inferred = [], []
    for i in range(t + 1):
        x, y = _test_data(config, stream, i)
        slots = [s for s in usage[i] if s is not None]
        if slots:
            own = max(set(slots), key=slots.count)
            gg.append(float(learner.trainer.evaluate(learner.bank.task_masks(own), {}, x, y)))
        else:
            gg.append(None)
        r = scenarios.evaluate_unknown_task(
            learner.trainer.network, learner.bank, x, y, None, how, learner.trainer.preprocess,
            _key(config, 2, t, i), batch_size=config.test_batch_size, shared_labels=True)
        inferred.append(r["accuracy"])
    return {"gg": gg, "inferred": inferred}

