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
from supsup_jax.checkpoint import CheckpointError
from supsup_jax.data import DataNotFoundError
from supsup_jax.errors import ConfigError, NoTaskSignalError, TrainingDivergedError
from supsup_jax.runner import train_and_evaluate

# A user's mistake (or their data's): one line, no traceback unless --verbosity >= 1. Anything
# else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, CheckpointError, DataNotFoundError, NoTaskSignalError,
               TrainingDivergedError)
USAGE = ("usage: python -m experiments.run --config=FILE[:VARIANTS] --workdir=DIR "
         "[--config.FIELD=VALUE ...]")

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints and results")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for a multi-process run")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in a multi-process run")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's id, 0..num_processes-1")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    tracebacks = flags.FLAGS.verbosity >= 1  # asked for on the command line
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    try:
        res = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except USER_ERRORS as e:
        if tracebacks:
            raise
        _fail(e, code=1)
    if not distributed.is_primary():
        return
    print(results.format_table(res))
    print(f"results: {_WORKDIR.value}/results.json, {_WORKDIR.value}/accuracy.csv; plots: "
          f"{_WORKDIR.value}/*.png")


def _fail(error: Exception, code: int) -> None:
    text = " ".join(str(error).split()) if not isinstance(error, DataNotFoundError) else str(error)
    print(f"error: {text}", file=sys.stderr)
    sys.exit(code)


def console_main(argv=None):
    argv = sys.argv if argv is None else argv
    # Parsed once here so that a bad flag, config file, variant or --config.FIELD is one line
    # (absl and ml_collections would print chained tracebacks).
    try:
        remaining = flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
        if "-v" in argv or any(a.startswith(("--verbosity", "-v=")) for a in argv):
            raise
        message = str(e).strip("\"'")
        if "Traceback" in message:  # a config file's own error: its last line says what
            lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
            message = f"{message.split(':')[0]}: {lines[-1]}"
        if isinstance(e, AttributeError | KeyError):
            message = f"no such config field {message!r} (see experiments/configs/base.py)"
        print(USAGE, file=sys.stderr)
        _fail(ValueError(message), code=2)
    if not flags.FLAGS.config or not flags.FLAGS.workdir:
        print(USAGE, file=sys.stderr)
        _fail(ValueError("--config and --workdir are required"), code=2)
    app.run(main, argv=argv, flags_parser=lambda _: remaining)


if __name__ == "__main__":
    console_main()
