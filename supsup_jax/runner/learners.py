"""The learners of the task loop (:func:`supsup_jax.runner.tasks.run_tasks`): SupSup and the
baselines behind one protocol.

A learner has ``init() -> state``, ``restore(ckpts, step, state, meta)``, ``extensible`` (whether a
finished run may continue with more tasks), ``saved(state)`` (what the
checkpoint holds), ``train(state, t, task, steps, on_chunk) -> state``, ``row(state, t,
test_set, only) -> row`` (see :func:`supsup_jax.runner.record.accuracy_row`) and
``bytes_per_task(state, done)``. Its state is a pytree of arrays.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from supsup_jax import bank as bank_lib
from supsup_jax import baselines, masking, scenarios
from supsup_jax import train as train_lib
from supsup_jax.errors import ConfigError
from supsup_jax.evaluate import stack_test_sets
from supsup_jax.runner import record
from supsup_jax.runner.keys import Stream, key
from supsup_jax.runner.record import accuracy_row

__all__ = ["BaselineLearner", "SupSupLearner", "bank_bytes", "bank_gg", "bank_mesh",
           "task_inference"]

# Memory for the masks, weights and test images of the tasks evaluated in one call.
GG_EVAL_BYTES = 512 * 2**20


def bank_mesh() -> jax.sharding.Mesh | None:
    """A ``"tasks"`` mesh over this process's devices when it has several (the GNu/GNs
    evaluation then spreads the bank's task axis over them), else ``None``."""
    devices = jax.local_devices()
    if len(devices) < 2:
        return None
    return jax.sharding.Mesh(np.array(devices), ("tasks",),
                             axis_types=(jax.sharding.AxisType.Auto,))


def task_inference(config, stream, masked=None) -> scenarios.TaskInference:
    """The config's ``inference`` block; ``masked``: the masked-layer paths ``layers`` must
    name (checked here, before any training)."""
    inf = config.inference
    layers = tuple(inf.layers) or None
    unknown = sorted(set(layers) - set(masked)) if layers and masked is not None else []
    if unknown:
        raise ConfigError(f"config field inference.layers names {unknown}, not masked layers "
                          f"of this model: {sorted(masked)}")
    return scenarios.TaskInference(inf.method, inf.objective,
                                   num_real=stream.task(0).num_classes, m=inf.m,
                                   per_example=inf.per_example, shortlist=inf.shortlist,
                                   rerank=inf.rerank, layers=layers)


def bank_bytes(bank, tasks: int | None = None) -> float:
    """Bits of the learned slots' masks (and their BN statistics), not spare capacity, per task:
    per learned slot, or shared by ``tasks`` true tasks (NNs, whose slots are not tasks)."""
    learned = max(int(bank.num_tasks), 1)
    return bank.nbytes() * (learned / bank.capacity) / max(learned if tasks is None else tasks, 1)


