"""HopSupSup's protocol (SPEC 1.9, paper Fig. 7): train every task's neuron masks (GG), store
them in the Hopfield networks, then recover each task's mask from its test set alone.

Training is :class:`~supsup_jax.train.Trainer`'s (scores start at zero: all neurons on, as the
official code); each finished task's masks are checkpointed by
:class:`~supsup_jax.checkpoint.RunCheckpoints`, so a killed run resumes after its last finished
task (recovery, seconds per task, runs again from the stored masks).
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import hopfield, plots, results
from supsup_jax.checkpoint import CheckpointError
from supsup_jax.hopsupsup import HopfieldRecovery, hamming, steps_to_recover
from supsup_jax.models.bnnet import neuron_mask_filter
from supsup_jax.runner import record
from supsup_jax.runner.build import build_network, build_trainer, make_stream, steps_per_task
from supsup_jax.runner.build import test_data as test_data_of
from supsup_jax.runner.keys import Stream
from supsup_jax.runner.keys import key as key_of
from supsup_jax.runner.tasks import resume_point

__all__ = ["run"]

Masks = dict[str, Any]


def _recoveries(config, network, preprocess) -> dict[str, HopfieldRecovery]:
    """The default ``"method/rule"`` first, then every combination to compare."""
    hc = config.hopfield
    default = f"{hc.method}/{hc.rule}"
    combos = dict.fromkeys([default, *(f"{m}/{r}" for m in dict.fromkeys([hc.method,
                                                                          *hc.compare_methods])
                                       for r in dict.fromkeys([hc.rule, *hc.compare_rules]))])
    return {name: HopfieldRecovery(network, preprocess, rule=name.split("/")[1],
                                   method=name.split("/")[0], num_starts=hc.num_starts,
                                   energy_ratio=hc.energy_ratio, attractor_seed=config.seed,
                                   gamma=hc.gamma, lr=hc.lr, momentum=hc.momentum,
                                   weight_decay=hc.weight_decay,
                                   batch_size=config.test_batch_size)
            for name in combos}


def _train_tasks(config, stream, trainer, given_accuracy, ckpts, workdir):
    """Train (or restore) every task's masks; returns ``(masks, given, wall)``."""
    if os.path.exists(os.path.join(workdir, "hopsupsup_tasks.npz")) and ckpts.latest_step() is None:
        raise CheckpointError(
            f"{workdir} holds hopsupsup_tasks.npz from an earlier version of the runner; delete "
            "it (its tasks are trained again) or use another workdir")
    def restore(step, _):
        abstract = {"masks": [{p: np.zeros(w.shape, bool) for p, w in trainer.weights.items()}
                              for _ in range(step)]}
        return ckpts.restore_state(step, abstract)

    start, meta, state = resume_point(config, ckpts, restore)
    masks: list[Masks] = []
    given: list[float] = []
    wall: list[float] = []
    if meta is not None:
        masks = [{p: np.asarray(m) for p, m in ms.items()} for ms in state["masks"]]
        given, wall = meta["given"], meta["wall"]
    steps = steps_per_task(config, stream)
    for t in range(start, config.num_tasks):
        t0 = time.perf_counter()
        task = stream.task(t)
        zeros = {p: jnp.zeros(w.shape, w.dtype) for p, w in trainer.weights.items()}
        state = trainer.init_task(key_of(config, Stream.SCORE_INIT, t), scores=zeros)
        state = trainer.train_task(state, task.train_images, task.train_labels,
                                   key_of(config, Stream.TRAIN_BATCHES, t), steps,
                                   config.batch_size)
        masks.append({p: np.asarray(m) for p, m in trainer.masks(state.scores).items()})
        del state
        given.append(given_accuracy(masks[-1], t))
        wall.append(time.perf_counter() - t0)
        ckpts.save(t + 1, {"masks": masks}, {"config": record.comparable(config),
                                            "given": given, "wall": wall})
        if not config.quiet:
            print(f"task {t}: given-mask accuracy {given[-1]:.4f}, density "
                  f"{np.mean(np.concatenate(list(masks[-1].values()))):.3f}, "
                  f"{wall[-1]:.1f} s", flush=True)
    return masks, given, wall


