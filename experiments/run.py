"""The one entry point: ``python -m experiments.run --config=NAME[:VARIANTS] --workdir=DIR``
(``supsup-run`` when installed); see :mod:`supsup_jax.runner.cli` and ``--help``."""

from supsup_jax.runner.cli import console_main

if __name__ == "__main__":
    console_main()
