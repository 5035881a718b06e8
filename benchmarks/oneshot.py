"""Task inference latency and memory against the number of masks k (issue 6, benchmark 2).

For each network (LeNet 300-100 and FC 1024-1024, output 500) and each k, with k random masks
(inference cost does not depend on what the masks learned):

* the bit-packed bank: One-Shot G on a batch of 128 decided by its first image, as the runner
  calls it (``TaskInference.infer``: one gradient at uniform alpha of that image alone, the
  superposed mask precomputed once per bank; the network an argument of the jitted function,
  as in the runner's evaluation), and with the whole batch differentiated at zero weights past
  the first image (the previous call); One-Shot deciding every image of the batch
  on its own (``vmap``, for ``k <= --max-per-example-k``), Binary (halving) and Exhaustive;
  bytes the bank holds, against the bits the masks need;
* the official approach, measured in the same run: masks stacked as float32 ``[k, *shape]``, the
  superposition ``sum_i alpha_i M_i`` rebuilt every batch and the gradient by autodiff, of the
  deciding image (and of the whole batch), timed with the network as an argument and closed
  over as constants, the faster of the two taken as the baseline
  (skipped, and reported as not run, when its stack would exceed ``--max-baseline-gib``);
* every CPU kernel variant this CPU runs (``--variants``, default all of them and ``xla``, the
  plain-JAX twin that GPU/TPU and compiler-less CPUs run): One-Shot, the shortlist rule
  (``--shortlist`` tasks ranked by the first layer's G gradient, re-ranked by S; issue 14),
  the superposition at uniform alpha
  (``bits_vecmat``) and Binary per variant, with each variant's ratio to the twin
  and to the float32 baseline measured in the same run, and the task each picks.

    python benchmarks/oneshot.py --out benchmarks/results/oneshot.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# benchmarks/ is on the path when run as a script
from common import cpu_description, device, write_result

from supsup_jax import bank as bank_lib
from supsup_jax import inference, kernels, masking, models, scenarios


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


def float_baseline(net, bank, objective):
    """The official code's approach: float32 stacked masks, superposition rebuilt per batch."""
    # Flattened [k, P] per layer: a dot over the leading axis of [k, *shape] makes XLA transpose
    # the whole stack every call (55x slower), which would flatter the bank.
    unpack = jax.jit(lambda b, n: jnp.unpackbits(b, axis=1, bitorder="little", count=n)
                     .astype(jnp.float32), static_argnums=1)
    stacked = {p: unpack(bank.bits[p], math.prod(s)) for p, s in bank.shapes}
    shapes = dict(bank.shapes)

    def step(net, stacked, alpha, x, w):
        def f(a):
            masks = {p: (a @ m).reshape(shapes[p]) for p, m in stacked.items()}
            logits, _ = net.apply(masking.mask_params(net.params, masks), {}, x, False)
            return objective(logits, w)
        g = jax.grad(f)(alpha)
        return jnp.argmin(g).astype(jnp.int32)

    # Two programs: the network as an argument (as the bank is timed) and closed over as
    # constants; the baseline is the faster of the two, so no layout choice of XLA flatters
    # the bank.
    traced = jax.jit(step)
    const = jax.jit(lambda *a: step(net, *a))
    return stacked, {"traced": lambda *a: traced(net, *a), "constant": const}


