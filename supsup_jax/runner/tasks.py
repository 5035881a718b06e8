"""The task loop (SPEC 1.4) of SupSup, every baseline and scenario NNs.

For each task: train it, evaluate row ``t`` of the accuracy matrices (every learned task at the
evaluation points, else only the new one: the diagonal that BWT and forgetting need),
checkpoint, and write the results. Re-running on the same workdir resumes after the last
finished task; every random choice derives from ``(config.seed, stream, task)``
(:mod:`supsup_jax.runner.keys`), so a resumed run's results equal an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import jax
import numpy as np

from supsup_jax import distributed, nns, plots, results, scenarios
from supsup_jax.data import BatchIterator
from supsup_jax.errors import TrainingDivergedError
from supsup_jax.runner import nns_stream, record
from supsup_jax.runner.build import eval_points, steps_per_task, test_data, test_sets
from supsup_jax.runner.keys import Stream, key
from supsup_jax.runner.learners import bank_bytes
from supsup_jax.runner.progress import Progress, row_scalars

__all__ = ["resume_point", "run_nns", "run_tasks"]


def resume_point(config, ckpts, restore, extensible: bool = False
                 ) -> tuple[int, dict | None, Any]:
    """``(finished tasks, checkpoint meta, state)`` of the workdir's newest intact checkpoint
    (``restore(step, meta) -> state``), ``(0, None, None)`` when there is none; a checkpoint of
    another config is an error (:meth:`RunCheckpoints.resume`), except, with ``extensible``,
    one of fewer tasks (:func:`record.check_resumable`)."""
    check = lambda meta: record.check_resumable(meta.get("config"), config, ckpts.directory,
                                                extensible=extensible)
    return ckpts.resume(check, restore)


@contextlib.contextmanager
def _naming_the_task(t: int):
    try:
        yield
    except TrainingDivergedError as e:
        raise TrainingDivergedError(
            f"task {t}: {e}; nothing of this task was checkpointed") from None


def _finish(config, workdir, res):
    if distributed.is_primary():
        results.write_results(workdir, res)
        plots.write_plots(res, workdir)
    return res


def run_tasks(config, workdir, stream, learner, ckpts):
    """The task loop for a learner of :mod:`supsup_jax.runner.learners`."""
    origin = {"provenance": record.provenance(stream),
              "classes_per_task": stream.task(0).num_classes}
    num = config.num_tasks
    steps = steps_per_task(config, stream)
    state = learner.init()
    start, meta, restored = resume_point(
        config, ckpts, lambda step, meta: learner.restore(ckpts, step, state, meta),
        extensible=learner.extensible)
    rows: dict[str, dict] = {}
    wall: list[float] = []
    right_after: list[float] = []  # GG accuracy of each task right after learning it
    if meta is not None:
        state = restored
        rows, wall, right_after = (record.unpack_rows(meta["rows"]), meta["wall"],
                                   meta["right_after"])
    points = eval_points(config)
    progress = Progress(config.quiet, num, start, workdir, tensorboard=config.tensorboard,
                        config=config)
    test_set = test_sets(config, stream)
    try:
        for t in range(start, num):
            t0 = time.perf_counter()
            bar = progress.steps(t, steps)
            with _naming_the_task(t):
                state = learner.train(state, t, stream.task(t), steps, on_chunk=bar.chunk)
            train_secs = time.perf_counter() - t0
            rate = bar.close()
            row = learner.row(state, t, test_set, only=None if t + 1 in points else t)
            rows[str(t)] = row
            right_after.append(row["gg"][t])
            wall.append(time.perf_counter() - t0)
            meta = {"config": record.comparable(config), "rows": record.pack_rows(rows),
                    "wall": wall, "right_after": right_after}
            ckpts.save(t + 1, learner.saved(state), meta)
            res = record.results_dict(config, rows, wall,
                                      learner.bytes_per_task(state, t + 1), None, **origin)
            if distributed.is_primary():
                results.write_results(workdir, res)
            line = (f"task {t}: {rate:.0f} steps/s, GG {right_after[-1]:.4f}, "
                    f"running average {np.mean(right_after):.4f}")
            inf_row = row.get("inferred")
            if inf_row is not None and None not in inf_row:  # a row that evaluated every task
                line += f", {config.scenario} over learned {np.mean(inf_row):.4f}"
            elif None not in row["gg"]:
                line += f", GG over learned {np.mean(row['gg']):.4f}"
            progress.task_done(t, line, {"train/steps_per_second": rate,
                                         "train/seconds": train_secs, "seconds": wall[-1],
                                         **row_scalars(row, t)})
    finally:
        progress.close()
    return _finish(config, workdir, record.results_dict(
        config, rows, wall, learner.bytes_per_task(state, len(wall)), None, **origin))


def run_nns(config, workdir, stream, trainer, ckpts):
    """NNs (SPEC 1.7): the learner sees only a stream of batches (``config.nns.boundaries``,
    :mod:`supsup_jax.runner.nns_stream`) and decides every ``config.nns.decide_every`` of them.

    Row ``t`` is evaluated once every batch of tasks ``0..t`` has been trained on; a checkpoint
    is written after each block in which a piece of a task ends."""
    origin = {"provenance": record.provenance(stream),
              "classes_per_task": stream.task(0).num_classes}
    num = config.num_tasks
    steps = steps_per_task(config, stream)
    every = config.nns.decide_every
    schedule = nns_stream.blocks(num, steps, every, config.nns.boundaries,
                                 offset=config.nns.offset, visits=config.nns.visits,
                                 seed=_seed(key(config, Stream.NNS_ORDER)))
    learner = nns.NNsLearner(trainer, budget=config.nns.budget, key=key(config, Stream.NNS),
                             objective=config.inference.objective,
                             num_real=stream.task(0).num_classes, eps=config.nns.eps)
    def restore(step, meta):
        abstract = {"bank": learned.bank, "states": [trainer.init_task(jax.random.key(0))
                                                     for _ in range(meta["num_masks"])]}
        return ckpts.restore_state(step, abstract)

    learned = learner.init()
    start, meta, state = resume_point(config, ckpts, restore)
    rows: dict[str, dict] = {}
    wall = [0.0] * num
    usage: list[list[list]] = [[] for _ in range(num)]
    done = 0  # blocks trained
    if meta is not None:
        learned = nns.NNsState(state["bank"], tuple(state["states"]), tuple(meta["steps"]),
                               tuple(meta["decisions"]))
        rows = record.unpack_rows(meta["rows"])
        # Checkpoints from before the continuous stream: step = tasks done, one slot per block.
        done = meta.get("blocks", start * -(-steps // every))
        wall[:len(meta["wall"])] = meta["wall"]
        usage[:len(meta["usage"])] = [
            [u if isinstance(u, list) else [u, min(every, steps - every * i)]
             for i, u in enumerate(task)] for task in meta["usage"]]
    how = scenarios.TaskInference("one_shot", config.inference.objective,
                                  num_real=stream.task(0).num_classes, m=config.inference.m)
    points = eval_points(config)
    trained = [sum(n for _, n in u) for u in usage]
    complete = _complete_prefix(trained, steps)
    progress = Progress(config.quiet, num, complete, workdir, tensorboard=config.tensorboard,
                        config=config)
    iterators: dict[int, BatchIterator] = {}

    def batches(piece):
        task = stream.task(piece.task)
        if piece.task not in iterators:
            iterators[piece.task] = BatchIterator(
                len(task.train_labels), config.batch_size,
                key(config, Stream.TRAIN_BATCHES, piece.task))
        idx = iterators[piece.task].index_chunk(piece.step, piece.count)
        return task.train_images[idx], task.train_labels[idx]

    try:
        for b in range(done, len(schedule)):
            t0 = time.perf_counter()
            block = schedule[b]
            parts = [batches(p) for p in block]
            images = np.concatenate([x for x, _ in parts])
            labels = np.concatenate([y for _, y in parts])
            with _naming_the_task(block[0].task):
                learned, slot = learner.learn_block(learned, images, labels)
            for p in block:
                usage[p.task].append([slot, p.count])
                trained[p.task] += p.count
            before, complete = complete, _complete_prefix(trained, steps)
            for t in range(before, complete):
                if t + 1 in points:
                    rows[str(t)] = _nns_row(config, trainer, learned.bank, stream, usage, t, how)
            seconds = time.perf_counter() - t0
            for p in block:
                wall[p.task] += seconds * p.count / len(images)
            if not _piece_ends(schedule, b):
                continue  # the block only continues a piece: no checkpoint
            seen = max(t for t in range(num) if trained[t]) + 1
            meta = {"config": record.comparable(config), "rows": record.pack_rows(rows),
                    "wall": wall[:seen],
                    "usage": usage[:seen], "num_masks": learned.num_masks,
                    "steps": list(learned.steps), "decisions": list(learned.decisions),
                    "blocks": b + 1}
            ckpts.save(b + 1, {"bank": learned.bank, "states": list(learned.states)}, meta)
            res = _nns_results(config, rows, wall[:complete], learned, usage, origin)
            if distributed.is_primary():
                results.write_results(workdir, res)
            for t in range(before, complete):
                progress.task_done(t, f"task {t}: {steps / wall[t]:.0f} steps/s, masks allocated "
                                   f"{learned.num_masks}",
                                   {"seconds": wall[t], "nns/masks_allocated": learned.num_masks,
                                    **row_scalars(rows.get(str(t)), t)})
    finally:
        progress.close()
    return _finish(config, workdir, _nns_results(config, rows, wall, learned, usage, origin))


def _seed(k: jax.Array) -> int:
    return int(np.asarray(jax.random.key_data(k)).ravel()[-1])


def _complete_prefix(trained: list[int], steps: int) -> int:
    """How many tasks ``0..t-1`` have had all their batches."""
    n = 0
    while n < len(trained) and trained[n] >= steps:
        n += 1
    return n


def _piece_ends(schedule, b: int) -> bool:
    """Whether a piece of the stream ends in block ``b`` (one that the next block does not
    continue)."""
    if len(schedule[b]) > 1 or b + 1 == len(schedule):
        return True
    last, nxt = schedule[b][-1], schedule[b + 1][0]
    return (nxt.task, nxt.step) != (last.task, last.step + last.count)


def _nns_results(config, rows, wall, learned, usage, origin) -> dict:
    return record.results_dict(config, rows, wall, bank_bytes(learned.bank, len(wall)),
                               learned.num_masks,
                               **origin, nns={"boundaries": config.nns.boundaries,
                                    **nns_stream.slot_purity(usage)})


def _nns_row(config, trainer, bank, stream, usage, t, how) -> dict:
    # "Given" accuracy of a true task uses the slot the learner trained most on its data.
    gg, inferred = [], []
    for i in range(t + 1):
        x, y = test_data(config, stream, i)
        batches: dict[int, int] = {}
        for slot, n in usage[i]:
            if slot is not None:
                batches[slot] = batches.get(slot, 0) + n
        if batches:
            own = min(batches, key=lambda s: (-batches[s], s))
            gg.append(float(trainer.evaluate(bank.task_masks(own), {}, x, y)))
        else:
            gg.append(None)
        r = scenarios.evaluate_unknown_task(
            trainer.network, bank, x, y, None, how, trainer.preprocess,
            key(config, Stream.EVALUATION, t, i), batch_size=config.test_batch_size,
            shared_labels=True)
        inferred.append(r["accuracy"])
    return {"gg": gg, "inferred": inferred}
