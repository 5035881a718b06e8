"""GG evaluation of a whole accuracy row: the runner's one call over the bank's task axis
(:func:`supsup_jax.runner.learners.bank_gg`, ``Trainer.evaluate_bank``: ``lax.map`` on CPU,
``vmap`` elsewhere; both are timed) against the Python loop it replaced (per task: unpack the
task's mask from the bank, one ``Trainer.evaluate`` call).

All paths evaluate the same ``k`` tasks' random masks on their own test sets, measured in one
run (steady state: each path runs once before timing); the figures are the median of
``--repeats`` and the ratio loop / the runner's path.

    python benchmarks/gg_evaluation.py --out benchmarks/results/gg_evaluation.json
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np
from common import (  # benchmarks/ is on the path as a script
    cpu_description,
    median_seconds,
    write_result,
)

from supsup_jax import bank as bank_lib
from supsup_jax import masking, models
from supsup_jax import train as train_lib
from supsup_jax.runner.learners import bank_gg


def _time_paths(trainer, bank, images, labels, repeats):
    """Seconds for one row: the Python loop, ``lax.map`` and ``vmap`` over the bank's tasks."""
    k = len(images)

    def loop():
        stats = bank.task_batch_stats if trainer.network.has_bn else lambda t: {}
        return [float(trainer.evaluate(bank.task_masks(t), stats(t), images[t], labels[t]))
                for t in range(k)]

    def over_bank(in_sequence):
        def run():
            trainer.tasks_in_sequence = in_sequence  # the runner's choice, forced per path
            return bank_gg(trainer, bank, list(range(k)), lambda t: (images[t], labels[t]))
        return run

    reference = loop()
    times = {"python_loop_s": median_seconds(loop, repeats)}
    for name, in_sequence in (("bank_lax_map_s", True), ("bank_vmap_s", False)):
        np.testing.assert_allclose(over_bank(in_sequence)(), reference, atol=1e-6)  # same row
        times[name] = round(median_seconds(over_bank(in_sequence), repeats), 4)
    times["python_loop_s"] = round(times["python_loop_s"], 4)
    return times


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="lenet300_100,fc1024")
    p.add_argument("--tasks", default="10,50")
    p.add_argument("--examples", type=int, default=2000, help="test images per task")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/gg_evaluation.json")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    out = {"benchmark": "gg_evaluation", **cpu_description(),
           "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
           "examples_per_task": args.examples, "rows": []}
    for name in args.models.split(","):
        outputs = "num_classes" if name.startswith("gemresnet") else "num_outputs"
        net = models.get_model(name, **{outputs: 10})
        shape = net.input_shape
        preprocess = train_lib.make_preprocess((0.5,) * shape[-1], (0.25,) * shape[-1])
        trainer = train_lib.Trainer(net, masking.make_mask_fn("threshold"),
                                    train_lib.make_optimizer("rmsprop", 1e-4), preprocess)
        for k in map(int, args.tasks.split(",")):
            bank = bank_lib.MaskBank.create(trainer.weights, net.batch_stats or None, capacity=k)
            for t in range(k):
                scores = masking.init_scores(jax.random.key(t), net.params)
                bank = bank.add(trainer.masks(scores), net.batch_stats or None, donate=True)
            images = rng.integers(0, 255, (k, args.examples, *shape), dtype=np.uint8)
            labels = rng.integers(0, 10, (k, args.examples)).astype(np.int32)

            default = trainer.tasks_in_sequence
            times = _time_paths(trainer, bank, images, labels, args.repeats)
            trainer.tasks_in_sequence = default
            chosen = times["bank_lax_map_s" if default else "bank_vmap_s"]
            row = {"model": name, "tasks": k, **times,
                   "runner_path": "lax.map" if default else "vmap",
                   "loop_over_runner": round(times["python_loop_s"] / chosen, 2)}
            out["rows"].append(row)
            print(row, flush=True)
    write_result(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
