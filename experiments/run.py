"""The one entry point: ``python -m experiments.run --config=FILE[:VARIANTS] --workdir=DIR``.

Fields are overridden with ``--config.FIELD=VALUE`` (e.g. ``--config.num_tasks=5``). Re-running
the same command on the same workdir resumes after the last finished task. Installed as the
console script ``supsup-run``.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from supsup_jax import distributed, results
from supsup_jax.runner import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints and results")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for a multi-process run")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in a multi-process run")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's id, 0..num_processes-1")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    res = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if not distributed.is_primary():
        return
    print(results.format_table(res))
    print(f"results: {_WORKDIR.value}/results.json, {_WORKDIR.value}/accuracy.csv; plots: "
          f"{_WORKDIR.value}/*.png")


def console_main():
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    console_main()
