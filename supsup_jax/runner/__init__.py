"""The experiment runner, above the library: ``train_and_evaluate(config, workdir)`` runs (or
resumes) one continual-learning run and writes its results.

Nothing in the library imports this package. Its modules: :mod:`.keys` (named random streams),
:mod:`.build` (config -> stream, network, trainer), :mod:`.learners` (SupSup and the baselines
behind one protocol), :mod:`.tasks` (the one task loop, and scenario NNs), :mod:`.hopsupsup`
(HopSupSup's train-store-recover protocol), :mod:`.record` (config fingerprint, results dict)
and :mod:`.progress` (progress bars, TensorBoard). Every config field is declared, with its
default, in ``experiments/configs/base.py``.

The workdir receives ``results.json``, ``accuracy.csv``, PNG plots and ``checkpoints/``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from supsup_jax.checkpoint import RunCheckpoints
from supsup_jax.runner import build, hopsupsup, learners, tasks, validate

__all__ = ["train_and_evaluate"]


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """Run (or resume) the experiment ``config`` in ``workdir`` and return its results dict.

    ``config.method`` picks SupSup (``"supsup"``; scenario NNs has its own loop), a baseline of
    :data:`supsup_jax.baselines.METHODS` or ``"hopsupsup"``.

    Raises:
      ConfigError: a field's value no run can use (the message names it).
      CheckpointError: the workdir holds a checkpoint of a different config, or a corrupt one.
      TrainingDivergedError: a task's loss or scores became NaN or infinite.
      NoTaskSignalError: task inference got no information (e.g. G without spare outputs).
    """
    validate.check_config(config)
    build.check_method(config)
    workdir = os.fspath(workdir)
    if config.method == "hopsupsup":
        with _checkpoints(workdir) as ckpts:
            return hopsupsup.run(config, workdir, ckpts)
    stream = build.make_stream(config)
    validate.check_against_stream(config, stream)  # before anything is written
    trainer = build.build_trainer(config, stream, build.build_network(config, stream))
    with _checkpoints(workdir) as ckpts:
        if config.scenario == "NNs" and config.method == "supsup":
            return tasks.run_nns(config, workdir, stream, trainer, ckpts)
        learner = (learners.SupSupLearner if config.method == "supsup"
                   else learners.BaselineLearner)(config, stream, trainer)
        return tasks.run_tasks(config, workdir, stream, learner, ckpts)


@contextlib.contextmanager
def _checkpoints(workdir: str):
    os.makedirs(workdir, exist_ok=True)
    ckpts = RunCheckpoints(workdir)
    try:
        yield ckpts
    finally:
        ckpts.close()
