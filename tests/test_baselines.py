"""Baselines (SPEC 1.10): each forward against plain numpy, per-task state isolation, BatchE's
One-Shot against a hand-computed entropy gradient, bad input, and the runner end to end."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import compare
from experiments.configs import compare_permuted, gg_splitcifar100
from supsup_jax import baselines, inference, models, results
from supsup_jax import train as train_lib
from supsup_jax.baselines import batche as batche_lib
from supsup_jax.baselines import core
from supsup_jax.baselines import psp as psp_lib
from supsup_jax.runner import train_and_evaluate
from supsup_jax.runner.build import check_method
from supsup_jax.runner.reevaluate import EVALUATION_FIELDS

IN, HID, OUT = 12, 7, 5


def _mlp(hidden=(), num_outputs=OUT, seed=0):
    module = models.MLP(IN, hidden, num_outputs, rngs=nnx.Rngs(seed))
    return models.from_nnx(module, (IN,))


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _x(seed=1, n=6):
    return np.random.default_rng(seed).normal(size=(n, IN)).astype(np.float32)


# ------------------------------------------------------------------ forward vs plain numpy
def test_batche_forward_one_layer_against_numpy():
    net = _mlp()
    method = baselines.BatchE(net, 3)
    state = method.init(jax.random.key(0))
    # Distinct, non-sign fast weights so a transposed r/s or wrong task would show.
    rng = np.random.default_rng(0)
    state["r"] = {"layers/0/kernel": jnp.asarray(rng.normal(size=(3, IN)), jnp.float32)}
    state["s"] = {"layers/0/kernel": jnp.asarray(rng.normal(size=(3, OUT)), jnp.float32)}
    x = _x()
    w = np.asarray(net.params["layers"][0]["kernel"], np.float64)
    for t in range(3):
        r, s = _np(state["r"]["layers/0/kernel"][t]), _np(state["s"]["layers/0/kernel"][t])
        want = ((x * r) @ w) * s  # out = s_t * layer(x * r_t, W)
        got, _ = method.logits(method.eval_vars(state, t), {}, jnp.asarray(x), False)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    alpha = np.array([0.2, 0.5, 0.3], np.float32)
    r_all, s_all = _np(state["r"]["layers/0/kernel"]), _np(state["s"]["layers/0/kernel"])
    want = x @ (w * sum(alpha[i] * np.outer(r_all[i], s_all[i]) for i in range(3)))
    got, _ = net.apply(method.superposed_params(state, jnp.asarray(alpha)), {}, jnp.asarray(x),
                       False)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["orthogonal", "binary"])
def test_psp_forward_against_numpy(kind):
    net = _mlp(hidden=(HID,))
    method = baselines.PSP(net, 4, kind=kind, key=jax.random.key(3))
    state = method.init(jax.random.key(0))
    x = _x()
    k0 = np.asarray(net.params["layers"][0]["kernel"], np.float64)
    k1 = np.asarray(net.params["layers"][1]["kernel"], np.float64)
    for t in (0, 3):
        c0, c1 = (np.asarray(c, np.float64) for c in method.contexts(t))
        if kind == "orthogonal":
            assert c0.shape == (IN, IN)
            np.testing.assert_allclose(c0 @ c0.T, np.eye(IN), atol=1e-5)
            rotate = lambda c, h: (c @ h.T).T  # noqa: E731  y = W (C x), x a column
        else:
            assert set(np.unique(c0)) <= {-1.0, 1.0}
            rotate = lambda c, h: h * c  # noqa: E731  C = diag(c)
        want = rotate(c1, np.maximum(rotate(c0, x) @ k0, 0.0)) @ k1
        got, _ = method.logits(method.eval_vars(state, t), {}, jnp.asarray(x), False)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    # Contexts differ across tasks and are a pure function of (key, task).
    assert not np.allclose(np.asarray(method.contexts(0)[0]), np.asarray(method.contexts(1)[0]))
    again = baselines.PSP(net, 4, kind=kind, key=jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(again.contexts(2)[1]),
                                  np.asarray(method.contexts(2)[1]))


def test_psp_with_identity_contexts_is_the_mlp():
    net = _mlp(hidden=(HID,))
    x = jnp.asarray(_x())
    kernels = [net.params["layers"][i]["kernel"] for i in range(2)]
    eye = [jnp.eye(IN), jnp.ones((HID,))]
    np.testing.assert_allclose(np.asarray(psp_lib.psp_mlp_forward(kernels, eye, x)),
                               np.asarray(net.apply(net.params, {}, x, False)[0]), atol=1e-5)


@pytest.mark.parametrize("name", ["separate_heads", "lower_bound", "upper_bound"])
def test_heads_and_upper_bound_forward_against_numpy(name):
    net = _mlp(hidden=(HID,))
    method = baselines.make_method(name, net, 2)
    state = method.init(jax.random.key(0))
    rng = np.random.default_rng(5)
    k0 = np.asarray(net.params["layers"][0]["kernel"], np.float64)
    heads = [rng.normal(size=(HID, OUT)) for _ in range(2)]
    if name == "upper_bound":
        models_ = [rng.normal(size=(IN, HID)) for _ in range(2)]
        state["models"] = {"layers/0/kernel": jnp.asarray(np.stack(models_), jnp.float32),
                           "layers/1/kernel": jnp.asarray(np.stack(heads), jnp.float32)}
    else:
        assert method.head == "layers/1/kernel"
        state["heads"] = jnp.asarray(np.stack(heads), jnp.float32)
    x = _x()
    for t in range(2):
        trunk = models_[t] if name == "upper_bound" else k0
        want = np.maximum(x @ trunk, 0.0) @ heads[t]
        got, _ = method.logits(method.eval_vars(state, t), {}, jnp.asarray(x), False)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------- per-task state and what a task changes
def _trainer(method, lr=1e-2, weight_lr=1e-2):
    make = lambda lr_: train_lib.make_optimizer("adam", lr_)  # noqa: E731
    preprocess = train_lib.make_preprocess((0.0,), (1.0,))
    return baselines.MethodTrainer(method, make, {"lr": lr, "weight_lr": weight_lr}, preprocess,
                                   chunk_size=5)


def _task_data(seed):
    # Two linearly separable-ish synthetic tasks on uint8 images of shape (IN,).
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, size=(256, IN), dtype=np.uint8)
    y = (x[:, seed % IN] > 127).astype(np.int32) + 2 * (x[:, (seed + 1) % IN] > 127)
    return x, y


def _train(trainer, state, t, steps=10):
    x, y = _task_data(t)
    return trainer.train_task(state, t, x, y, jax.random.key(t), steps, 32)[0]


def _same(a, b):
    return all(np.array_equal(np.asarray(u), np.asarray(v))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("rand_w", [False, True])
def test_batche_later_tasks_leave_earlier_tasks_unchanged(rand_w):
    net = _mlp(hidden=(HID,))
    method = baselines.BatchE(net, 3, rand_w=rand_w)
    trainer = _trainer(method)
    s0 = method.init(jax.random.key(0))
    s1 = _train(trainer, s0, 0)
    # Task 0 trains W (by design: train_weight_tasks = 1) unless Rand W, and its own factors.
    assert _same(s1["weights"], s0["weights"]) == rand_w
    assert not _same(core.take(s1["r"], 0), core.take(s0["r"], 0))
    x, y = _task_data(0)
    acc0 = float(trainer.evaluate(s1, 0, {}, x, y))
    s2 = _train(trainer, s1, 1)
    assert _same(s2["weights"], s1["weights"])  # W never changes after task 0
    for key in ("r", "s"):
        assert _same(core.take(s2[key], 0), core.take(s1[key], 0))  # task 0 untouched
        assert not _same(core.take(s2[key], 1), core.take(s1[key], 1))  # task 1 learned
        assert _same(core.take(s2[key], 2), core.take(s0[key], 2))  # task 2 not yet
    assert float(trainer.evaluate(s2, 0, {}, x, y)) == acc0


def test_psp_contexts_fixed_and_w_shared_by_design():
    net = _mlp(hidden=(HID,))
    method = baselines.PSP(net, 2, key=jax.random.key(1))
    trainer = _trainer(method)
    c0 = [np.asarray(c) for c in method.contexts(0)]
    s1 = _train(trainer, method.init(jax.random.key(0)), 0)
    s2 = _train(trainer, s1, 1)
    # The contexts are per task and never trained; W is shared and trained on every task (PSP's
    # design, train_weight_tasks = -1), so training task 1 does change what task 0 reads.
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(c0, method.contexts(0),
                                                                strict=True))
    assert set(s2) == {"weights"}
    assert not _same(s2["weights"], s1["weights"])


@pytest.mark.parametrize("name,rand_w,trunk_moves_on_task1", [
    ("separate_heads", False, False), ("separate_heads", True, False),
    ("lower_bound", False, True)])
def test_heads_isolation(name, rand_w, trunk_moves_on_task1):
    net = _mlp(hidden=(HID,))
    method = baselines.make_method(name, net, 3, rand_w=rand_w)
    trainer = _trainer(method)
    s0 = method.init(jax.random.key(0))
    s1 = _train(trainer, s0, 0)
    assert _same(s1["trunk"], s0["trunk"]) == rand_w
    s2 = _train(trainer, s1, 1)
    # Separate heads: the trunk is trained on task 0 only (or never, Rand W); lower bound:
    # trained on every task by design, so earlier tasks' accuracy may change through it.
    assert _same(s2["trunk"], s1["trunk"]) != trunk_moves_on_task1
    assert _same(s2["heads"][0], s1["heads"][0])
    assert not _same(s2["heads"][1], s1["heads"][1])
    assert _same(s2["heads"][2], s0["heads"][2])  # every head starts as the initial head
    assert _same(s0["heads"][2], net.params["layers"][1]["kernel"])


def test_upper_bound_keeps_each_tasks_model():
    net = _mlp(hidden=(HID,))
    method = baselines.UpperBound(net, 2)
    trainer = _trainer(method)
    s1 = _train(trainer, method.init(jax.random.key(0)), 0)
    x, y = _task_data(0)
    acc0 = float(trainer.evaluate(s1, 0, {}, x, y))
    s2 = _train(trainer, s1, 1)
    assert not _same(s2["weights"], s1["weights"])  # every weight trains on every task
    assert _same(core.take(s2["models"], 0), core.take(s1["models"], 0))
    assert float(trainer.evaluate(s2, 0, {}, x, y)) == acc0  # right-after accuracy kept


# ------------------------------------------------------------------- BatchE One-Shot
def test_batche_one_shot_and_shortlist_against_a_hand_computed_entropy_gradient():
    net = _mlp()
    method = baselines.BatchE(net, 4)
    state = method.init(jax.random.key(2))
    rng = np.random.default_rng(1)
    state["r"] = {"layers/0/kernel": jnp.asarray(rng.normal(size=(4, IN)), jnp.float32)}
    state["s"] = {"layers/0/kernel": jnp.asarray(rng.normal(size=(4, OUT)), jnp.float32)}
    w = np.asarray(net.params["layers"][0]["kernel"], np.float64)
    r, s = _np(state["r"]["layers/0/kernel"]), _np(state["s"]["layers/0/kernel"])
    for seed in range(6):
        x = _x(seed, n=4)
        weights = np.array([1, 1, 0, 1], np.float64)
        for k in (3, 4):  # learned tasks; slot 3 unlearned when k = 3
            # logits(alpha) = sum_i alpha_i L_i, L_i = x (W * r_i s_i^T): linear in alpha.
            each = np.stack([x @ (w * np.outer(r[i], s[i])) for i in range(4)])
            alpha = np.array([1.0 / k] * k + [0.0] * (4 - k))
            z = np.einsum("t,tbc->bc", alpha, each)
            p = np.exp(z - z.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            ent = -(p * np.log(p)).sum(-1, keepdims=True)
            dz = -p * (np.log(p) + ent) * weights[:, None] / weights.sum()
            g = np.einsum("bc,tbc->t", dz, each)
            want = int(np.argmin(g[:k]))
            got = batche_lib.one_shot(method, state, k, jnp.asarray(x),
                                      jnp.asarray(weights, jnp.float32), inference.entropy)
            assert int(got) == want
            # The shortlist: the `size` smallest gradients (ties by index) re-ranked by the
            # entropy of x under each task's own rank-one kernel, L_i alone.
            q = np.exp(each - each.max(-1, keepdims=True))
            q /= q.sum(-1, keepdims=True)
            h = (-(q * np.log(q)).sum(-1) * weights).sum(-1) / weights.sum()
            for size in (1, 2, 3, 8):
                cand = sorted(range(k), key=lambda i: (g[i], i))[:size]
                got = batche_lib.shortlist(method, state, {}, k, jnp.asarray(x),
                                           jnp.asarray(weights, jnp.float32), inference.entropy,
                                           size)
                assert int(got) == min(cand, key=lambda i: (h[i], i)), (seed, k, size)
    with pytest.raises(ValueError, match="shortlist size"):
        batche_lib.shortlist(method, state, {}, 3, jnp.asarray(x), jnp.ones(4), inference.entropy,
                             0)


# ------------------------------------------------------------------------------ bad input
def test_bad_method_input_errors():
    net = _mlp(hidden=(HID,))
    with pytest.raises(ValueError, match="unknown method 'ewc'"):
        baselines.make_method("ewc", net, 2)
    with pytest.raises(ValueError, match="no Rand W variant"):
        baselines.make_method("psp", net, 2, rand_w=True)
    with pytest.raises(ValueError, match="core method"):
        baselines.make_method("supsup", net, 2)
    with pytest.raises(ValueError, match="unknown PSP context"):
        baselines.PSP(net, 2, kind="hadamard")
    with pytest.raises(ValueError, match="fully connected"):
        baselines.PSP(models.from_nnx(_OneConv(nnx.Rngs(0)), (6, 6, 3)), 2)
    with pytest.raises(ValueError, match="num_tasks"):
        baselines.BatchE(net, 0)
    method = baselines.BatchE(net, 2)
    state = method.init(jax.random.key(0))
    with pytest.raises(IndexError, match="task 2"):
        method.eval_vars(state, 2)
    trainer = _trainer(method)
    x, y = _task_data(0)
    with pytest.raises(ValueError, match="uint8"):
        trainer.train_task(state, 0, x.astype(np.float32), y, jax.random.key(0), 2, 8)
    with pytest.raises(ValueError, match="labels span"):
        trainer.train_task(state, 0, x, y + OUT, jax.random.key(0), 2, 8)
    c = compare_permuted.get_config("batche,tiny,fashion")
    c.scenario = "GNs"
    with pytest.raises(ValueError, match="GG .*or GNu"):
        check_method(c)
    c = compare_permuted.get_config("psp,tiny,fashion")
    c.method = "ewc"
    with pytest.raises(ValueError, match="unknown method"):
        check_method(c)
    with pytest.raises(ValueError, match="do not apply to psp"):
        compare_permuted.get_config("psp,randw")
    with pytest.raises(ValueError, match="pick one method"):
        compare_permuted.get_config("psp,batche")
    with pytest.raises(ValueError, match="shortlist variant needs oneshot"):
        compare_permuted.get_config("batche,shortlist")
    with pytest.raises(ValueError, match="do not apply to psp"):
        compare_permuted.get_config("psp,shortlist")
    with pytest.raises(ValueError, match="randw applies"):
        gg_splitcifar100.get_config("upper_bound,randw")


def test_splitcifar100_configs_select_each_method():
    for variants, method, rand_w in [("batche", "batche", False), ("batche,randw", "batche", True),
                                     ("separate_heads", "separate_heads", False),
                                     ("separate_heads,randw", "separate_heads", True),
                                     ("upper_bound", "upper_bound", False),
                                     ("lower_bound", "lower_bound", False)]:
        c = gg_splitcifar100.get_config(variants + ",tiny")
        assert (c.method, c.rand_w, c.scenario, c.model) == (method, rand_w, "GG",
                                                            "gemresnet18")
    assert gg_splitcifar100.get_config("transfer").method == "supsup"  # SupSup configs unchanged


class _OneConv(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), use_bias=False, rngs=rngs)

    def __call__(self, x, train=False):
        return self.conv(x).mean(axis=(1, 2))


def test_batche_conv_kernel_is_s_times_conv_of_r_times_x():
    net = models.from_nnx(_OneConv(nnx.Rngs(0)), (6, 6, 3))
    method = baselines.BatchE(net, 2)
    state = method.init(jax.random.key(1))
    rng = np.random.default_rng(2)
    state["r"] = {"conv/kernel": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)}
    state["s"] = {"conv/kernel": jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)}
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
    for t in range(2):
        r, s = state["r"]["conv/kernel"][t], state["s"]["conv/kernel"][t]
        want = s[None, :] * net.apply(net.params, {}, x * r[None, None, None, :], False)[0]
        got, _ = method.logits(method.eval_vars(state, t), {}, x, False)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # about a minute of XLA:CPU compilation
def test_batche_on_a_convnet_with_per_task_bn():
    # Conv kernels carry fast weights over (c_in, c_out); BN statistics come back per task.
    net = models.gemresnet18(num_classes=OUT, nf=2)
    method = baselines.BatchE(net, 2)
    trainer = _trainer(method)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(16, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, OUT, size=16).astype(np.int32)
    state = method.init(jax.random.key(0))
    assert state["r"]["conv1/kernel"].shape == (2, 3)
    assert state["s"]["conv1/kernel"].shape == (2, 2)
    state, stats = trainer.train_task(state, 0, x, y, jax.random.key(0), 2, 8)
    assert not _same(stats, net.batch_stats)
    acc = float(trainer.evaluate(state, 0, stats, x, y))
    assert 0.0 <= acc <= 1.0


# ---------------------------------------------------------------- the runner, end to end
_RUNNER_CASES = [
    ("batche", {}), ("batche", {"rand_w": True}), ("batche", {"oneshot": True}),
    ("batche", {"oneshot": True, "shortlist": True}), ("psp", {}),
    ("psp", {"psp_context": "binary"}), ("separate_heads", {}),
    ("separate_heads", {"rand_w": True}), ("lower_bound", {}), ("upper_bound", {}),
]


def _tiny_config(method, opts):
    variants = "tiny,fashion,lenet," + ("psp" if method == "psp" else "batche")
    if opts.get("oneshot"):
        variants += ",oneshot"
    if opts.get("shortlist"):
        variants += ",shortlist"
    c = compare_permuted.get_config(variants)
    c.method = method
    c.rand_w = opts.get("rand_w", False)
    c.psp_context = opts.get("psp_context", "orthogonal")
    c.steps = 10
    c.max_eval_examples = 128
    c.tensorboard = False
    return c


@pytest.mark.parametrize("method,opts", _RUNNER_CASES)
def test_runner_runs_each_method(tmp_path, fashion_mnist, method, opts):
    res = train_and_evaluate(_tiny_config(method, opts), tmp_path)
    assert res["method"] == method
    loaded = results.load_results(tmp_path)
    m = results.matrix(loaded, "accuracy_matrix")
    assert m.shape == (3, 3) and np.all(np.isfinite(np.tril(m)))
    assert np.all((np.tril(m) >= 0) & (np.tril(m) <= 1))
    assert res["bytes_per_task"] > 0
    if opts.get("oneshot"):
        assert res["scenario"] == "GNu" and 0.0 <= res["task_inference_accuracy"] <= 1.0
        assert results.matrix(loaded, "inferred_accuracy_matrix") is not None
    for name in ("accuracy_vs_tasks.png", "accuracy_matrix.png", "accuracy.csv"):
        assert os.path.getsize(tmp_path / name) > 0
    # Methods whose earlier tasks cannot change report no forgetting on the GG matrix.
    if method in ("batche", "separate_heads", "upper_bound"):
        np.testing.assert_allclose(np.diag(m), m[-1], atol=0)


def test_runner_resume_equals_uninterrupted(tmp_path, fashion_mnist):
    c = _tiny_config("batche", {})
    full = train_and_evaluate(c, tmp_path / "a")
    train_and_evaluate(c, tmp_path / "b")
    # Drop the last checkpoint: the rerun resumes after task 2 and retrains task 3.
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "3")
    resumed = train_and_evaluate(c, tmp_path / "b")
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]


def test_display_labels_tell_shared_names_apart_by_output_size():
    # Every curve whose paper-style name another curve shares gets its output size, the last
    # one included.
    def run(s, objective):
        return [{"scenario": "GNu", "config": {"method": "supsup", "num_outputs": s,
                                               "inference": {"method": "one_shot",
                                                             "objective": objective}}}]
    runs = {f"s{s}_{o}": run(s, o) for s in (25, 100, 500) for o in ("h", "g")}
    runs["psp_gg"] = [{"scenario": "GG", "config": {"method": "psp", "num_outputs": 10}}]
    names = compare.display_labels(runs)
    assert names["s500_g"] == "SupSup (GNu, One-Shot G), s=500"
    assert names["s25_h"] == "SupSup (GNu, One-Shot H), s=25"
    assert names["psp_gg"] == "PSP (GG)"
    assert len(set(names.values())) == len(runs)


def test_compare_draws_every_method(tmp_path, fashion_mnist):
    # The rotated figure (the permuted one's methods run in the smoke tests above).
    runs = compare.run_figure("rotated_fashion", tmp_path, tiny=True, quiet=True,
                              extra={"steps": 5, "max_eval_examples": 128,
                                     "tensorboard": False})
    assert set(runs) == {"supsup_gnu_h", "supsup_gnu_g", "supsup_gnu_shortlist", "batche_gg",
                         "psp_gg"}
    assert os.path.getsize(tmp_path / "comparison.png") > 0
    text = (tmp_path / "comparison.md").read_text()
    names = compare.display_labels(runs)
    assert names["supsup_gnu_h"] == "SupSup (GNu, Binary H)" and names["psp_gg"] == "PSP (GG)"
    assert all(f"| {name} |" in text for name in names.values())
    # Redrawing runs nothing and finds every finished run.
    again = compare.run_figure("rotated_fashion", tmp_path, replot=True, quiet=True)
    assert {k: [r["accuracy_matrix"] for r in v] for k, v in again.items()} == \
        {k: [r["accuracy_matrix"] for r in v] for k, v in runs.items()}
    assert set(compare.TITLES) == set(compare.FIGURES)
    runs = {label: seeds[0] for label, seeds in runs.items()}
    assert runs["supsup_gnu_h"]["scenario"] == "GNu" and runs["psp_gg"]["scenario"] == "GG"
    assert all(r["config"]["stream"] == "rotated" for r in runs.values())
    assert runs["supsup_gnu_h"]["config"]["inference"]["method"] == "binary"
    assert [runs[f"supsup_gnu_{o}"]["config"]["inference"]["objective"] for o in "hg"] == ["h", "g"]
    with pytest.raises(ValueError, match="no methods"):
        compare.run_figure("permuted_fashion10", tmp_path, only=["ewc"])


def test_optimizer_groups_get_their_learning_rates():
    net = _mlp(hidden=(HID,))
    method = baselines.make_method("separate_heads", net, 2)
    seen = []

    def make(lr):
        seen.append(lr)
        return optax.sgd(lr)

    trainer = baselines.MethodTrainer(method, make, {"lr": 0.5, "weight_lr": 0.25},
                                      train_lib.make_preprocess((0.0,), (1.0,)))
    trainer.optimizer(0)
    assert sorted(seen) == [0.25, 0.5]  # trunk at weight_lr, head at lr on task 0
    seen.clear()
    trainer.optimizer(1)
    assert seen == [0.5]


def test_compare_over_seeds_reports_mean_and_deviation(tmp_path, fashion_mnist):
    runs = compare.run_figure("permuted_fashion10", tmp_path, tiny=True, quiet=True, seeds=2,
                              only=["supsup_gnu_g", "psp_gg"],
                              extra={"steps": 5, "max_eval_examples": 128,
                                     "tensorboard": False})
    assert set(runs) == {"supsup_gnu_g", "psp_gg"}
    for label, seeds in runs.items():
        assert [r["seed"] for r in seeds] == [0, 1]
        assert all((tmp_path / label / f"seed{k}" / "results.json").exists() for k in (0, 1))
        # Independent reference: the mean curve from each seed's own matrix.
        xs, mean, std = compare.seed_curve(seeds)
        per_seed = [compare.curve(r)[1] for r in seeds]
        np.testing.assert_allclose(mean, np.mean(per_seed, 0))
        np.testing.assert_allclose(std, np.std(per_seed, 0, ddof=1))
        acc = [r["average_accuracy"] for r in seeds]
        name = compare.display_labels(runs)[label]
        row = next(line for line in (tmp_path / "comparison.md").read_text().splitlines()
                   if line.startswith(f"| {name} |"))
        assert f"{np.mean(acc):.4f} ± {np.std(acc, ddof=1):.4f}" in row and "| 2 |" in row
    summary = json.loads((tmp_path / "comparison.json").read_text())
    for label, seeds in runs.items():
        assert [s["curve"] for s in summary["methods"][label]["seeds"]] == [
            [list(p) for p in zip(*compare.curve(r), strict=True)] for r in seeds]
    # Different seeds are different runs (stream and weights).
    assert runs["psp_gg"][0]["accuracy_matrix"] != runs["psp_gg"][1]["accuracy_matrix"]
    assert os.path.getsize(tmp_path / "comparison.png") > 0
    with pytest.raises(ValueError, match="either seeds or a seed"):
        compare.run_figure("permuted_fashion10", tmp_path, seeds=2, extra={"seed": 1})


def test_every_reevaluated_curve_differs_from_its_source_only_in_evaluation():
    for figure, pairs in compare.REEVALUATES.items():
        specs = {label: spec for label, *spec in compare.FIGURES[figure]}
        for label, source in pairs.items():
            a, b = (compare.method_config(*specs[x]).to_dict() for x in (label, source))
            differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
            assert differ and differ <= set(EVALUATION_FIELDS), (figure, label, differ)


def test_compare_reevaluates_the_g_curve_on_the_h_runs_masks(tmp_path, fashion_mnist):
    extra = {"steps": 5, "max_eval_examples": 128, "tensorboard": False}
    with pytest.raises(ValueError, match="run supsup_gnu_h first"):
        compare.run_figure("permuted_fashion", tmp_path, tiny=True, quiet=True,
                           only=["supsup_gnu_g"], extra=extra)
    # The figure lists G before H: G must still run after the run it re-evaluates.
    runs = compare.run_figure("permuted_fashion", tmp_path, tiny=True, quiet=True,
                              only=["supsup_gnu_g", "supsup_gnu_h"], extra=extra)
    assert list(runs) == ["supsup_gnu_g", "supsup_gnu_h"]  # drawn in the figure's order
    h, g = runs["supsup_gnu_h"][0], runs["supsup_gnu_g"][0]
    assert g["reevaluated_from"] == {"workdir": str(tmp_path / "supsup_gnu_h"),
                                     "tasks": h["num_tasks"]}
    assert not (tmp_path / "supsup_gnu_g" / "checkpoints").exists()  # nothing trained again
    assert [r["config"]["inference"]["objective"] for r in (h, g)] == ["h", "g"]
    # The same masks: given the task, every evaluated entry is the H run's.
    assert g["accuracy_matrix"] == h["accuracy_matrix"]
    assert g["config"]["max_eval_examples"] == h["config"]["max_eval_examples"] == 128
