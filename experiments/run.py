"""The one entry point: ``python -m experiments.run --config=NAME[:VARIANTS] --workdir=DIR``.

``NAME`` is a config of ``experiments/configs/`` (``--config=gnu_permuted:lenet,fashion``), or a
config file's path. Fields are overridden with ``--config.FIELD=VALUE`` (e.g.
``--config.num_tasks=5``); ``--help`` lists the configs, their variants and every field.
Re-running the same command on the same workdir resumes after the last finished task. Installed
as the console script ``supsup-run``.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
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
USAGE = ("usage: python -m experiments.run --config=NAME[:VARIANTS] --workdir=DIR "
         "[--config.FIELD=VALUE ...]")
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
CONFIGS_PACKAGE = "experiments.configs"

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


def config_names() -> list[str]:
    """The configs of ``experiments/configs/`` (every module but ``base``)."""
    return sorted(m.name for m in pkgutil.iter_modules([CONFIGS_DIR]) if m.name != "base")


def config_path(spec: str) -> str:
    """``NAME[:VARIANTS]`` as ``experiments/configs/NAME.py[:VARIANTS]``; a path (``.py`` or
    with a directory) is returned as it is."""
    name, sep, variants = spec.partition(":")
    if name.endswith(".py") or "/" in name or os.sep in name:
        return spec
    if name not in config_names():
        raise ValueError(f"no config named {name!r}; the configs are {config_names()} (or give "
                         "a config file's path)")
    return os.path.join(CONFIGS_DIR, name + ".py") + sep + variants


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in sorted(d.items()):
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]
    return out


def help_text() -> str:
    """What ``--help`` prints: flags, configs with their variants, every field's default."""
    from experiments.configs import base

    lines = [USAGE, "", "Runs (or resumes) one experiment: trains its tasks, evaluates them, "
             "writes WORKDIR/results.json and plots.", "", "flags:",
             "  --config=NAME[:VARIANTS]  a config below (or FILE[:VARIANTS], a config file)",
             "  --workdir=DIR             checkpoints and results; rerun to resume",
             "  --config.FIELD=VALUE      override a field (list below)",
             "  --coordinator_address=HOST:PORT --num_processes=N --process_id=I",
             "                            a multi-process (jax.distributed) run",
             "  --verbosity=1             tracebacks for user errors too", "",
             "configs (experiments/configs/; the variants tiny and fashion apply to all):"]
    for name in config_names():
        module = importlib.import_module(f"{CONFIGS_PACKAGE}.{name}")
        title = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
        title = title if len(title) <= 78 else title[:75].rsplit(" ", 1)[0] + " ..."
        variants = ", ".join(sorted(getattr(module, "VARIANTS", ()))) or "-"
        lines += [f"  {name:18s} {title}", f"  {'':18s} variants: {variants}"]
    lines += ["", "fields (--config.FIELD=VALUE; defaults of experiments/configs/base.py):"]
    lines += [f"  {k} = {v!r}" for k, v in _flat(base.base_config().to_dict())]
    return "\n".join(lines)


def _resolve_config_flag(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--config="):
            out[i] = "--config=" + config_path(a.split("=", 1)[1])
        elif a == "--config" and i + 1 < len(out):
            out[i + 1] = config_path(out[i + 1])
    return out


def console_main(argv=None):
    argv = sys.argv if argv is None else argv
    if any(a in ("--help", "-h", "--helpfull", "-?") for a in argv[1:]):
        print(help_text())
        sys.exit(0)
    try:
        argv = _resolve_config_flag(argv)
    except ValueError as e:
        print(USAGE, file=sys.stderr)
        _fail(e, code=2)
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
