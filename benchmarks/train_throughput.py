"""Mask training throughput against an ordinary dense training step of the same network.

Steady state after compilation, batch 128, RMSprop, steps run as the Trainer runs them (chunks
of ``lax.scan``). The dense baseline trains all weights of the same network with the same
optimiser, also in a scanned chunk, so the ratio isolates the cost of masking.

    python benchmarks/train_throughput.py --out benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import cpu_description, write_result  # benchmarks/ is on the path as a script

from supsup_jax import masking, models
from supsup_jax import train as train_lib


def _dense_chunk(net, optimizer, preprocess):
    def step(carry, batch):
        params, opt_state = carry
        x, y = batch

        def loss(p):
            logits, _ = net.apply(p, {}, preprocess(x, None, True), True)
            return train_lib.cross_entropy(logits, y)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return jax.jit(lambda carry, xs, ys: jax.lax.scan(step, carry, (xs, ys)),
                   donate_argnums=(0,))


def _steps_per_second(fn, repeats, steps):
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return steps / float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="fc1024,lenet300_100")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--chunk", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.integers(0, 255, (args.chunk, args.batch, 28, 28, 1), dtype=np.uint8))
    ys = jnp.asarray(rng.integers(0, 10, (args.chunk, args.batch)).astype(np.int32))
    out = {"benchmark": "train_throughput", **cpu_description(),
           "device": str(jax.devices()[0].device_kind),
           "platform": jax.default_backend(), "batch": args.batch, "models": {}}
    for name in args.models.split(","):
        net = models.get_model(name, num_outputs=500)
        optimizer = train_lib.make_optimizer("rmsprop", 1e-4)
        preprocess = train_lib.make_preprocess((0.1307,), (0.3081,))
        trainer = train_lib.Trainer(net, masking.make_mask_fn("threshold"), optimizer,
                                    preprocess, chunk_size=args.chunk)
        state = [trainer.init_task(jax.random.key(0))]

        def masked(state=state, trainer=trainer):
            state[0], m = trainer.train_batches(state[0], xs, ys, jax.random.key(1), 0)
            return m

        dense_fn = _dense_chunk(net, optimizer, preprocess)
        carry = [(jax.tree.map(jnp.copy, net.params), optimizer.init(net.params))]

        def dense(carry=carry, dense_fn=dense_fn):
            carry[0], v = dense_fn(carry[0], xs, ys)
            return v

        m_sps = _steps_per_second(masked, args.repeats, args.chunk)
        d_sps = _steps_per_second(dense, args.repeats, args.chunk)
        out["models"][name] = {
            "masked_steps_per_s": m_sps, "masked_examples_per_s": m_sps * args.batch,
            "masked_ms_per_step": 1000 / m_sps, "dense_steps_per_s": d_sps,
            "dense_ms_per_step": 1000 / d_sps, "masked_over_dense": m_sps / d_sps}
        print(name, json.dumps(out["models"][name]), flush=True)
    write_result(args.out, out)


if __name__ == "__main__":
    main(sys.argv[1:])