def bank_gg(trainer: train_lib.Trainer, bank, tasks, test_set) -> list[float]:
    """GG accuracy of ``tasks`` of ``bank`` on ``test_set(i)``, as few calls of
    :meth:`~supsup_jax.train.Trainer.evaluate_bank` (one vmap over tasks) as memory allows."""
    x0, _ = test_set(tasks[0])
    # Unpacked mask and masked weights (float32) per task, unless tasks run one after another.
    per_task = x0.nbytes + (0 if trainer.tasks_in_sequence else 8 * bank.num_weights)
    group = int(np.clip(GG_EVAL_BYTES // per_task, 1, len(tasks)))
    out = []
    for k in range(0, len(tasks), group):
        chunk = list(tasks[k:k + group])
        padded = chunk + [chunk[-1]] * (group - len(chunk))  # one compiled shape per group
        images, labels = stack_test_sets([test_set(i) for i in padded])
        acc = np.asarray(trainer.evaluate_bank(bank, padded, images, labels))
        out += [float(a) for a in acc[:len(chunk)]]
    return out


class SupSupLearner:
    """Scores trained per task, masks kept in the bit-packed bank (SPEC 1.4)."""

    def __init__(self, config, stream, trainer: train_lib.Trainer):
        self.config, self.trainer = config, trainer
        self.how = (dataclasses.replace(task_inference(config, stream, trainer.weights),
                                        mesh=bank_mesh())
                    if config.scenario in ("GNu", "GNs") else None)

    def init(self):
        trainer = self.trainer
        bank = bank_lib.MaskBank.create(trainer.weights, trainer.network.batch_stats or None,
                                        capacity=self.config.num_tasks)
        running_mean = (masking.init_scores(jax.random.key(0), trainer.network.params)
                        if self.config.transfer else {})
        return {"bank": bank, "running_mean": running_mean}

    extensible = True  # more tasks later: the bank grows

    def restore(self, ckpts, step, state, meta):
        stored = record.stored_num_tasks(meta)
        if stored == state["bank"].capacity:
            return ckpts.restore_state(step, state)
        # A run extended with more tasks: restore its bank, then give it the new slots.
        bank = state["bank"]
        small = bank_lib.MaskBank.create(self.trainer.weights,
                                         self.trainer.network.batch_stats or None,
                                         capacity=stored)
        restored = ckpts.restore_state(step, {**state, "bank": small})
        return {**restored, "bank": restored["bank"].grow(bank.capacity)}

    def saved(self, state):
        return state

    def train(self, state, t, task, steps, on_chunk):
        c, trainer = self.config, self.trainer
        running_mean = state["running_mean"]
        ts = trainer.init_task(key(c, Stream.SCORE_INIT, t),
                               scores=running_mean if c.transfer and t else None)
        ts = trainer.train_task(ts, task.train_images, task.train_labels,
                                key(c, Stream.TRAIN_BATCHES, t), steps, c.batch_size,
                                on_chunk=on_chunk)
        jax.block_until_ready(ts.scores)
        if c.transfer:
            running_mean = train_lib.update_running_mean(running_mean, t, ts.scores)
        # Donated: the mask is written in place. Safe because nothing else holds the old bank
        # (checkpoints are saved synchronously, see checkpoint.py).
        stats = ts.batch_stats if trainer.network.has_bn else None
        bank = state["bank"].add(trainer.masks(ts.scores), stats, donate=True)
        return {"bank": bank, "running_mean": running_mean}

    def row(self, state, t, test_set, only):
        """Each task's own mask and, for GNu/GNs, the inferred task's."""
        c, trainer, bank, how = self.config, self.trainer, state["bank"], self.how

        def given(tasks, test_set):
            return bank_gg(trainer, bank, tasks, test_set)

        def inferred(i, x, y):
            r = scenarios.evaluate_unknown_task(
                trainer.network, bank, x, y, i, how, trainer.preprocess,
                key(c, Stream.EVALUATION, t, i), batch_size=c.test_batch_size,
                shared_labels=c.scenario == "GNs")
            return r["accuracy"], r["task_accuracy"]

        return accuracy_row(t, test_set, only, given, inferred if how is not None else None)

    def bytes_per_task(self, state, done):
        del done
        return bank_bytes(state["bank"])


class BaselineLearner:
    """A baseline (``config.method``, :mod:`supsup_jax.baselines`): the method's state and the
    per-task BN statistics, stacked on the task axis."""

    def __init__(self, config, stream, trainer: baselines.MethodTrainer):
        self.config, self.trainer = config, trainer
        self.how = task_inference(config, stream) if config.scenario == "GNu" else None

    def init(self):
        return {"method": self.trainer.method.init(key(self.config, Stream.METHOD_INIT)),
                "stats": baselines.core.stacked_zeros(self.trainer.network.batch_stats,
                                                      self.config.num_tasks)}

    extensible = False  # the methods' states are sized by num_tasks

    # Saved as a flat list of leaves: orbax needs no knowledge of our path-keyed dicts.
    def restore(self, ckpts, step, state, meta):
        del meta
        leaves, treedef = jax.tree.flatten(state)
        return jax.tree.unflatten(treedef, ckpts.restore_state(step, leaves))

    def saved(self, state):
        return jax.tree.leaves(state)

    def train(self, state, t, task, steps, on_chunk):
        c = self.config
        mstate, stats = self.trainer.train_task(state["method"], t, task.train_images,
                                                task.train_labels,
                                                key(c, Stream.TRAIN_BATCHES, t), steps,
                                                c.batch_size, on_chunk=on_chunk)
        jax.block_until_ready(mstate)
        has_bn = self.trainer.network.has_bn
        return {"method": mstate,
                "stats": baselines.core.put(state["stats"], t, stats) if has_bn else {}}

    def row(self, state, t, test_set, only):
        """GG accuracy of tasks ``0..t`` with their own state and, for BatchE in GNu, accuracy
        and task-inference accuracy with BatchE's One-Shot."""
        trainer, how = self.trainer, self.how

        def given(tasks, test_set):
            has_bn = trainer.network.has_bn
            return [float(trainer.evaluate(
                state["method"], i, baselines.core.take(state["stats"], i) if has_bn else {},
                *test_set(i))) for i in tasks]

        def inferred(i, x, y):
            r = baselines.batche.evaluate_unknown_task(
                trainer, state["method"], state["stats"], x, y, i, t + 1, how,
                key(self.config, Stream.EVALUATION, t, i),
                batch_size=self.config.test_batch_size)
            return r["accuracy"], r["task_accuracy"]

        return accuracy_row(t, test_set, only, given, inferred if how is not None else None)

    def bytes_per_task(self, state, done):
        done = max(done, 1)
        return self.trainer.method.stored_bytes(state["method"], done) / done
