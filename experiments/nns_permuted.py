"""NNs on PermutedFashionMNIST (or PermutedMNIST): masks allocated from an unlabelled stream.

The paper's NNs setting (SPEC 1.7): LeNet 300-100 with output 500, threshold masks, RMSprop 1e-4,
batches of 128, a decision every 100 batches with eps = 2^-3, One-Shot H on one image per test
batch against shared labels. The stream visits the true tasks in order, ``--steps`` batches each;
the learner never sees the task index or the boundaries.

Reproduce (5 tasks, about 2 minutes on a 2-core CPU):

    python -m experiments.nns_permuted --num_tasks 5 --steps 1000 --output nns5.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from experiments.common import normalization
from supsup_jax import masking, models, nns, scenarios
from supsup_jax import train as train_lib
from supsup_jax.data import BatchIterator, PermutedStream, load_dataset


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    p.add_argument("--data_dir", default=None)
    p.add_argument("--num_outputs", type=int, default=500)
    p.add_argument("--num_tasks", type=int, default=5)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--decide_every", type=int, default=100)
    p.add_argument("--budget", type=int, default=None, help="mask budget (default 2x tasks)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--normalization", default="mnist", choices=["mnist", "dataset"],
                   help="input statistics: MNIST's (0.1307, 0.3081) as the official pipeline "
                        "uses for every PermutedMNIST-style run, or the dataset's own")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    stream = PermutedStream(load_dataset(args.dataset, args.data_dir), args.num_tasks,
                            seed=args.seed)
    network = models.lenet300_100(num_outputs=args.num_outputs, seed=args.seed)
    preprocess = train_lib.make_preprocess(*normalization(args, stream))
    trainer = train_lib.Trainer(network, masking.make_mask_fn("threshold"),
                                train_lib.make_optimizer("rmsprop", args.lr), preprocess,
                                chunk_size=args.decide_every)
    learner = nns.NNsLearner(trainer, budget=args.budget or 2 * args.num_tasks,
                             key=jax.random.key(args.seed))
    slots_per_task = []
    for gt in range(args.num_tasks):
        task = stream.task(gt)
        it = BatchIterator(len(task.train_labels), 128,
                           jax.random.fold_in(jax.random.key(args.seed + 1), gt))
        slots = []
        for start in range(0, args.steps, args.decide_every):
            idx = it.index_chunk(start, min(args.decide_every, args.steps - start))
            slots.append(learner.learn_block(task.train_images[idx], task.train_labels[idx]))
        slots_per_task.append(slots)
        print(f"true task {gt}: slots used {sorted(set(s for s in slots if s is not None))}, "
              f"masks allocated {learner.num_masks}", flush=True)
    how = scenarios.TaskInference("one_shot", "h", m=1)
    accs = []
    for gt in range(args.num_tasks):
        task = stream.task(gt)
        r = scenarios.evaluate_unknown_task(network, learner.bank, task.test_images,
                                            task.test_labels, None, how, preprocess,
                                            jax.random.fold_in(jax.random.key(args.seed), gt),
                                            shared_labels=True)
        accs.append(r["accuracy"])
    print(f"masks allocated {learner.num_masks} for {args.num_tasks} true tasks; NNs accuracy "
          f"per task {' '.join(f'{a:.4f}' for a in accs)}; mean {np.mean(accs):.4f}; "
          f"wall {time.perf_counter() - t0:.0f}s")
    result = {"args": vars(args), "masks_allocated": learner.num_masks, "accuracy": accs,
              "mean_accuracy": float(np.mean(accs)), "slots": slots_per_task,
              "decisions": learner.decisions}
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
