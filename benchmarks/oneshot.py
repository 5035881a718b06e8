"""Task inference latency and memory against the number of masks k (issue 6, benchmark 2).

For each network (LeNet 300-100 and FC 1024-1024, output 500) and each k, with k random masks
(inference cost does not depend on what the masks learned):

* the bit-packed bank: One-Shot G on a batch of 128 (one gradient at uniform alpha, the
  superposed mask precomputed once per bank as the runner does) and per example of it, One-Shot
  on a single image, One-Shot deciding every image of the batch on its own (``vmap``, for
  ``k <= --max-per-example-k``), Binary (halving) and Exhaustive; bytes the bank holds, against
  the bits the masks need;
* the official approach, measured in the same run: masks stacked as float32 ``[k, *shape]``, the
  superposition ``sum_i alpha_i M_i`` rebuilt every batch and the gradient by autodiff
  (skipped, and reported as not run, when its stack would exceed ``--max-baseline-gib``);
* the bank's products through plain JAX (``SUPSUP_JAX_KERNELS=0``'s path) for the same One-Shot.

    python benchmarks/oneshot.py --out benchmarks/results/oneshot.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import device, write_result  # benchmarks/ is on the path when run as a script

from supsup_jax import bank as bank_lib
from supsup_jax import inference, kernels, masking, models


def _time(fn, repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())  # compile + first call
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        again = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times)), first, out, again


def random_bank(weights, k, seed=0) -> bank_lib.MaskBank:
    """A full bank of ``k`` random masks (density 1/2), written directly as bits."""
    rng = np.random.default_rng(seed)
    shapes = tuple(sorted((p, tuple(w.shape)) for p, w in weights.items()))
    bits = {p: jnp.asarray(rng.integers(0, 256, (k, -(-math.prod(s) // 8)), dtype=np.uint8))
            for p, s in shapes}
    return bank_lib.MaskBank(bits, {}, jnp.int32(k), shapes)


def float_baseline(net, bank, x, w, objective):
    """The official code's approach: float32 stacked masks, superposition rebuilt per batch."""
    # Flattened [k, P] per layer: a dot over the leading axis of [k, *shape] makes XLA transpose
    # the whole stack every call (55x slower), which would flatter the bank.
    unpack = jax.jit(lambda b, n: jnp.unpackbits(b, axis=1, bitorder="little", count=n)
                     .astype(jnp.float32), static_argnums=1)
    stacked = {p: unpack(bank.bits[p], math.prod(s)) for p, s in bank.shapes}
    shapes = dict(bank.shapes)

    @jax.jit
    def step(stacked, alpha):
        def f(a):
            masks = {p: (a @ m).reshape(shapes[p]) for p, m in stacked.items()}
            logits, _ = net.apply(masking.mask_params(net.params, masks), {}, x, False)
            return objective(logits, w)
        g = jax.grad(f)(alpha)
        return jnp.argmin(g).astype(jnp.int32)

    return stacked, step


def run_case(model, k, args):
    net = models.get_model(model, num_outputs=500)
    weights = masking.masked_leaves(net.params)
    bank = random_bank(weights, k)
    num_weights = bank.num_weights
    x = jax.random.normal(jax.random.key(1), (args.batch, *net.input_shape))
    w = inference.first_m_weights(args.batch, 1)
    obj = inference.make_objective("g", 10)
    row = {"model": model, "k": k, "num_weights": num_weights,
           "bank_bytes": bank.nbytes(), "bits_bytes": math.ceil(k * num_weights / 8)}
    row["bank_over_bits"] = row["bank_bytes"] / row["bits_bytes"]

    sup = jax.jit(lambda b: bank_lib.superpose(inference.uniform_alpha(b), b))(bank)
    one = jax.jit(lambda b, s, x, w: inference.one_shot(net, net.params, b, x, w, obj,
                                                        superposed=s))
    t, first, task, _ = _time(lambda: one(bank, sup, x, w), args.repeats)
    row.update(oneshot_batch_s=t, oneshot_per_example_s=t / args.batch,
               oneshot_first_call_s=first)
    x1, w1 = x[:1], inference.first_m_weights(1, 1)
    row["oneshot_single_example_s"] = _time(lambda: one(bank, sup, x1, w1), args.repeats)[0]
    if k <= args.max_per_example_k:
        # Every image decides its own task (scenarios.TaskInference(per_example=True)).
        each = jax.jit(jax.vmap(lambda xi: one(bank, sup, xi[None], w1)))
        row["oneshot_each_example_batch_s"] = _time(lambda: each(x), 1)[0]
    row["superpose_uniform_s"] = _time(
        lambda: bank_lib.superpose(inference.uniform_alpha(bank), bank), args.repeats)[0]

    binary = jax.jit(lambda b, x, w: inference.binary(net, net.params, b, x, w, obj))
    row["binary_batch_s"] = _time(lambda: binary(bank, x, w), max(1, args.repeats // 2))[0]
    if k <= args.max_exhaustive_k:
        ex = jax.jit(lambda b, x, w: inference.exhaustive(net, net.params, b, x, w, obj))
        row["exhaustive_batch_s"] = _time(lambda: ex(bank, x, w), 1)[0]

    if args.compare_xla:
        prev = kernels.bits_matvec
        kernels.bits_matvec = kernels.bits_matvec_xla  # what GPU/TPU (and no compiler) run
        try:
            slow = jax.jit(lambda b, s, x, w: inference.one_shot(net, net.params, b, x, w, obj,
                                                                 superposed=s))
            row["oneshot_plain_jax_batch_s"], _, task_xla, _ = _time(
                lambda: slow(bank, sup, x, w), 1)
            row["plain_jax_agrees"] = int(task_xla) == int(task)
        finally:
            kernels.bits_matvec = prev

    baseline_bytes = 4 * k * num_weights
    row["float32_stacked_bytes"] = baseline_bytes
    if baseline_bytes <= args.max_baseline_gib * 2**30:
        stacked, step = float_baseline(net, bank, x, w, obj)
        alpha = inference.uniform_alpha(bank)
        row["float32_stacked_batch_s"], _, task_f32, _ = _time(lambda: step(stacked, alpha),
                                                               max(1, args.repeats // 2))
        row["float32_agrees"] = int(task_f32) == int(task)
        row["speedup_vs_float32"] = row["float32_stacked_batch_s"] / row["oneshot_batch_s"]
        row["bytes_ratio_vs_float32"] = row["bank_bytes"] / baseline_bytes
        del stacked
    else:
        row["float32_stacked_batch_s"] = None  # does not fit the memory budget
    return row


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="lenet300_100,fc1024")
    p.add_argument("--tasks", default="10,100,1000,2500")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-baseline-gib", type=float, default=10.0)
    p.add_argument("--max-exhaustive-k", type=int, default=1000)
    p.add_argument("--max-per-example-k", type=int, default=100)
    p.add_argument("--compare-xla", action="store_true",
                   help="also time One-Shot with the bank's products in plain JAX")
    p.add_argument("--out", default="benchmarks/results/oneshot.json")
    args = p.parse_args(argv)

    rows = []
    for model in args.models.split(","):
        for k in map(int, args.tasks.split(",")):
            row = run_case(model, k, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"benchmark": "oneshot", "device": device(),
              "bank_products": kernels.kernel_status(), "batch": args.batch,
              "jax": jax.__version__, "rows": rows}
    write_result(args.out, result)


if __name__ == "__main__":
    main(sys.argv[1:])
