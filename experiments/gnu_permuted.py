"""GG, GNu and GNs on PermutedFashionMNIST (or PermutedMNIST, or a rotated stream), with every
inference method.

Trains ``--config.num_tasks`` masks with the paper's protocol (FC 1024-1024, output 500,
threshold masks, RMSprop 1e-4, 1000 steps of batch 128 per task), stores them in a bit-packed
bank (``--config.bank``: saved, or loaded instead of training), then evaluates each task's test set
(shuffled, batches of 128) with the task given (GG) and inferred (GNu): One-Shot, Binary, the
shortlist rule and gradient descent on alpha with H and with G, deciding from one image (m=1)
or the full batch (m=128), and Exhaustive. ``--config.diagnose`` writes per-image gradient
statistics (``experiments/inference_diagnosis.py``). Options are ``--config.NAME=VALUE``, as for
the runner; ``--help`` lists them.

The default run (10 tasks, One-Shot H and G with m=1 and G with m=128) takes about 4 minutes on
a 2-core CPU; every evaluation of the task-inference gate (about 10 minutes):

    python -m experiments.gnu_permuted --config.num_tasks=10 --config.evals=all \
        --config.output=gnu10.json
    python -m experiments.gnu_permuted --config.stream=rotated --config.num_outputs=200 \
        --config.num_tasks=36 --config.bank=rot36.npz --config.evals=gnu_shortlist_h_m128 \
        --config.diagnose=rot36_diagnosis.json
"""

from __future__ import annotations

import json
import os
import sys
import time
import types

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


# --config.NAME=VALUE options: name -> (default, type, allowed values or None, help).
OPTIONS = {
    "dataset": ("fashion_mnist", str, ("fashion_mnist", "mnist"), "the data"),
    "data_dir": (None, str, None, "a directory holding it (default: the usual places)"),
    "stream": ("permuted", str, ("permuted", "rotated"),
               "permuted pixels, or rotations by 10 degrees per task (paper Fig. 5)"),
    "interpolation": ("bilinear", str, ("bilinear", "nearest"),
                      "rotation interpolation (rotated stream only)"),
    "bank": (None, str, None, "an .npz mask bank: loaded if it exists (no training), else "
             "written after training, so several evaluations share the same masks"),
    "model": ("fc1024", str, ("fc1024", "lenet300_100"), "the network"),
    "num_outputs": (500, int, None, "output width (real classes plus superfluous neurons)"),
    "num_tasks": (10, int, None, "tasks learned"),
    "steps": (1000, int, None, "optimiser steps per task"),
    "batch_size": (128, int, None, "training batch size"),
    "lr": (1e-4, float, None, "RMSprop learning rate"),
    "seed": (0, int, None, "stream, weights and keys"),
    "normalization": ("mnist", str, ("mnist", "dataset"),
                      "input statistics: MNIST's (0.1307, 0.3081), as the official pipeline "
                      "uses for every PermutedMNIST-style run, or the dataset's own"),
    "evals": ("gnu_oneshot_h_m1,gnu_oneshot_g_m1,gnu_oneshot_g_m128", str, None,
              "'all' or a comma-separated subset of: " + ", ".join(e[0] for e in EVALS)),
    "shortlist": (16, int, None, "tasks the shortlist rule re-ranks"),
    "rerank": ("s", str, ("h", "s"),
               "the objective the shortlist rule re-ranks by under each mask alone"),
    "layers": ("", str, None, "comma-separated masked-layer paths whose alpha-gradient terms "
               "rank the tasks, e.g. layers/0/kernel (default: all layers)"),
    "eval_images": (None, int, None, "evaluate on each task's first N test images (all)"),
    "output": (None, str, None, "write the results as JSON here"),
    "diagnose": (None, str, None, "write per-image gradient and entropy statistics as JSON "
                 "here (experiments/inference_diagnosis.py)"),
    "diagnose_images": (512, int, None, "test images per task for diagnose"),
}


def _usage_error(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv) -> types.SimpleNamespace:
    """``--config.NAME=VALUE`` arguments (the runner's style) over :data:`OPTIONS`' defaults;
    ``--help`` lists them."""
    values = {name: option[0] for name, option in OPTIONS.items()}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__.split("\n\n")[0] + "\n\noptions (--config.NAME=VALUE):")
            for name, (default, _, allowed, text) in OPTIONS.items():
                print(f"  {name} = {default!r}{f' {allowed}' if allowed else ''}: {text}")
            sys.exit(0)
        name, sep, text = arg.removeprefix("--config.").partition("=")
        if not arg.startswith("--config.") or not sep:
            _usage_error(f"expected --config.NAME=VALUE, got {arg!r}")
        if name not in OPTIONS:
            _usage_error(f"no option {name!r}; the options are {sorted(OPTIONS)}")
        _, kind, allowed, _ = OPTIONS[name]
        try:
            value = kind(text)
        except ValueError:
            _usage_error(f"--config.{name}={text!r}: not a {kind.__name__}")
        if allowed and value not in allowed:
            _usage_error(f"--config.{name}={text!r}: choose one of {allowed}")
        values[name] = value
    return types.SimpleNamespace(**values)


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = [e[0] for e in EVALS] if args.evals == "all" else args.evals.split(",")
    unknown = sorted(set(names) - {e[0] for e in EVALS})
    if unknown:
        _usage_error(f"unknown evaluations {unknown}")
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
            _usage_error(f"{args.bank} holds {int(bank.num_tasks)} tasks, not "
                         f"--config.num_tasks={args.num_tasks}")
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
