"""Task inference on trained masks, against independent references."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import bank as bank_lib
from supsup_jax import inference, masking, models, scenarios
from supsup_jax import train as train_lib
from supsup_jax.data import PermutedStream
from supsup_jax.errors import NoTaskSignalError

NUM_TASKS = 3


@pytest.fixture(scope="module")
def trained(fashion_mnist):
    ds = fashion_mnist._replace(
        train_images=fashion_mnist.train_images[:10000],
        train_labels=fashion_mnist.train_labels[:10000],
        test_images=fashion_mnist.test_images[:512],
        test_labels=fashion_mnist.test_labels[:512],
    )
    stream = PermutedStream(ds, NUM_TASKS, seed=0)
    net = models.lenet300_100(num_outputs=100, seed=0)
    preprocess = train_lib.make_preprocess(stream.mean, stream.std)
    trainer = train_lib.Trainer(net, masking.make_mask_fn("threshold"),
                                train_lib.make_optimizer("rmsprop", 1e-3), preprocess,
                                chunk_size=50)
    bank = bank_lib.MaskBank.create(trainer.weights, capacity=4)  # one spare slot
    tasks = []
    for t in range(NUM_TASKS):
        task = stream.task(t)
        state = trainer.init_task(jax.random.key(t))
        state = trainer.train_task(state, task.train_images, task.train_labels,
                                   jax.random.key(100 + t), 150, 128)
        bank = bank.add(trainer.masks(state.scores))
        tasks.append(task)
    return net, bank, tasks, preprocess, trainer


def _x(tasks, preprocess, t, n=128):
    return preprocess(jnp.asarray(tasks[t].test_images[:n]), None, False)


def test_alpha_gradient_equals_explicit_float_superposition_and_finite_difference(trained):
    net, bank, tasks, preprocess, _ = trained
    x = _x(tasks, preprocess, 1, 16)
    w = inference.first_m_weights(16, 16)
    obj = inference.make_objective("g", 10)
    alpha = inference.uniform_alpha(bank)
    value, g = inference.alpha_gradient(net, net.params, bank, alpha, x, w, obj)
    # Reference: stack the unpacked float32 masks and let jax.grad do the rest.
    stacked = {p: jnp.stack([bank_lib.unpack_task(bank, i)[p] for i in range(bank.capacity)])
               for p, _ in bank.shapes}

    def explicit(a):
        sup = {p: jnp.einsum("t,t...->...", a, m) for p, m in stacked.items()}
        logits, _ = net.apply(masking.mask_params(net.params, sup), {}, x, False)
        return obj(logits, w)

    ref_value, ref = jax.value_and_grad(explicit)(alpha)
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=1e-4, atol=1e-6)
    # Finite difference, with H: G's stop-gradient makes its gradient differ from its value's
    # derivative by design (only the s-neurons carry gradient).
    _, gh = inference.alpha_gradient(net, net.params, bank, alpha, x, w, inference.entropy)

    def h(a):
        sup = {p: jnp.einsum("t,t...->...", a, m) for p, m in stacked.items()}
        return inference.entropy(net.apply(masking.mask_params(net.params, sup), {}, x,
                                           False)[0], w)

    eps = 1e-3
    for i in range(NUM_TASKS):
        e = jnp.zeros(bank.capacity).at[i].set(eps)
        fd = (float(h(alpha + e)) - float(h(alpha - e))) / (2 * eps)
        np.testing.assert_allclose(float(gh[i]), fd, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("objective", ["h", "g"])
def test_one_shot_binary_exhaustive_find_the_task_full_batch(trained, objective):
    net, bank, tasks, preprocess, _ = trained
    obj = inference.make_objective(objective, 10)
    w = inference.first_m_weights(128, 128)
    for t in range(NUM_TASKS):
        x = _x(tasks, preprocess, t)
        assert int(inference.one_shot(net, net.params, bank, x, w, obj)) == t
        assert int(inference.binary(net, net.params, bank, x, w, obj)) == t
        assert int(inference.exhaustive(net, net.params, bank, x, w, obj)) == t
        task, steps = inference.gradient_descent(net, net.params, bank, x, w, obj)
        assert int(task) == t and 1 <= int(steps) <= 50


@pytest.mark.parametrize("objective", ["h", "g"])
def test_binary_equals_a_python_loop_over_full_gradients(trained, objective):
    # Binary computes only the remaining candidates' gradients (grad_rows); the reference
    # computes every gradient from explicitly stacked float masks and halves in Python.
    net, bank, tasks, preprocess, _ = trained
    obj = inference.make_objective(objective, 10)
    stacked = {p: jnp.stack([bank_lib.unpack_task(bank, i)[p] for i in range(bank.capacity)])
               for p, _ in bank.shapes}

    def grad(a, x, w):
        def f(a):
            sup = {p: jnp.einsum("t,t...->...", a, m) for p, m in stacked.items()}
            return obj(net.apply(masking.mask_params(net.params, sup), {}, x, False)[0], w)
        return np.asarray(jax.grad(f)(a))

    for t in range(NUM_TASKS):
        for first in (0, 5):  # the image that decides
            x = _x(tasks, preprocess, t)[first:first + 8]
            w = inference.first_m_weights(8, 1)
            alive = [i for i in range(NUM_TASKS)]
            while len(alive) > 1:
                a = np.zeros(bank.capacity, np.float32)
                a[alive] = 1.0 / len(alive)
                g = grad(jnp.asarray(a), x, w)
                alive = sorted(sorted(alive, key=lambda i: (g[i], i))[:(len(alive) + 1) // 2])
            got = int(inference.binary(net, net.params, bank, x, w, obj))
            assert got == alive[0], (t, first, got, alive)


def _np_log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_entropy(logits, w):
    logp = _np_log_softmax(logits)
    h = -(np.exp(logp) * logp).sum(-1)
    return float((h * w).sum() / w.sum())


def _np_superfluous(logits, w, num_real=10):
    s = np.log(np.exp(_np_log_softmax(logits))[:, num_real:].sum(-1))
    return float((s * w).sum() / w.sum())


def test_superfluous_mass_against_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 14)).astype(np.float32) * 3
    w = np.array([1, 0, 1, 1, 0, 1], np.float32)
    obj = inference.make_objective("s", 10)
    np.testing.assert_allclose(float(obj(jnp.asarray(z), jnp.asarray(w))),
                               _np_superfluous(z.astype(np.float64), w), rtol=1e-5)
    with pytest.raises(ValueError, match="superfluous output neurons: 10 outputs"):
        obj(jnp.asarray(z[:, :10]), jnp.asarray(w))
    with pytest.raises(ValueError, match="S objective needs num_real"):
        inference.make_objective("s")


def _stacked(bank):
    return {p: jnp.stack([bank_lib.unpack_task(bank, i)[p] for i in range(bank.capacity)])
            for p, _ in bank.shapes}


def test_layer_restricted_gradient_equals_per_layer_float_reference(trained):
    # Reference: one alpha per layer over explicitly stacked float masks; the gradient w.r.t.
    # a layer's alpha is that layer's term, and the terms of the chosen layers sum.
    net, bank, tasks, preprocess, _ = trained
    x = _x(tasks, preprocess, 1, 16)
    w = inference.first_m_weights(16, 16)
    obj = inference.make_objective("s", 10)
    stacked = _stacked(bank)
    alpha = inference.uniform_alpha(bank)

    def f(per_layer):
        sup = {p: jnp.einsum("t,t...->...", per_layer[p], m) for p, m in stacked.items()}
        return obj(net.apply(masking.mask_params(net.params, sup), {}, x, False)[0], w)

    terms = jax.grad(f)({p: alpha for p in stacked})
    paths = [p for p, _ in bank.shapes]
    sup = bank_lib.superpose(alpha, bank)
    for chosen in ([paths[0]], [paths[0], paths[2]], paths):
        want = sum(np.asarray(terms[p]) for p in chosen)
        for pre in (None, sup):
            _, got = inference.alpha_gradient(net, net.params, bank, alpha, x, w, obj, pre,
                                              layers=tuple(chosen))
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)
    _, total = inference.alpha_gradient(net, net.params, bank, alpha, x, w, obj)
    np.testing.assert_allclose(np.asarray(total), sum(np.asarray(t) for t in terms.values()),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"\['layers/9/kernel'\] are not masked layers"):
        inference.alpha_gradient(net, net.params, bank, alpha, x, w, obj,
                                 layers=("layers/9/kernel",))
    with pytest.raises(ValueError, match="not masked layers"):
        bank.select(())


@pytest.mark.parametrize("objective,size,rerank", [
    ("h", 1, "s"), ("g", 2, "s"), ("minus_h", 2, "h"), ("minus_h", 3, "s"), ("h", 8, "h"),
    ("g", 3, "h")])
def test_shortlist_equals_a_hand_written_rerank(trained, objective, size, rerank):
    # Reference: every gradient from explicitly stacked float masks (all layers, or the first
    # one only), the `size` smallest (ties by index) re-ranked by a numpy H or S of each float
    # mask's logits. "minus_h" ranks tasks worst-first, so the re-ranking, not the gradient,
    # must find the answer.
    net, bank, tasks, preprocess, _ = trained
    obj = (lambda lg, w: -inference.entropy(lg, w)) if objective == "minus_h" else (
        inference.make_objective(objective, 10))
    np_rerank = _np_entropy if rerank == "h" else _np_superfluous
    masks = [bank_lib.unpack_task(bank, i) for i in range(NUM_TASKS)]
    stacked = _stacked(bank)
    first = bank.shapes[0][0]

    def f(a, x, w, layers):
        sup = {p: jnp.einsum("t,t...->...", a if p in layers else jax.lax.stop_gradient(a), m)
               for p, m in stacked.items()}
        return obj(net.apply(masking.mask_params(net.params, sup), {}, x, False)[0], w)

    for layers in (None, (first,)):
        how = scenarios.TaskInference("shortlist", "h", shortlist=size, rerank=rerank,
                                      layers=layers)
        gradient = functools.partial(inference.alpha_gradient, layers=layers)
        for t in range(NUM_TASKS):
            for start in (0, 3):
                x = _x(tasks, preprocess, t)[start:start + 8]
                w = np.asarray(inference.first_m_weights(8, 1))
                g = np.asarray(jax.grad(f)(inference.uniform_alpha(bank), x, jnp.asarray(w),
                                           layers or tuple(stacked)))
                cand = sorted(range(NUM_TASKS), key=lambda i: (g[i], i))[:size]
                v = {i: np_rerank(np.asarray(net.apply(masking.mask_params(
                    net.params, masks[i]), {}, x, False)[0], np.float64), w) for i in cand}
                want = min(cand, key=lambda i: (v[i], i))
                got = int(inference.shortlist(net, net.params, bank, x, jnp.asarray(w), obj,
                                              size=size, gradient=gradient,
                                              rerank=inference.make_objective(rerank, 10)))
                assert got == want, (layers, t, start, got, want, g, v)
                if objective == "h":  # the same through TaskInference, with the precomputed sum
                    sup = how.precompute(bank)
                    assert int(how.infer(net, net.params, bank, x, None, sup)) == want
    if size >= NUM_TASKS:  # every task shortlisted: Exhaustive's answer
        x = _x(tasks, preprocess, 1)[:8]
        w = inference.first_m_weights(8, 1)
        re = inference.make_objective(rerank, 10)
        assert int(inference.shortlist(net, net.params, bank, x, w, obj, size=size,
                                       rerank=re)) == int(
            inference.exhaustive(net, net.params, bank, x, w, re))


def test_shortlist_without_gradient_signal_is_no_task(trained):
    # G without superfluous neurons has a gradient of exactly 0: a shortlist of 2 of the 3
    # tasks would be the first two slots, a plausible wrong answer.
    net, bank, tasks, preprocess, _ = trained
    x = _x(tasks, preprocess, 2, 8)
    w = inference.first_m_weights(8, 1)
    zero = lambda lg, w: 0.0 * jnp.sum(lg)  # noqa: E731
    with pytest.raises(NoTaskSignalError):
        inference.shortlist(net, net.params, bank, x, w, zero, size=2)
    assert int(jax.jit(lambda x: inference.shortlist(net, net.params, bank, x, w, zero,
                                                     size=2))(x)) == inference.NO_TASK
    # With every task shortlisted the entropies alone decide.
    assert int(inference.shortlist(net, net.params, bank, x, w, zero, size=3)) == int(
        inference.exhaustive(net, net.params, bank, x, w, zero))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="shortlist"):
            inference.shortlist(net, net.params, bank, x, w, zero, size=bad)
        with pytest.raises(ValueError, match="shortlist"):
            scenarios.TaskInference("shortlist", shortlist=bad)
    for bad in ("x", "g"):
        with pytest.raises(ValueError, match="rerank must be one of"):
            scenarios.TaskInference("shortlist", rerank=bad)
    for bad in ((), ["layers/0/kernel"], "layers/0/kernel", (0,)):
        with pytest.raises(ValueError, match="layers must be a non-empty tuple"):
            scenarios.TaskInference("shortlist", layers=bad)
    with pytest.raises(ValueError, match="exhaustive uses no gradient"):
        scenarios.TaskInference("exhaustive", layers=("layers/0/kernel",))


def test_gradient_descent_answers_once_later_gradients_vanish_but_not_when_they_are_nan(trained):
    # A first gradient that ranks, then exactly 0 (a saturated softmax): alpha has decided and
    # its arg-max is the answer; a later non-finite gradient is no answer.
    net, bank, tasks, preprocess, _ = trained
    x = _x(tasks, preprocess, 0, 8)
    w = inference.first_m_weights(8, 8)
    first = jnp.array([0.0005, -0.001, 0.0005, 0.0])

    def fake(later):
        def gradient(network, params, bank, alpha, x, weights, objective, superposed=None):
            uniform = jnp.ptp(alpha[:NUM_TASKS]) == 0
            return 0.0, jnp.where(uniform, first, later)
        return gradient

    run = lambda x, later: inference.gradient_descent(  # noqa: E731
        net, net.params, bank, x, w, inference.entropy, gradient=fake(later))
    task, steps = run(x, jnp.zeros(4))
    assert int(task) == 1 and int(steps) == 50
    with pytest.raises(NoTaskSignalError):
        run(x, jnp.full(4, jnp.nan))
    task, _ = jax.jit(run)(x, jnp.full(4, jnp.nan))
    assert int(task) == inference.NO_TASK


def test_one_shot_never_picks_an_unlearned_slot(trained):
    net, bank, tasks, preprocess, _ = trained
    x = _x(tasks, preprocess, 0)
    # Make every learned gradient positive: an unlearned slot has gradient exactly 0.
    obj = lambda logits, w: -inference.entropy(logits, w)  # noqa: E731
    _, g = inference.alpha_gradient(net, net.params, bank, inference.uniform_alpha(bank), x,
                                    inference.first_m_weights(128, 128), obj)
    assert float(g[3]) == 0.0
    t = int(inference.one_shot(net, net.params, bank, x, inference.first_m_weights(128, 128),
                               obj))
    assert t < NUM_TASKS


def test_binary_on_ties_returns_exactly_one_learned_task(trained):
    net, bank, tasks, preprocess, _ = trained
    same = bank.task_masks(0)
    tied = bank_lib.MaskBank.create(same, capacity=8)
    for _ in range(5):
        tied = tied.add({p: m.astype(bool) for p, m in same.items()})
    x = _x(tasks, preprocess, 0)
    t = int(inference.binary(net, net.params, tied, x, inference.first_m_weights(128, 1),
                             inference.entropy))
    assert 0 <= t < 5


def test_per_example_equals_per_batch_with_batch_size_one(trained):
    net, bank, tasks, preprocess, _ = trained
    x = _x(tasks, preprocess, 2, 8)
    per_ex = scenarios.TaskInference("one_shot", "h", per_example=True)
    per_b = scenarios.TaskInference("one_shot", "h", m=1)
    got = per_ex.infer(net, net.params, bank, x, None)
    ref = [int(per_b.infer(net, net.params, bank, x[i:i + 1], None)) for i in range(8)]
    np.testing.assert_array_equal(np.asarray(got), ref)


@pytest.mark.parametrize("method", ["one_shot", "binary", "shortlist", "exhaustive"])
def test_only_the_deciding_images_go_through_inference(trained, method):
    # Reference: the method on the whole clean batch, zero weights past the first m (valid)
    # rows. TaskInference must give the same task when those rows are NaN, which it can only
    # do if they never enter the forward pass (0 * NaN is NaN in a gradient).
    net, bank, tasks, preprocess, _ = trained
    h = inference.make_objective("h", 10)
    fn = {"shortlist": functools.partial(inference.shortlist, size=2, rerank=h),
          "exhaustive": functools.partial(inference.exhaustive, score=h)
          }.get(method, inference.METHODS[method])
    for m, valid in ((1, None), (3, None), (3, jnp.arange(16) != 1)):
        how = scenarios.TaskInference(method, "h", m=m, shortlist=2, rerank="h")
        for t in range(NUM_TASKS):
            x = _x(tasks, preprocess, t, 16)
            w = inference.first_m_weights(16, m, valid)
            want = int(fn(net, net.params, bank, x, w, inference.entropy))
            poisoned = x.at[m:].set(jnp.nan)
            assert int(how.infer(net, net.params, bank, poisoned, valid)) == want, (m, t)


def test_bn_networks_decide_on_the_whole_batch():
    # They infer on batch statistics, to which every row contributes: nothing is cut.
    x = jnp.zeros((4, 32, 32, 3))
    xd, w = inference.deciding_images(models.gemresnet18(num_classes=5), x, 1)
    assert xd.shape == x.shape
    np.testing.assert_array_equal(w, [1, 0, 0, 0])
    xd, w = inference.deciding_images(models.lenet300_100(num_outputs=10), x[:, :28, :28, :1], 3)
    assert xd.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(w, [1, 1, 1])


def test_gnu_and_gns_evaluation(trained):
    net, bank, tasks, preprocess, trainer = trained
    key = jax.random.key(0)
    for t in range(NUM_TASKS):
        gg = float(trainer.evaluate(bank.task_masks(t), {}, tasks[t].test_images,
                                    tasks[t].test_labels))
        how = scenarios.TaskInference("one_shot", "g", m=128)
        gnu = scenarios.evaluate_unknown_task(net, bank, tasks[t].test_images,
                                              tasks[t].test_labels, t, how, preprocess, key)
        # Full-batch inference is right on every batch here, so GNu equals GG exactly.
        assert gnu["task_accuracy"] == 1.0
        assert gnu["accuracy"] == pytest.approx(gg, abs=1e-9)
    # One image per batch: GNu <= GNs, and both score only what was inferred.
    how = scenarios.TaskInference("one_shot", "h", m=1)
    gnu = scenarios.evaluate_unknown_task(net, bank, tasks[0].test_images, tasks[0].test_labels,
                                          0, how, preprocess, key)
    gns = scenarios.evaluate_unknown_task(net, bank, tasks[0].test_images, tasks[0].test_labels,
                                          0, how, preprocess, key, shared_labels=True)
    assert gnu["accuracy"] <= gns["accuracy"]
    assert gnu["task_accuracy"] == gns["task_accuracy"] > 0.5


def test_bad_inputs(trained):
    net, bank, tasks, preprocess, trainer = trained
    empty = bank_lib.MaskBank.create(trainer.weights)
    x = _x(tasks, preprocess, 0, 4)
    with pytest.raises(ValueError, match="empty"):
        inference.check_inputs(net, empty, x)
    with pytest.raises(ValueError, match="batch has shape"):
        inference.check_inputs(net, bank, x[:, :10])
    with pytest.raises(ValueError, match="NaN"):
        inference.check_inputs(net, bank, x.at[0, 0, 0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="alpha has shape"):
        inference.check_inputs(net, bank, x, alpha=jnp.ones(3))
    how = scenarios.TaskInference()
    with pytest.raises(ValueError, match="empty"):
        scenarios.evaluate_unknown_task(net, empty, tasks[0].test_images, tasks[0].test_labels,
                                        0, how, preprocess, jax.random.key(0))
    with pytest.raises(IndexError, match="outside the 3 learned"):
        scenarios.evaluate_unknown_task(net, bank, tasks[0].test_images, tasks[0].test_labels,
                                        3, how, preprocess, jax.random.key(0))
    with pytest.raises(ValueError, match="unknown inference method"):
        scenarios.TaskInference("magic")
    with pytest.raises(ValueError, match="needs num_real"):
        inference.make_objective("g", None)


def test_adding_a_task_does_not_recompile_inference(trained):
    net, bank, tasks, preprocess, _ = trained
    how = scenarios.TaskInference("one_shot", "g", m=1)
    args = (tasks[0].test_images[:256], tasks[0].test_labels[:256], 0, how, preprocess,
            jax.random.key(0))
    scenarios.evaluate_unknown_task(net, bank, *args)
    compiled = scenarios._evaluate_batches._cache_size()
    grown = bank.add({p: m.astype(bool) for p, m in bank.task_masks(1).items()})
    assert int(grown.num_tasks) == 4 and grown.capacity == bank.capacity
    scenarios.evaluate_unknown_task(net, grown, *args)
    assert scenarios._evaluate_batches._cache_size() == compiled


def test_precomputed_uniform_superposition_gives_the_same_gradient(trained):
    net, bank, tasks, preprocess, _ = trained
    x = _x(tasks, preprocess, 1, 32)
    w = inference.first_m_weights(32, 1)
    obj = inference.make_objective("g", 10)
    alpha = inference.uniform_alpha(bank)
    sup = bank_lib.superpose(alpha, bank)
    v1, g1 = inference.alpha_gradient(net, net.params, bank, alpha, x, w, obj)
    v2, g2 = inference.alpha_gradient(net, net.params, bank, alpha, x, w, obj, superposed=sup)
    assert float(v1) == float(v2)
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(g2))
    assert int(inference.one_shot(net, net.params, bank, x, w, obj, superposed=sup)) == int(
        inference.one_shot(net, net.params, bank, x, w, obj))


def test_diagnosis_agrees_with_the_library_rules(trained):
    # experiments/inference_diagnosis.py derives every rule's accuracy from per-image gradient
    # terms and objective values; each must equal the library rule run image by image (m=1,
    # per_example) and batch by batch (the mean over the batch), and the rank histograms must
    # count every image once.
    from experiments import inference_diagnosis

    net, bank, tasks, preprocess, _ = trained

    class Stream:
        def task(self, t):
            return tasks[t]

    n, batch = 12, 6
    d = inference_diagnosis.diagnose(net, bank, Stream(), preprocess, n=n, batch=batch)
    assert d["num_tasks"] == NUM_TASKS and len(d["density"]) == NUM_TASKS
    for i, dens in enumerate(d["density"]):
        masks = bank_lib.unpack_task(bank, i)
        assert dens == pytest.approx(np.mean([float(jnp.mean(m)) for m in masks.values()]))
    a = d["agreement_with_task_0"]
    assert a[0] == 1.0 and all(0.3 < v < 0.7 for v in a[1:])  # independent random inits
    m0, m2 = bank_lib.unpack_task(bank, 0), bank_lib.unpack_task(bank, 2)
    assert a[2] == pytest.approx(sum(float(jnp.sum(m0[p] == m2[p])) for p in m0)
                                 / sum(m.size for m in m0.values()))
    xs = [_x(tasks, preprocess, t, n) for t in range(NUM_TASKS)]

    def accuracy(how_m1):
        how_b = dataclasses.replace(how_m1, per_example=False, m=batch)
        m1 = np.mean([np.asarray(how_m1.infer(net, net.params, bank, x, None)) == t
                      for t, x in enumerate(xs)])
        full = np.mean([int(how_b.infer(net, net.params, bank, x[b:b + batch], None)) == t
                        for t, x in enumerate(xs) for b in range(0, n, batch)])
        return float(m1), float(full)

    first = d["layers"][0]
    for o, name, layers in (("h", "all", None), ("s", first, (first,))):
        r = d[o][name]
        got = accuracy(scenarios.TaskInference("one_shot", o, per_example=True,
                                               layers=layers))
        assert (r["one_shot_m1"], r["one_shot_full_batch"]) == pytest.approx(got), (o, name)
        assert sum(r["true_rank_m1"]) == NUM_TASKS * n
        assert r["true_rank_m1"][0] == round(r["one_shot_m1"] * NUM_TASKS * n)
        assert [sum(row) for row in r["confusion_m1"]] == [n] * NUM_TASKS
        for size, re in ((2, "s"), (3, "h")):
            got = accuracy(scenarios.TaskInference("shortlist", o, per_example=True,
                                                   layers=layers, shortlist=size, rerank=re))
            want = (r[f"shortlist_{re}_m1"][size], r[f"shortlist_{re}_full_batch"][size])
            assert want == pytest.approx(got), (o, name, size, re)
    for re in ("h", "s"):
        got = accuracy(scenarios.TaskInference("exhaustive", rerank=re, per_example=True))
        assert (d["exhaustive"][re]["m1"], d["exhaustive"][re]["full_batch"]) == pytest.approx(
            got)
    assert "S gradient" in inference_diagnosis.summary(d)
    with pytest.raises(ValueError, match="batch 13"):
        inference_diagnosis.diagnose(net, bank, Stream(), preprocess, n=n, batch=13)
