"""GG, GNu and GNs on PermutedFashionMNIST (or PermutedMNIST), with every inference method.

Trains ``--num_tasks`` masks with the paper's protocol (FC 1024-1024, output 500, threshold
masks, RMSprop 1e-4, 1000 steps of batch 128 per task), stores them in a bit-packed bank, then
evaluates each task's test set (shuffled, batches of 128) with the task given (GG) and inferred
(GNu): One-Shot with H and with G, deciding from one image (m=1) or the full batch (m=128), and
the task-inference accuracy of One-Shot, Binary and Exhaustive.

The default run (10 tasks, One-Shot H and G with m=1 and G with m=128) takes about 4 minutes on
a 2-core CPU; every evaluation of the task-inference gate (about 10 minutes):

    python -m experiments.gnu_permuted --num_tasks 10 --steps 1000 --evals all --output gnu10.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from supsup_jax import bank as bank_lib
from supsup_jax import masking, models, scenarios
from supsup_jax import train as train_lib
from supsup_jax.data import PermutedStream, load_dataset
from supsup_jax.runner.build import input_statistics

# (name, method, objective, m, shared labels)
EVALS = [
    ("gnu_oneshot_h_m1", "one_shot", "h", 1, False),
    ("gnu_oneshot_g_m1", "one_shot", "g", 1, False),
    ("gnu_oneshot_h_m128", "one_shot", "h", 128, False),
    ("gnu_oneshot_g_m128", "one_shot", "g", 128, False),
    ("gnu_binary_g_m128", "binary", "g", 128, False),
    ("gnu_exhaustive_m128", "exhaustive", "h", 128, False),
    ("gnu_binary_g_m1", "binary", "g", 1, False),
    ("gnu_exhaustive_m1", "exhaustive", "h", 1, False),
    ("gns_oneshot_g_m1", "one_shot", "g", 1, True),
]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    p.add_argument("--data_dir", default=None)
    p.add_argument("--model", default="fc1024", choices=["fc1024", "lenet300_100"])
    p.add_argument("--num_outputs", type=int, default=500)
    p.add_argument("--num_tasks", type=int, default=10)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--normalization", default="mnist", choices=["mnist", "dataset"],
                   help="input statistics: MNIST's (0.1307, 0.3081) as the official pipeline "
                        "uses for every PermutedMNIST-style run, or the dataset's own")
    p.add_argument("--evals", default="gnu_oneshot_h_m1,gnu_oneshot_g_m1,gnu_oneshot_g_m128",
                   help="'all' or a comma-separated subset of: "
                        + ", ".join(e[0] for e in EVALS))
    p.add_argument("--output", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    names = [e[0] for e in EVALS] if args.evals == "all" else args.evals.split(",")
    unknown = sorted(set(names) - {e[0] for e in EVALS})
    if unknown:
        p.error(f"unknown evaluations {unknown}")
    evals = [e for e in EVALS if e[0] in names]

    t0 = time.perf_counter()
    stream = PermutedStream(load_dataset(args.dataset, args.data_dir), args.num_tasks,
                            seed=args.seed)
    network = models.get_model(args.model, num_outputs=args.num_outputs, seed=args.seed)
    preprocess = train_lib.make_preprocess(*input_statistics(args.normalization, stream))
    trainer = train_lib.Trainer(network, masking.make_mask_fn("threshold"),
                                train_lib.make_optimizer("rmsprop", args.lr), preprocess)
    bank = bank_lib.MaskBank.create(trainer.weights, capacity=args.num_tasks)
    key = jax.random.key(args.seed)
    gg = []
    for t in range(args.num_tasks):
        task = stream.task(t)
        start = time.perf_counter()
        state = trainer.init_task(jax.random.fold_in(jax.random.fold_in(key, 0), t))
        state = trainer.train_task(state, task.train_images, task.train_labels,
                                   jax.random.fold_in(jax.random.fold_in(key, 1), t),
                                   args.steps, args.batch_size)
        masks = trainer.masks(state.scores)
        bank = bank.add(masks)
        gg.append(float(trainer.evaluate(masks, {}, task.test_images, task.test_labels)))
        print(f"task {t}: GG {gg[-1]:.4f} ({time.perf_counter() - start:.1f}s)", flush=True)

    results = {"args": vars(args), "gg": gg, "bank_bytes": bank.nbytes(),
               "bytes_per_task": bank.nbytes() / args.num_tasks}
    for name, method, objective, m, shared in evals:
        how = scenarios.TaskInference(method, objective, num_real=stream.dataset.num_classes, m=m)
        start = time.perf_counter()
        accs, task_accs = [], []
        for t in range(args.num_tasks):
            task = stream.task(t)
            r = scenarios.evaluate_unknown_task(
                network, bank, task.test_images, task.test_labels, t, how, preprocess,
                jax.random.fold_in(jax.random.fold_in(key, 2), t), shared_labels=shared)
            accs.append(r["accuracy"])
            task_accs.append(r["task_accuracy"])
        results[name] = {"accuracy": accs, "task_accuracy": task_accs,
                         "mean_accuracy": float(np.mean(accs)),
                         "mean_task_accuracy": float(np.mean(task_accs)),
                         "seconds": time.perf_counter() - start}
        print(f"{name:22s} accuracy {np.mean(accs):.4f}  task inference {np.mean(task_accs):.4f}"
              f"  ({time.perf_counter() - start:.1f}s)", flush=True)
    print(f"GG mean {np.mean(gg):.4f}; wall {time.perf_counter() - t0:.0f}s")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
