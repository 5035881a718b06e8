"""GG, GNu and GNs on PermutedFashionMNIST (or PermutedMNIST, or a rotated stream), with every
inference method.

Trains ``--num_tasks`` masks with the paper's protocol (FC 1024-1024, output 500, threshold
masks, RMSprop 1e-4, 1000 steps of batch 128 per task), stores them in a bit-packed bank
(``--bank``: saved, or loaded instead of training), then evaluates each task's test set
(shuffled, batches of 128) with the task given (GG) and inferred (GNu): One-Shot, Binary, the
shortlist rule and gradient descent on alpha with H and with G, deciding from one image (m=1)
or the full batch (m=128), and Exhaustive. ``--diagnose`` writes per-image gradient statistics
(``experiments/inference_diagnosis.py``).

The default run (10 tasks, One-Shot H and G with m=1 and G with m=128) takes about 4 minutes on
a 2-core CPU; every evaluation of the task-inference gate (about 10 minutes):

    python -m experiments.gnu_permuted --num_tasks 10 --steps 1000 --evals all --output gnu10.json
    python -m experiments.gnu_permuted --stream rotated --num_outputs 200 --num_tasks 36 \
        --bank rot36.npz --evals gnu_shortlist_h_m128 --diagnose rot36_diagnosis.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from experiments import inference_diagnosis
from supsup_jax import bank as bank_lib
from supsup_jax import masking, models, scenarios
from supsup_jax import train as train_lib
from supsup_jax.data import PermutedStream, RotatedStream, load_dataset
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
    ("gnu_binary_h_m128", "binary", "h", 128, False),
    ("gnu_binary_h_m1", "binary", "h", 1, False),
    ("gnu_shortlist_h_m1", "shortlist", "h", 1, False),
    ("gnu_shortlist_g_m1", "shortlist", "g", 1, False),
    ("gnu_shortlist_h_m128", "shortlist", "h", 128, False),
    ("gnu_shortlist_g_m128", "shortlist", "g", 128, False),
    ("gnu_descent_h_m1", "gradient_descent", "h", 1, False),
    ("gnu_descent_h_m128", "gradient_descent", "h", 128, False),
]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    p.add_argument("--data_dir", default=None)
    p.add_argument("--stream", default="permuted", choices=["permuted", "rotated"],
                   help="permuted pixels, or rotations by 10 degrees per task (paper Fig. 5)")
    p.add_argument("--interpolation", default="bilinear", choices=["bilinear", "nearest"],
                   help="rotation interpolation (rotated stream only)")
    p.add_argument("--bank", default=None,
                   help="an .npz mask bank: loaded if it exists (no training), else written "
                        "after training, so several evaluations share the same masks")
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
    p.add_argument("--shortlist", type=int, default=16,
                   help="tasks the shortlist rule re-ranks")
    p.add_argument("--rerank", default="s", choices=["h", "s"],
                   help="the objective the shortlist rule re-ranks by under each mask alone")
    p.add_argument("--layers", default="",
                   help="comma-separated masked-layer paths whose alpha-gradient terms rank "
                        "the tasks, e.g. layers/0/kernel (default: all layers)")
    p.add_argument("--eval_images", type=int, default=None,
                   help="evaluate inference on each task's first N test images (default all)")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--diagnose", default=None,
                   help="write per-image gradient and entropy statistics as JSON here "
                        "(experiments/inference_diagnosis.py)")
    p.add_argument("--diagnose_images", type=int, default=512,
                   help="test images per task for --diagnose")
    args = p.parse_args(argv)
    names = [e[0] for e in EVALS] if args.evals == "all" else args.evals.split(",")
    unknown = sorted(set(names) - {e[0] for e in EVALS})
    if unknown:
        p.error(f"unknown evaluations {unknown}")
    evals = [e for e in EVALS if e[0] in names]
    layers = tuple(args.layers.split(",")) if args.layers else None

    t0 = time.perf_counter()
    data = load_dataset(args.dataset, args.data_dir)
    stream = (PermutedStream(data, args.num_tasks, seed=args.seed) if args.stream == "permuted"
              else RotatedStream(data, args.num_tasks, interpolation=args.interpolation))
    network = models.get_model(args.model, num_outputs=args.num_outputs, seed=args.seed)
    preprocess = train_lib.make_preprocess(*input_statistics(args.normalization, stream))
    trainer = train_lib.Trainer(network, masking.make_mask_fn("threshold"),
                                train_lib.make_optimizer("rmsprop", args.lr), preprocess)
    key = jax.random.key(args.seed)
    if args.bank and os.path.exists(args.bank):
        bank = bank_lib.load_bank(args.bank, weights=trainer.weights)
        if int(bank.num_tasks) != args.num_tasks:
            p.error(f"{args.bank} holds {int(bank.num_tasks)} tasks, not --num_tasks "
                    f"{args.num_tasks}")
        gg = [float(trainer.evaluate(bank.task_masks(t), {}, stream.task(t).test_images,
                                     stream.task(t).test_labels))
              for t in range(args.num_tasks)]
        print(f"loaded {args.bank}: GG {np.mean(gg):.4f}", flush=True)
    else:
        bank, gg = _train(args, stream, trainer, key)
        if args.bank:
            bank_lib.save_bank(bank, args.bank)
    if args.diagnose:
        d = inference_diagnosis.diagnose(network, bank, stream, preprocess,
                                         args.diagnose_images)
        with open(args.diagnose, "w") as f:
            json.dump({"args": vars(args), "gg": gg, **d}, f)
        print(inference_diagnosis.summary(d), flush=True)
    results = {"args": vars(args), "gg": gg, "bank_bytes": bank.nbytes(),
               "bytes_per_task": bank.nbytes() / args.num_tasks}
    for name, method, objective, m, shared in evals:
        how = scenarios.TaskInference(method, objective, num_real=stream.dataset.num_classes, m=m,
                                      shortlist=args.shortlist, rerank=args.rerank,
                                      layers=layers if method != "exhaustive" else None)
        start = time.perf_counter()
        accs, task_accs = [], []
        for t in range(args.num_tasks):
            task = stream.task(t)
            r = scenarios.evaluate_unknown_task(
                network, bank, task.test_images[:args.eval_images],
                task.test_labels[:args.eval_images], t, how, preprocess,
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


def _train(args, stream, trainer, key):
    bank = bank_lib.MaskBank.create(trainer.weights, capacity=args.num_tasks)
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
    return bank, gg


if __name__ == "__main__":
    main(sys.argv[1:])