def run(config, workdir: str | os.PathLike, ckpts) -> dict[str, Any]:
    """Train HopSupSup on SplitMNIST (or its Fashion twin) and recover every task's mask.

    Writes ``results.json`` and ``accuracy.csv`` (the GG matrix holds the accuracy with the
    task's mask given, the inferred matrix the accuracy with the mask recovered by the default
    method and rule), the usual plots and ``hopfield_recovery.png``. The extra key ``hopfield``
    holds, per recovery ``"method/rule"`` (``by_recovery``: the default and every combination of
    ``hopfield.compare_methods`` and ``hopfield.compare_rules``), each task's Hamming distance
    per step, steps to recover, energies, accuracy and the accuracies of the repeated passes;
    ``storage`` the bit counts.
    """
    workdir = os.fspath(workdir)
    start = time.perf_counter()
    stream = make_stream(config)
    network = build_network(config, stream)
    trainer = build_trainer(config, stream, network, is_masked=neuron_mask_filter)
    recs = _recoveries(config, network, trainer.preprocess)
    default = next(iter(recs))

    def test(i):
        return test_data_of(config, stream, i)

    def given_accuracy(m, t):
        return recs[default].accuracy(m, *test(t), key_of(config, Stream.EVALUATION, t))

    masks, given, wall = _train_tasks(config, stream, trainer, given_accuracy, ckpts, workdir)
    num = config.num_tasks
    train_secs = time.perf_counter() - start
    by_recovery = {name: _recover_all(config, rec, masks, test) for name, rec in recs.items()}
    main = by_recovery[default]
    recovered = [p["accuracy"] for p in main["per_task"]]
    rows = {str(t): {"gg": [None] * t + [given[t]]} for t in range(num - 1)}
    rows[str(num - 1)] = {
        "gg": list(given), "inferred": recovered,
        # 1 when the recovered mask is exactly the task's own stored mask.
        "task_inference": [float(p["nearest_stored_task"] == i and p["final_hamming"] == 0)
                           for i, p in enumerate(main["per_task"])]}
    widths = [int(w.shape[0]) for w in trainer.weights.values()]
    storage = {
        "layers": {p: hopfield.storage_bits(int(w.shape[0]), num)
                   for p, w in trainer.weights.items()},
        "hopfield_bits": sum(hopfield.storage_bits(d, num)["hopfield_bits"] for d in widths),
        "hopfield_symmetric_bits": sum(hopfield.storage_bits(d, num)["hopfield_symmetric_bits"]
                                       for d in widths),
        "mask_bits": num * sum(widths),
    }
    hc = config.hopfield
    res = record.results_dict(
        config, rows, wall, sum(widths) / 8, None,
        hopfield={"default_rule": hc.rule, "default_method": hc.method, "default": default,
                  "by_recovery": by_recovery,
                  "pairwise_mask_hamming": [[hamming(a, b) for b in masks] for a in masks],
                  "mask_density": [float(np.mean(np.concatenate(list(m.values()))))
                                   for m in masks]},
        storage=storage, train_wall_time=train_secs, provenance=record.provenance(stream),
        classes_per_task=stream.task(0).num_classes,
        total_wall_time=time.perf_counter() - start)
    results.write_results(workdir, res)
    plots.write_plots(res, workdir)
    plots.plot_hopfield_recovery(res, os.path.join(workdir, "hopfield_recovery.png"))
    return res


def _recover_all(config, rec: HopfieldRecovery, masks: list[Masks], test) -> dict:
    """Store every task's masks with ``rec.rule`` and recover each task from its test set with
    ``rec.method``."""
    t0 = time.perf_counter()
    memory = rec.init_memory()
    for m in masks:
        memory = rec.store(memory, m)
    jax.block_until_ready(memory)
    store_secs = time.perf_counter() - t0
    cands, cand_secs, cand_info = None, 0.0, None
    if rec.method == "attractor":  # from the networks alone, once for every task
        t0 = time.perf_counter()
        cands = rec.candidates(memory)
        cand_secs = time.perf_counter() - t0
        cand_info = {p: {"num_attractors": len(c),
                         # which stored mask (+1) or its negation (-1) each attractor is, if any
                         "is_stored": [next((s * (j + 1) for j, m in enumerate(masks)
                                             for s in (1, -1)
                                             if np.array_equal(s * c[k], hopfield.mask_to_pattern(
                                                 np.asarray(m[p])))), 0)
                                       for k in range(len(c))]}
                     for p, c in cands.items()}
    stored = {p: jnp.stack([jnp.asarray(m[p]) for m in masks]) for p in rec.weights}
    fixed = [bool(all(hopfield.is_fixed_point(memory[p], hopfield.mask_to_pattern(
        jnp.asarray(m[p]))) for p in rec.weights)) for m in masks]
    per_task = []
    for i, m in enumerate(masks):
        x, y = test(i)
        t1 = time.perf_counter()
        key = key_of(config, Stream.EVALUATION, i)
        r = rec.recover(memory, stored, x, key, true_masks=m, candidates=cands)
        acc = rec.accuracy(r.masks, x, y, key)
        nearest = int(np.argmin([hamming(r.masks, other) for other in masks]))
        per_task.append({
            "accuracy": acc,
            "hamming_per_step": r.hamming.tolist(),
            "final_hamming": int(r.hamming[-1]),
            "steps": len(r.hamming) - 1,
            "steps_to_recover": steps_to_recover(r.hamming),
            "num_candidates": r.num_candidates,
            "nearest_stored_task": nearest,
            "energy_per_step": r.energy.tolist(),
            "entropy_per_step": r.entropy.tolist(),
            "wall_time": time.perf_counter() - t1,
        })
    # The pass depends on the order of the test batches: repeat it with other shuffles.
    repeats, repeat_hamming = [], []
    for r in range(1, config.hopfield.repeats):
        accs, hams = [], []
        for i, m in enumerate(masks):
            x, y = test(i)
            key = jax.random.fold_in(key_of(config, Stream.EVALUATION, i), r)
            got = rec.recover(memory, stored, x, key, candidates=cands).masks
            accs.append(rec.accuracy(got, x, y, key))
            hams.append(hamming(got, m))
        repeats.append(accs)
        repeat_hamming.append(hams)
    acc = float(np.mean([p["accuracy"] for p in per_task]))
    return {"method": rec.method, "rule": rec.rule, "stored_are_fixed_points": fixed,
            "store_wall_time": store_secs, "attractor_wall_time": cand_secs,
            "attractors": cand_info,
            "per_task": per_task, "accuracy": acc,
            "repeat_accuracies": [[p["accuracy"] for p in per_task], *repeats],
            "repeat_final_hamming": [[p["final_hamming"] for p in per_task], *repeat_hamming],
            "mean_over_repeats": float(np.mean([np.mean(a) for a in [[acc], *repeats]]))}
