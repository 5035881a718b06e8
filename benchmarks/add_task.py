"""Adding a finished mask to the bank, and compilations as tasks are added (issue 6, item 3).

1. Time of ``bank.add(masks)`` on a bank already holding ``k`` masks (FC 1024-1024, output
   500), for several ``k``; the bank has a free slot, so this is the steady-state add (a growth
   step copies the bank once every 1.25x tasks). Functional (the old bank stays valid, so the
   new one is a copy) and ``donate=True`` (written in place, as the runner does).
2. A 20-task loop as a researcher's script runs it (LeNet 300-100 on PermutedFashionMNIST-shaped
   random data, a few training steps per task): train the task's scores, add its mask, evaluate
   every learned task with the task given (as the runner does) and infer the task of a batch with
   One-Shot and Binary. Backend compilations are counted per task with ``jax.monitoring``; a
   bank created with ``capacity=20`` must compile nothing after the first task, and a bank
   left to grow from capacity 8 compiles only when it grows.

    python benchmarks/add_task.py --out benchmarks/results/add_task.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import (  # benchmarks/ is on the path when run as a script
    cpu_description,
    device,
    write_result,
)
from oneshot import random_bank

from supsup_jax import bank as bank_lib
from supsup_jax import inference, masking, models
from supsup_jax import train as train_lib

_COMPILES = [0]


def _on_event(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


def add_time(k, repeats):
    net = models.get_model("fc1024", num_outputs=500)
    weights = masking.masked_leaves(net.params)
    bank = random_bank(weights, k).grow(k + 1)
    masks = {p: jnp.asarray(np.random.default_rng(k).random(w.shape) < 0.5)
             for p, w in weights.items()}
    row = {"model": "fc1024", "k": k, "bank_bytes": bank.nbytes()}
    for donate in (False, True):
        times = []
        for _ in range(repeats + 1):  # the first call compiles
            b = jax.tree.map(jnp.copy, bank) if donate else bank
            jax.block_until_ready(b)
            t = time.perf_counter()
            jax.block_until_ready(b.add(masks, donate=donate).bits)
            times.append(time.perf_counter() - t)
        row["add_donated_s" if donate else "add_copy_s"] = float(np.median(times[1:]))
    return row


def task_loop(num_tasks, capacity, steps):
    net = models.get_model("lenet300_100", num_outputs=500)
    trainer = train_lib.Trainer(net, masking.make_mask_fn("threshold"),
                                train_lib.make_optimizer("rmsprop", 1e-4),
                                train_lib.make_preprocess((0.1307,), (0.3081,)), chunk_size=steps)
    bank = bank_lib.MaskBank.create(trainer.weights, capacity=capacity)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (steps * 32, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, steps * 32).astype(np.int32)
    x = jnp.asarray(rng.standard_normal((128, 28, 28, 1)), jnp.float32)
    w = inference.first_m_weights(128, 1)
    obj = inference.make_objective("g", 10)
    one = jax.jit(lambda b: inference.one_shot(net, net.params, b, x, w, obj))
    binary = jax.jit(lambda b: inference.binary(net, net.params, b, x, w, obj))
    per_task = []
    for t in range(num_tasks):
        before = _COMPILES[0]
        state = trainer.init_task(jax.random.key(t))
        state, _ = trainer.train_batches(state, images.reshape(steps, 32, 28, 28, 1),
                                         labels.reshape(steps, 32), jax.random.key(t), 0)
        bank = bank.add(trainer.masks(state.scores), donate=True)
        for i in range(t + 1):  # as the runner evaluates: every learned task, task given
            trainer.evaluate(bank.task_masks(i), {}, images[:256], labels[:256])
        jax.block_until_ready((one(bank), binary(bank)))
        per_task.append(_COMPILES[0] - before)
    return {"model": "lenet300_100", "tasks": num_tasks, "initial_capacity": capacity,
            "final_capacity": bank.capacity, "compiles_per_task": per_task,
            "compiles_after_first_task": sum(per_task[1:])}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", default="10,100,1000")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--loop-tasks", type=int, default=20)
    p.add_argument("--loop-steps", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/add_task.json")
    args = p.parse_args(argv)
    jax.monitoring.register_event_duration_secs_listener(_on_event)

    adds = [add_time(k, args.repeats) for k in map(int, args.tasks.split(","))]
    for row in adds:
        print(json.dumps(row), flush=True)
    loops = [task_loop(args.loop_tasks, cap, args.loop_steps) for cap in (args.loop_tasks, 8)]
    for row in loops:
        print(json.dumps(row), flush=True)
    result = {"benchmark": "add_task", "device": device(), **cpu_description(),
              "jax": jax.__version__,
              "add": adds, "task_loop": loops}
    write_result(args.out, result)


if __name__ == "__main__":
    main(sys.argv[1:])
