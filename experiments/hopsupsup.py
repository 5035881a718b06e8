"""HopSupSup: ``python -m experiments.hopsupsup --config=FILE[:VARIANTS] --workdir=DIR``.

Fields are overridden with ``--config.FIELD=VALUE`` (e.g. ``--config.hopfield.rule=hebbian``).
Writes ``results.json``, ``accuracy.csv``, the usual plots and ``hopfield_recovery.png``.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from supsup_jax import results
from supsup_jax.hopsupsup import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "HopSupSup config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for the results")
flags.mark_flags_as_required(["config", "workdir"])


def summary(res) -> str:
    """Per task: accuracy with the mask given and recovered (every method/rule), steps,
    Hamming."""
    hop = res["hopfield"]
    lines = [results.format_table(res)]
    given = res["accuracy_matrix"][-1]
    for name, r in hop["by_recovery"].items():
        lines.append(f"{name}{' (default)' if name == hop['default'] else ''}: "
                     f"recovered accuracy {r['accuracy']:.4f}, stored masks fixed points "
                     f"{r['stored_are_fixed_points']}; mean over {len(r['repeat_accuracies'])} "
                     f"test shuffles {r['mean_over_repeats']:.4f}")
        for i, p in enumerate(r["per_task"]):
            lines.append(f"  task {i}: given {given[i]:.4f}, recovered {p['accuracy']:.4f}, "
                         f"Hamming start {p['hamming_per_step'][0]} -> final "
                         f"{p['final_hamming']} (nearest stored task {p['nearest_stored_task']}), "
                         f"steps to recover {p['steps_to_recover']} of {p['steps']}, "
                         f"{p['wall_time']:.2f} s")
    s = res["storage"]
    lines.append(f"storage: Hopfield {s['hopfield_bits']:,} bits ({s['hopfield_symmetric_bits']:,}"
                 f" symmetric half) vs stacked masks {s['mask_bits']:,} bits")
    lines.append(f"wall time: training {res['train_wall_time']:.1f} s, total "
                 f"{res['total_wall_time']:.1f} s")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    res = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print(summary(res))
    print(f"results: {_WORKDIR.value}/results.json; plots: {_WORKDIR.value}/*.png")


if __name__ == "__main__":
    app.run(main, argv=sys.argv)
