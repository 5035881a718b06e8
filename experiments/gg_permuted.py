"""GG on PermutedFashionMNIST (or PermutedMNIST): one mask per task, task identity given.

The paper's protocol (SPEC 2.2): FC 1024-1024 with output 500, threshold masks, signed Kaiming
constant weights, RMSprop lr 1e-4, 1000 steps of batch 128 per task, no schedule. Prints one line
per task and the final GG accuracy of every task (evaluated together, vmapped over tasks).

Reproduce the accuracy gate of the core issue (5 tasks, about 2 minutes on a 2-core CPU):

    python -m experiments.gg_permuted --num_tasks 5 --steps 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from experiments.common import normalization
from supsup_jax import masking, models
from supsup_jax import train as train_lib
from supsup_jax.data import PermutedStream, load_dataset


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    p.add_argument("--data_dir", default=None)
    p.add_argument("--model", default="fc1024", choices=["fc1024", "lenet300_100"])
    p.add_argument("--num_outputs", type=int, default=500)
    p.add_argument("--num_tasks", type=int, default=5)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--normalization", default="mnist", choices=["mnist", "dataset"],
                   help="input statistics: MNIST's (0.1307, 0.3081) as the official pipeline "
                        "uses for every PermutedMNIST-style run, or the dataset's own")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    dataset = load_dataset(args.dataset, args.data_dir)
    stream = PermutedStream(dataset, args.num_tasks, seed=args.seed)
    network = models.get_model(args.model, num_outputs=args.num_outputs, seed=args.seed)
    trainer = train_lib.Trainer(
        network,
        masking.make_mask_fn("threshold"),
        train_lib.make_optimizer("rmsprop", args.lr),
        train_lib.make_preprocess(*normalization(args, stream)),
    )
    print(f"{args.dataset}: loaded in {time.perf_counter() - t0:.2f}s; {args.model} "
          f"(output {network.num_outputs}) on {jax.devices()[0].platform}", flush=True)

    key = jax.random.key(args.seed)
    masks, right_after, test_sets = [], [], []
    for t in range(args.num_tasks):
        task = stream.task(t)
        start = time.perf_counter()
        state = trainer.init_task(jax.random.fold_in(jax.random.fold_in(key, 0), t))
        state = trainer.train_task(state, task.train_images, task.train_labels,
                                   jax.random.fold_in(jax.random.fold_in(key, 1), t),
                                   args.steps, args.batch_size)
        m = trainer.masks(state.scores)
        acc = float(trainer.evaluate(m, {}, task.test_images, task.test_labels))
        secs = time.perf_counter() - start
        masks.append(m)
        right_after.append(acc)
        test_sets.append(task)
        print(f"task {t}: GG accuracy {acc:.4f}  ({args.steps / secs:.0f} steps/s, {secs:.1f}s)",
              flush=True)

    final = np.asarray(trainer.evaluate_tasks(
        train_lib.stack_tasks(masks), {},
        np.stack([t.test_images for t in test_sets]),
        np.stack([t.test_labels for t in test_sets])))
    print("final GG accuracy per task:", " ".join(f"{a:.4f}" for a in final))
    print(f"mean {final.mean():.4f}  min {final.min():.4f}  "
          f"wall {time.perf_counter() - t0:.1f}s")
    result = {"args": vars(args), "gg_accuracy": final.tolist(), "mean": float(final.mean())}
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
