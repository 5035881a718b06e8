"""Run by tests/test_sharding.py in a subprocess with 4 simulated CPU devices (the XLA flag must
be set before JAX is imported, so these checks cannot share the test process)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from supsup_jax import bank as bank_lib  # noqa: E402
from supsup_jax import inference, masking, models, sharding  # noqa: E402
from supsup_jax import train as train_lib  # noqa: E402


def check_data_parallel():
    net = models.lenet300_100(num_outputs=20, seed=0)
    # SGD: the update is linear in the gradient. RMSprop and Adam divide by |g| on the first
    # step, so float rounding of near-zero gradients flips whole lr-sized updates.
    for rule in ("threshold", "topk"):
        density = 0.3 if rule == "topk" else None
        trainer = train_lib.Trainer(net, masking.make_mask_fn(rule, density),
                                    train_lib.make_optimizer("sgd", 0.5, weight_decay=1e-4),
                                    train_lib.make_preprocess((0.5,), (0.25,)))
        rng = np.random.default_rng(0)
        images = rng.integers(0, 255, (64, 28, 28, 1), dtype=np.uint8)
        labels = rng.integers(0, 20, 64).astype(np.int32)
        key = jax.random.key(3)
        start = trainer.init_task(jax.random.key(1)).scores
        one, m1 = jax.jit(trainer.train_step)(net.params, trainer.init_task(jax.random.key(1)),
                                              images, labels, key)
        mesh = sharding.make_mesh((4,), ("data",))
        step = sharding.data_parallel_train_step(trainer, mesh)
        many, m4 = step(net.params, trainer.init_task(jax.random.key(1)), jnp.asarray(images),
                        jnp.asarray(labels), jax.random.key_data(key))
        for p in one.scores:
            # The updates agree up to float32 summation order (4 partial sums vs one), except
            # where a pre-activation within rounding of 0 takes the other side of a ReLU (with
            # this data: 2 of 64 x 300 in the first layer, which moves 0.3-1.2% of its update
            # norm; the 4-device result is the one that matches a float64 reference there).
            # Elementwise, 99% agree to 1e-4; a missing reduction would be off by 75% of the
            # norm, a doubled one by 300%.
            u1 = np.asarray(one.scores[p] - start[p])
            u4 = np.asarray(many.scores[p] - start[p])
            rel = np.linalg.norm(u4 - u1) / np.linalg.norm(u1)
            close = np.isclose(u4, u1, rtol=1e-4, atol=1e-7).mean()
            assert rel <= 0.05 and close >= 0.99, (rule, p, rel, close)
        np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-5)
        np.testing.assert_allclose(float(m4["accuracy"]), float(m1["accuracy"]), rtol=1e-6)
    # Trainer.train_task picks the data-parallel path by itself with 4 devices, drawing the same
    # batches as the 1-device loop. Over several steps a mask bit that flips in one run and not
    # the other (a score within rounding of 0) makes the trajectories diverge by machine, so the
    # scores start at least MARGIN from 0 and the learning rate keeps 10 steps' updates under
    # MARGIN / 4 (asserted): the masks stay fixed, and the two runs differ only by the rounding
    # of each step's gradient, which adds up over steps instead of compounding. A missing
    # reduction is still off by ~75% of the update norm, a doubled one by 300%.
    margin = 0.02
    trainer = train_lib.Trainer(net, masking.make_mask_fn("threshold"),
                                train_lib.make_optimizer("sgd", 0.01), train_lib.make_preprocess(
                                    (0.5,), (0.25,)), chunk_size=5)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (512, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 20, 512).astype(np.int32)

    def start_state():
        state = trainer.init_task(jax.random.key(1))
        return state._replace(scores={p: s + jnp.where(s >= 0, margin, -margin)
                                      for p, s in state.scores.items()})

    init = {p: np.asarray(s) for p, s in start_state().scores.items()}
    runs = {}
    for dp in (True, False):
        trainer.data_parallel = dp
        out = trainer.train_task(start_state(), images, labels, jax.random.key(2), 10, 64)
        runs[dp] = {p: np.asarray(s) - init[p] for p, s in out.scores.items()}
        for p, u in runs[dp].items():
            assert np.abs(u).max() < margin / 4, (dp, p, np.abs(u).max())
    for p in init:
        a, b = runs[True][p], runs[False][p]
        rel = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert rel <= 0.05, (p, rel)
    print("data parallel ok")


def check_task_sharded_bank():
    net = models.lenet300_100(num_outputs=20, seed=0)
    weights = masking.masked_leaves(net.params)
    bank = bank_lib.MaskBank.create(weights, capacity=6)
    for i in range(5):  # one spare slot: unlearned tasks must never win
        scores = masking.init_scores(jax.random.key(10 + i), net.params)
        bank = bank.add({p: s >= 0 for p, s in scores.items()})
    mesh = sharding.make_mesh((4,), ("tasks",))
    sharded = sharding.shard_bank(bank, mesh)
    assert sharded.capacity == 8
    assert {s.data.shape[0] for s in sharded.bits["layers/0/kernel"].addressable_shards} == {2}
    x = jax.random.normal(jax.random.key(0), (16, 28, 28, 1))
    w = inference.first_m_weights(16, 16)
    padded = bank.grow(8)
    def run(fn, *args):
        return jax.jit(fn)(*args)

    for objective in (inference.entropy, inference.make_objective("g", 10)):
        alpha = inference.uniform_alpha(padded)
        v1, g1 = inference.alpha_gradient(net, net.params, padded, alpha, x, w, objective)
        v4, g4 = run(lambda a, b, o=objective: sharding.sharded_alpha_gradient(
            net, net.params, b, a, x, w, o, mesh=mesh), alpha, sharded)
        np.testing.assert_allclose(float(v4), float(v1), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(g4), np.asarray(g1), rtol=1e-4, atol=1e-7)
        for m in (1, 16):
            wm = inference.first_m_weights(16, m)
            ref = int(inference.one_shot(net, net.params, padded, x, wm, objective))
            got = int(run(lambda b, o=objective, wm=wm: sharding.sharded_one_shot(
                net, net.params, b, x, wm, o, mesh), sharded))
            assert got == ref < 5, (got, ref)
            ref = int(inference.binary(net, net.params, padded, x, wm, objective))
            got = int(run(lambda b, o=objective, wm=wm: sharding.sharded_binary(
                net, net.params, b, x, wm, o, mesh), sharded))
            assert got == ref < 5, (got, ref)
    for score in (None, inference.make_objective("s", 10)):
        ref = int(inference.exhaustive(net, net.params, padded, x, w, None, score=score))
        got = int(run(lambda b, s=score: sharding.sharded_exhaustive(
            net, net.params, b, x, w, mesh, score=s), sharded))
        assert got == ref < 5, (got, ref)
    # Layer-restricted gradients (the shortlist's first-layer ranking) shard too.
    first = ("layers/0/kernel",)
    alpha = inference.uniform_alpha(padded)
    _, g1 = inference.alpha_gradient(net, net.params, padded, alpha, x, w, inference.entropy,
                                     layers=first)
    _, g4 = run(lambda a, b: sharding.sharded_alpha_gradient(
        net, net.params, b, a, x, w, inference.entropy, mesh=mesh, layers=first), alpha, sharded)
    np.testing.assert_allclose(np.asarray(g4), np.asarray(g1), rtol=1e-4, atol=1e-7)
    print("task-sharded bank ok")


def check_runner_gnu_on_sharded_bank():
    """The runner's GNu rows use the task-sharded bank on several devices, with the same
    accuracies as one device's bank (same masks: training is data parallel in both runs).

    One-Shot's rows come from a full run; the other methods re-evaluate its masks (the same
    rows a full run with them writes, tests/test_reevaluate.py), so each mesh trains once."""
    import tempfile

    from experiments.configs import gnu_permuted
    from supsup_jax.runner import learners, train_and_evaluate
    from supsup_jax.runner.reevaluate import reevaluate

    placed = []
    original = sharding.shard_bank

    def shard_bank(bank, mesh, axis="tasks"):
        placed.append(mesh.shape[axis])
        return original(bank, mesh, axis)

    sharding.shard_bank = shard_bank
    out = {}
    for name, mesh_fn in (("sharded", learners.bank_mesh), ("one", lambda: None)):
        learners.bank_mesh = mesh_fn
        with tempfile.TemporaryDirectory() as d:
            for method in ("one_shot", "binary", "exhaustive", "shortlist"):
                c = gnu_permuted.get_config("tiny,fashion")
                c.inference.method, c.inference.m, c.quiet = method, 32, True
                if method == "shortlist":
                    c.inference.shortlist, c.inference.layers = 2, ("layers/0/kernel",)
                run, before = os.path.join(d, method), len(placed)
                out[name, method] = (train_and_evaluate(c, run) if method == "one_shot" else
                                     reevaluate(c, os.path.join(d, "one_shot"), run))
                # Every method's rows, re-evaluated ones included, come from the sharded bank.
                assert (len(placed) > before) == (name == "sharded"), (name, method, placed)
        assert set(placed) <= {4}, placed
        placed.clear()
    for method in ("one_shot", "binary", "exhaustive", "shortlist"):
        a, b = out["sharded", method], out["one", method]
        for k in ("inferred_accuracy_matrix", "task_inference_matrix"):
            np.testing.assert_allclose(np.array(a[k], float), np.array(b[k], float),
                                       atol=1e-9, err_msg=f"{method} {k}")
    print("runner GNu on the task-sharded bank ok")


if __name__ == "__main__":
    assert len(jax.devices()) == 4, jax.devices()
    {"data": check_data_parallel, "bank": check_task_sharded_bank,
     "runner": check_runner_gnu_on_sharded_bank}[sys.argv[1]]()
