"""Task inference on trained masks, against independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import bank as bank_lib
from supsup_jax import inference, masking, models, scenarios
from supsup_jax import train as train_lib
from supsup_jax.data import PermutedStream

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