def time_variant(net, bank, x, obj, args, extra=None) -> dict:
    """One-Shot, the superposition and Binary with the kernel variant now selected, each as the
    runner calls it (``scenarios.TaskInference(m=1).infer`` on the batch: the first image
    decides, and only it goes through the gradient); with ``extra`` (a dict), also per-example
    One-Shot and Exhaustive, written there."""
    k = bank.capacity
    r = {}
    sup = jax.jit(lambda b: bank_lib.superpose(inference.uniform_alpha(b), b))(bank)

    def infer(method, **fields):
        how = scenarios.TaskInference(method, "g", **fields)
        # The network is an argument, as in the runner's evaluation: weights closed over as
        # constants would let XLA fold and re-lay them out at compile time (a slower program).
        return jax.jit(lambda n, b, s, x: how.infer(n, n.params, b, x, None, s))

    one = infer("one_shot")
    t, first, task, _ = _time(lambda: one(net, bank, sup, x), args.repeats)
    r.update(oneshot_batch_s=t, oneshot_per_example_s=t / args.batch,
             oneshot_first_call_s=first, task=int(task))
    # Before TaskInference cut the batch to its deciding images: the gradient's forward and
    # backward pass over all of it, with zero weights past the first image.
    whole = jax.jit(lambda n, b, s, x, w: inference.one_shot(n, n.params, b, x, w, obj,
                                                             superposed=s))
    w = inference.first_m_weights(args.batch, 1)
    r["oneshot_whole_batch_gradient_s"] = _time(lambda: whole(net, bank, sup, x, w),
                                                args.repeats)[0]
    layers = None if args.shortlist_layers == "all" else tuple(args.shortlist_layers.split(","))
    short = infer("shortlist", shortlist=args.shortlist, rerank="s", layers=layers)
    r["shortlist_batch_s"], _, stask, _ = _time(lambda: short(net, bank, sup, x), args.repeats)
    r["shortlist_task"] = int(stask)
    r["shortlist_over_oneshot"] = r["shortlist_batch_s"] / t
    superpose = jax.jit(lambda a, b: bank_lib.superpose(a, b))  # a new trace per variant
    r["superpose_uniform_s"] = _time(lambda: superpose(inference.uniform_alpha(bank), bank),
                                     args.repeats)[0]
    if os.environ["SUPSUP_JAX_KERNEL_VARIANT"] != "xla" or k <= args.max_exhaustive_k:
        binary = infer("binary")
        r["binary_batch_s"], _, btask, _ = _time(lambda: binary(net, bank, None, x),
                                                 max(1, args.repeats // 2))
        r["binary_task"] = int(btask)
    if extra is not None:
        if k <= args.max_per_example_k:
            each = jax.jit(lambda n, x: jax.vmap(lambda xi: one(n, bank, sup, xi[None]))(x))
            extra["oneshot_each_example_batch_s"] = _time(lambda: each(net, x), 1)[0]
        if k <= args.max_exhaustive_k:
            ex = infer("exhaustive", rerank="s")
            extra["exhaustive_batch_s"] = _time(lambda: ex(net, bank, None, x), 1)[0]
    return r


def run_case(model, k, args):
    net = models.get_model(model, num_outputs=500)
    weights = masking.masked_leaves(net.params)
    bank = random_bank(weights, k)
    num_weights = bank.num_weights
    x = jax.random.normal(jax.random.key(1), (args.batch, *net.input_shape))
    obj = inference.make_objective("g", 10)
    row = {"model": model, "k": k, "num_weights": num_weights,
           "bank_bytes": bank.nbytes(), "bits_bytes": math.ceil(k * num_weights / 8)}
    row["bank_over_bits"] = row["bank_bytes"] / row["bits_bytes"]

    row["variants"] = {}
    for variant in args.variants:
        # The variant is read when a function is traced: fresh jitted functions for each.
        os.environ["SUPSUP_JAX_KERNEL_VARIANT"] = variant
        row["variants"][variant] = time_variant(net, bank, x, obj, args,
                                                row if variant == args.variants[0] else None)
    os.environ.pop("SUPSUP_JAX_KERNEL_VARIANT")
    twin = row["variants"].get("xla")
    for r in row["variants"].values():
        r["agrees_with_first"] = r["task"] == next(iter(row["variants"].values()))["task"]
        if twin is not None:
            r["speedup_vs_twin"] = twin["oneshot_batch_s"] / r["oneshot_batch_s"]
            r["superpose_speedup_vs_twin"] = (twin["superpose_uniform_s"]
                                              / r["superpose_uniform_s"])

    baseline_bytes = 4 * k * num_weights
    row["float32_stacked_bytes"] = baseline_bytes
    if baseline_bytes <= args.max_baseline_gib * 2**30:
        stacked, steps = float_baseline(net, bank, obj)
        alpha = inference.uniform_alpha(bank)
        reps = max(1, args.repeats // 2)
        for form, step in steps.items():
            # As the bank's One-Shot: the first image decides, and only it is differentiated.
            one_image = _time(lambda s=step: s(stacked, alpha, x[:1], jnp.ones((1,))), reps)
            row[f"float32_stacked_{form}_batch_s"], task_f32 = one_image[0], one_image[2]
            row[f"float32_stacked_{form}_whole_batch_gradient_s"] = _time(
                lambda s=step: s(stacked, alpha, x, inference.first_m_weights(args.batch, 1)),
                reps)[0]
        for key in ("batch_s", "whole_batch_gradient_s"):
            row[f"float32_stacked_{key}"] = min(row[f"float32_stacked_{form}_{key}"]
                                                for form in steps)
        for r in row["variants"].values():
            r["float32_agrees"] = int(task_f32) == r["task"]
            r["speedup_vs_float32"] = row["float32_stacked_batch_s"] / r["oneshot_batch_s"]
            r["whole_batch_speedup_vs_float32"] = (row["float32_stacked_whole_batch_gradient_s"]
                                                   / r["oneshot_whole_batch_gradient_s"])
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
    p.add_argument("--shortlist", type=int, default=16,
                   help="tasks the shortlist rule re-ranks by S")
    p.add_argument("--shortlist-layers", default="layers/0/kernel",
                   help="masked layers whose gradient terms rank for the shortlist ('all')")
    p.add_argument("--variants", default=None,
                   help="comma-separated kernel variants to time (default: every variant this "
                        "CPU runs, then xla, the plain-JAX twin)")
    p.add_argument("--out", default="benchmarks/results/oneshot.json")
    args = p.parse_args(argv)
    supported = kernels.supported_variants() + ("xla",)
    args.variants = args.variants.split(",") if args.variants else list(supported)
    for v in args.variants:
        if v not in supported:
            p.error(f"--variants: {v!r} is not one of {supported} (what this CPU runs)")

    rows = []
    for model in args.models.split(","):
        for k in map(int, args.tasks.split(",")):
            row = run_case(model, k, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
            for v, r in row["variants"].items():
                print(f"  {model} k={k} {v:8s} One-Shot {r['oneshot_batch_s'] * 1e3:8.1f} ms"
                      f"  vs twin {r.get('speedup_vs_twin', float('nan')):6.1f}x"
                      f"  vs float32 {r.get('speedup_vs_float32', float('nan')):6.1f}x"
                      f"  superpose {r['superpose_uniform_s'] * 1e3:8.1f} ms"
                      f" ({r.get('superpose_speedup_vs_twin', float('nan')):5.1f}x twin)"
                      f"  shortlist {r['shortlist_batch_s'] * 1e3:8.1f} ms"
                      f" ({r['shortlist_over_oneshot']:.2f}x One-Shot)",
                      flush=True)
    result = {"benchmark": "oneshot", "device": device(), **cpu_description(),
              "variants": args.variants, "batch": args.batch,
              "jax": jax.__version__, "rows": rows}
    write_result(args.out, result)


if __name__ == "__main__":
    main(sys.argv[1:])
