"""One-Shot task inference with the mask bank's task axis sharded over 4 devices, against 1.

Simulated CPU devices (``--xla_force_host_platform_device_count``) share this machine's cores,
so the ratio measures the sharding's overhead, not a speed-up; the bytes per device are real.
Masks are random (inference cost does not depend on what they learned).

    python benchmarks/sharded_oneshot.py --tasks 100 --out benchmarks/results/sharded_oneshot.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import write_result  # noqa: E402  (benchmarks/ is on the path as a script)

from supsup_jax import bank as bank_lib  # noqa: E402
from supsup_jax import inference, masking, models, sharding  # noqa: E402


def _time(fn, repeats):
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="fc1024", choices=["fc1024", "lenet300_100"])
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/sharded_oneshot.json")
    args = p.parse_args(argv)

    net = models.get_model(args.model, num_outputs=500)
    weights = masking.masked_leaves(net.params)
    bank = bank_lib.MaskBank.create(weights, capacity=args.tasks)
    for i in range(args.tasks):
        scores = masking.init_scores(jax.random.key(i), net.params)
        bank = bank.add({q: s >= 0 for q, s in scores.items()})
    x = jax.random.normal(jax.random.key(0), (args.batch, 28, 28, 1))
    w = inference.first_m_weights(args.batch, 1)
    obj = inference.make_objective("g", 10)
    n = len(jax.devices())
    mesh = sharding.make_mesh((n,), ("tasks",))
    sharded = sharding.shard_bank(bank, mesh)

    one = jax.jit(lambda b: inference.one_shot(net, net.params, b, x, w, obj))
    many = jax.jit(lambda b: sharding.sharded_one_shot(net, net.params, b, x, w, obj, mesh))
    assert int(one(bank)) == int(many(sharded))
    t1 = _time(lambda: one(bank), args.repeats)
    tn = _time(lambda: many(sharded), args.repeats)
    per_device = {str(s.device): int(s.data.nbytes)
                  for s in sharded.bits["layers/0/kernel"].addressable_shards}
    bytes_per_device = sum(int(b.addressable_shards[0].data.nbytes) for b in sharded.bits.values())
    result = {
        "benchmark": "sharded_oneshot", "model": args.model, "tasks": args.tasks,
        "batch": args.batch, "devices": n, "device": f"{n} x {jax.devices()[0].device_kind} "
        "(simulated CPU devices sharing the host's cores)",
        "oneshot_1_device_s": t1, f"oneshot_{n}_devices_s": tn, "ratio": tn / t1,
        "bank_bytes_1_device": bank.nbytes(), "bank_bytes_per_device": bytes_per_device,
        "first_layer_bytes_by_device": per_device,
    }
    print(json.dumps(result, indent=2))
    write_result(args.out, result)


if __name__ == "__main__":
    main(sys.argv[1:])
