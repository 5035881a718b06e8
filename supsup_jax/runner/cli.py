"""The command line: ``supsup-run`` / ``python -m experiments.run --config=NAME[:VARIANTS]
--workdir=DIR``.

``NAME`` is a config of the repository's ``experiments/configs/`` (``--config=gnu_permuted:lenet,
fashion``; an installed wheel ships them as ``supsup_jax.configs``), or a config file's path.
Fields are overridden with ``--config.FIELD=VALUE`` (e.g. ``--config.num_tasks=5``); ``--help``
lists the configs, their variants and every field. Re-running the same command on the same
workdir resumes after the last finished task. ``--reevaluate=SOURCE`` evaluates a finished
SupSup run's masks with another task inference instead (:mod:`supsup_jax.runner.reevaluate`).
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
from supsup_jax.runner.reevaluate import reevaluate

# A user's mistake (or their data's): one line, no traceback unless --verbosity >= 1. Anything
# else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, CheckpointError, DataNotFoundError, NoTaskSignalError,
               TrainingDivergedError)
USAGE = ("usage: supsup-run (or python -m experiments.run) --config=NAME[:VARIANTS] "
         "--workdir=DIR [--config.FIELD=VALUE ...]")
# Where the named configs live: the checkout's package, else the wheel's copy of it.
CONFIG_PACKAGES = ("experiments.configs", "supsup_jax.configs")


def _define_flags() -> None:
    """The command line's flags, defined when it runs (importing this module registers none)."""
    if "workdir" in flags.FLAGS:
        return
    flags.DEFINE_string("workdir", None, "directory for checkpoints and results")
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0, for a multi-process run")
    flags.DEFINE_integer("num_processes", None, "processes in a multi-process run")
    flags.DEFINE_integer("process_id", None, "this process's id, 0..num_processes-1")
    flags.DEFINE_string("reevaluate", None, "a SupSup GNu/GNs run's workdir: evaluate its "
                        "learned masks with this config's inference, without training")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    tracebacks = flags.FLAGS.verbosity >= 1  # asked for on the command line
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    f = flags.FLAGS
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)
    try:
        if f.reevaluate:
            res = reevaluate(f.config, f.reevaluate, f.workdir)
        else:
            res = train_and_evaluate(f.config, f.workdir)
    except USER_ERRORS as e:
        if tracebacks:
            raise
        _fail(e, code=1)
    if not distributed.is_primary():
        return
    print(results.format_table(res))
    print(f"results: {f.workdir}/results.json, {f.workdir}/accuracy.csv; plots: "
          f"{f.workdir}/*.png")


def _fail(error: Exception, code: int) -> None:
    text = " ".join(str(error).split()) if not isinstance(error, DataNotFoundError) else str(error)
    print(f"error: {text}", file=sys.stderr)
    sys.exit(code)


def configs_package():
    """The package of the named configs (:data:`CONFIG_PACKAGES`: the first importable)."""
    for name in CONFIG_PACKAGES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(f"no config package: neither of {CONFIG_PACKAGES} is importable")


def config_names() -> list[str]:
    """The named configs (every module of the config package but ``base``)."""
    return sorted(m.name for m in pkgutil.iter_modules(configs_package().__path__)
                  if m.name != "base")


def named_config(spec: str) -> str | None:
    """The config name in ``NAME[:VARIANTS]``, also for a path to one of the named configs'
    files; None for another file's path."""
    name = spec.partition(":")[0]
    if name.endswith(".py") or "/" in name or os.sep in name:
        path = os.path.realpath(name)
        here = {os.path.realpath(d) for d in configs_package().__path__}
        stem = os.path.splitext(os.path.basename(path))[0]
        return stem if os.path.dirname(path) in here else None
    if name not in config_names():
        raise ValueError(f"no config named {name!r}; the configs are {config_names()} (or give "
                         "a config file's path)")
    return name


