"""Another task inference on a SupSup run's learned masks, without training them again.

``reevaluate(config, source, workdir)`` restores the newest checkpoint of the SupSup GNu/GNs
run in ``source`` and writes to ``workdir`` the results that run would have written had it
evaluated with ``config``: the same rows as :func:`supsup_jax.runner.tasks.run_tasks` (every
learned task at each evaluation point, else the new task alone) for the tasks ``source`` has
finished. Row ``t`` uses the bank cut to its first ``t + 1`` masks: in GNu and GNs a task's mask
never changes once learned, so that is the bank the run held after task ``t``. The evaluation
keys are the run's own (:mod:`supsup_jax.runner.keys`), so with ``source``'s own config and the
same code the rows equal ``source``'s (the bank's kernels may round differently in another
version, which can flip a near-tie).

``config`` must be ``source``'s config up to :data:`EVALUATION_FIELDS` (e.g. a 2500-task run
with One-Shot H re-evaluated with ``inference.objective="g"``). ``source`` is locked while it is
read: a run still training there is an error. The rows finished at each evaluation point are
kept in ``workdir/reevaluation.json`` with the digest of the masks they used, so an interrupted
re-evaluation resumes from the last one, and re-evaluating the same run after more tasks (or a
copy of it taken mid-run, then the run itself) evaluates only the new rows. ``workdir`` may not
hold a training run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import distributed, plots, results
from supsup_jax.checkpoint import CheckpointError, RunCheckpoints
from supsup_jax.errors import ConfigError
from supsup_jax.runner import build, learners, record, validate
from supsup_jax.runner.build import eval_points

__all__ = ["EVALUATION_FIELDS", "reevaluate"]

# The fields a re-evaluation may change: they select how the learned masks are evaluated.
EVALUATION_FIELDS = ("name", "inference", "eval_at", "test_batch_size", "max_eval_examples")
ROWS_FILE = "reevaluation.json"


def _as_source(stored: str, config) -> str:
    """``source``'s stored fingerprint with ``config``'s evaluation fields, for
    :func:`record.check_resumable` (so every other difference is named as a resume would)."""
    old, now = json.loads(stored), json.loads(record.comparable(config))
    for k in EVALUATION_FIELDS:
        old.pop(k, None)
        if k in now:
            old[k] = now[k]
    return json.dumps(old, sort_keys=True)


def _bank_digest(bank, tasks: int) -> str:
    """SHA-256 of the first ``tasks`` slots of ``bank`` (bits and BN statistics): what a row
    ``t < tasks`` was evaluated with."""
    h = hashlib.sha256()
    for path in sorted(bank.bits):
        h.update(path.encode())
        h.update(np.asarray(bank.bits[path][:tasks]).tobytes())
    for leaf in jax.tree.leaves(bank.batch_stats):
        h.update(np.asarray(leaf[:tasks]).tobytes())
    return h.hexdigest()


def _saved_rows(workdir: str, config, bank, done: int) -> dict:
    """The rows saved in ``workdir`` if they belong to ``config`` and to this run's first
    ``done`` masks (the saved run may have had fewer tasks: its rows are rows of this one)."""
    path = os.path.join(workdir, ROWS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        saved = json.load(f)
    fp = saved.get("fingerprint", {})
    tasks = fp.get("tasks")
    if fp.get("config") != record.comparable(config):
        why = "another config"
    elif not isinstance(tasks, int) or tasks > done:
        why = f"{tasks} tasks, more than the {done} this run has finished"
    elif fp.get("bank") != _bank_digest(bank, tasks):
        why = f"other masks than this run's first {tasks}"
    else:
        return record.unpack_rows(saved["rows"])
    raise CheckpointError(f"{path} holds a re-evaluation of another run or config ({why}); use "
                          "another workdir or delete that file")


def _save_rows(workdir: str, fingerprint: dict, rows: dict) -> None:
    if distributed.is_primary():
        text = json.dumps({"fingerprint": fingerprint, "rows": record.pack_rows(rows)})
        results.atomic_write(pathlib.Path(workdir, ROWS_FILE), lambda f: f.write(text))


def reevaluate(config, source: str | os.PathLike, workdir: str | os.PathLike) -> dict:
    """Evaluate the masks of the SupSup GNu/GNs run in ``source`` with ``config`` (see the
    module docstring) and write ``results.json``, ``accuracy.csv`` and plots into ``workdir``.

    Returns the results dict; ``reevaluated_from`` names ``source`` and its finished tasks.

    Raises:
      ConfigError: ``config`` is not a SupSup GNu/GNs run, ``workdir`` is ``source`` or holds
        a training run, or no evaluation point falls within the tasks ``source`` finished.
      CheckpointError: ``source`` has no checkpoint, is in use, or ran another config (beyond
        :data:`EVALUATION_FIELDS`).
    """
    validate.check_config(config)
    build.check_method(config)
    if config.method != "supsup" or config.scenario not in ("GNu", "GNs"):
        raise ConfigError(f"re-evaluation takes a SupSup GNu or GNs run; this config is method "
                          f"{config.method!r}, scenario {config.scenario!r}")
    source, workdir = os.path.abspath(os.fspath(source)), os.path.abspath(os.fspath(workdir))
    if source == workdir:
        raise ConfigError(f"the re-evaluation would overwrite its source {source}: give "
                          "another workdir")
    if not os.path.isdir(os.path.join(source, "checkpoints")):
        raise CheckpointError(f"{source} holds no run (no checkpoints/ folder)")
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise ConfigError(f"{workdir} holds a training run, whose results the re-evaluation "
                          "would overwrite: give another workdir")
    stream = build.make_stream(config)
    validate.check_against_stream(config, stream)
    trainer = build.build_trainer(config, stream, build.build_network(config, stream))
    learner = learners.SupSupLearner(config, stream, trainer)
    try:
        ckpts = RunCheckpoints(source)
    except OSError as e:  # e.g. a read-only source: its lock cannot be taken
        raise CheckpointError(f"cannot open the run in {source}: {e}") from None
    try:
        check = lambda meta: record.check_resumable(_as_source(meta["config"], config), config,
                                                    source)
        done, meta, state = ckpts.resume(
            check, lambda step, meta: learner.restore(ckpts, step, learner.init(), meta))
    finally:
        ckpts.close()
    if meta is None:
        raise CheckpointError(f"{source} has no finished task to re-evaluate")
    points = eval_points(config)
    if not any(p <= done for p in points):
        raise ConfigError(f"{source} finished {done} tasks, before the first evaluation point "
                          f"{min(points)} (config field eval_at)")
    bank = state["bank"]
    rows = _saved_rows(workdir, config, bank, done)
    fingerprint = {"source": source, "tasks": done, "config": record.comparable(config),
                   "bank": _bank_digest(bank, done)}
    os.makedirs(workdir, exist_ok=True)
    test_set = build.test_sets(config, stream)
    t0 = time.perf_counter()
    for t in range(done):
        if str(t) in rows:
            continue
        cut = dataclasses.replace(bank, num_tasks=jnp.int32(t + 1))  # the bank after task t
        rows[str(t)] = learner.row({**state, "bank": cut}, t, test_set,
                                   only=None if t + 1 in points else t)
        if t + 1 in points or t + 1 == done:
            _save_rows(workdir, fingerprint, rows)
            if not config.quiet:
                inf = rows[str(t)]["inferred"]
                what = (f"{config.scenario} over learned {sum(inf) / len(inf):.4f}"
                        if None not in inf else f"new task {inf[t]:.4f}")
                print(f"re-evaluated after {t + 1} tasks: {what} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    res = record.results_dict(
        config, rows, meta["wall"], learner.bytes_per_task(state, done), None,
        provenance=record.provenance(stream), classes_per_task=stream.task(0).num_classes,
        reevaluated_from={"workdir": source, "tasks": done})
    if distributed.is_primary():
        results.write_results(workdir, res)
        plots.write_plots(res, workdir)
    return res