def load_config(name: str, variants: str | None = None):
    """``get_config(variants)`` of the named config."""
    package = configs_package().__name__
    return importlib.import_module(f"{package}.{name}").get_config(variants or None)


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in sorted(d.items()):
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]
    return out


def help_text() -> str:
    """What ``--help`` prints: flags, configs with their variants, every field's default."""
    base = importlib.import_module(f"{configs_package().__name__}.base")
    lines = [USAGE, "", "Runs (or resumes) one experiment: trains its tasks, evaluates them, "
             "writes WORKDIR/results.json and plots.", "", "flags:",
             "  --config=NAME[:VARIANTS]  a config below (or FILE[:VARIANTS], a config file)",
             "  --workdir=DIR             checkpoints and results; rerun to resume",
             "  --config.FIELD=VALUE      override a field (list below)",
             "  --coordinator_address=HOST:PORT --num_processes=N --process_id=I",
             "                            a multi-process (jax.distributed) run",
             "  --reevaluate=SOURCE       evaluate the SupSup GNu/GNs run in SOURCE with this",
             "                            config's inference (fields inference, eval_at,",
             "                            test_batch_size, max_eval_examples, name), no",
             "                            training",
             "  --verbosity=1             tracebacks for user errors too", "",
             "configs (experiments/configs/; the variants tiny and fashion apply to all):"]
    package = configs_package()
    for name in config_names():
        module = importlib.import_module(f"{package.__name__}.{name}")
        title = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
        title = title if len(title) <= 78 else title[:75].rsplit(" ", 1)[0] + " ..."
        variants = ", ".join(sorted(getattr(module, "VARIANTS", ()))) or "-"
        lines += [f"  {name:18s} {title}", f"  {'':18s} variants: {variants}"]
    lines += ["", "fields (--config.FIELD=VALUE; defaults of experiments/configs/base.py):"]
    lines += [f"  {k} = {v!r}" for k, v in _flat(base.base_config().to_dict())]
    return "\n".join(lines)


def _define_config_flag(argv: list[str]) -> list[str]:
    """Define ``--config`` for this command line: a named config is loaded here (its modules
    import each other as a package) and becomes a config-dict flag, so ``--config.FIELD``
    overrides work the same; a config file goes through ml_collections' file flag. Returns the
    command line that absl parses."""
    specs = [(i, a.split("=", 1)[1]) for i, a in enumerate(argv) if a.startswith("--config=")]
    if "config" in flags.FLAGS:  # defined by an earlier call in this process
        delattr(flags.FLAGS, "config")
    name = named_config(specs[-1][1]) if specs else None
    if name is None:
        config_flags.DEFINE_config_file("config", None, "experiment config file",
                                        lock_config=True)
        return argv
    config = load_config(name, specs[-1][1].partition(":")[2])
    config_flags.DEFINE_config_dict("config", config, "experiment config", lock_config=True,
                                    sys_argv=list(argv))
    flags.FLAGS["config"].parse(config)  # defines the --config.FIELD overrides found in argv
    return [a for i, a in enumerate(argv) if i not in {j for j, _ in specs}]


def console_main(argv=None):
    argv = sys.argv if argv is None else argv
    if any(a in ("--help", "-h", "--helpfull", "-?") for a in argv[1:]):
        print(help_text())
        sys.exit(0)
    _define_flags()
    given = any(a.startswith("--config=") for a in argv)
    # Parsed once here so that a bad name, flag, config file, variant or --config.FIELD is one
    # line (absl and ml_collections would print chained tracebacks).
    try:
        remaining = flags.FLAGS(_define_config_flag(argv))
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
    if not given or not flags.FLAGS.workdir:
        print(USAGE, file=sys.stderr)
        _fail(ValueError("--config and --workdir are required"), code=2)
    app.run(main, argv=argv, flags_parser=lambda _: remaining)


if __name__ == "__main__":
    console_main()
