"""Hopfield storage and HopSupSup recovery (SPEC 1.9) against independent references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import hopfield, hopsupsup, masking
from supsup_jax import train as train_lib
from supsup_jax.models.bnnet import batch_norm, bnnet, neuron_mask_filter


def _patterns(seed, p, d):
    return np.random.default_rng(seed).choice([-1.0, 1.0], size=(p, d)).astype(np.float32)


def _storkey_loops(patterns):
    """The official update written out with Python loops over lists (no numpy algebra)."""
    d = len(patterns[0])
    w = [[0.0] * d for _ in range(d)]
    for x in patterns:
        h = [sum(w[i][k] * x[k] for k in range(d)) for i in range(d)]
        w = [[w[i][j] + (x[i] * x[j] - (i == j) - x[i] * h[j] - h[i] * x[j]) / d
              for j in range(d)] for i in range(d)]
    return np.array(w)


def test_storkey_two_patterns_by_hand():
    # x1 = (1, -1, 1, 1): W1 = (x1 x1^T - I) / 4. x2 = (1, 1, -1, 1): h = W1 x2 = -x2 / 4, so
    # x2 h^T + h x2^T = -x2 x2^T / 2 and W2 = W1 + (1.5 x2 x2^T - I) / 4.
    w1 = np.array([[0, -.25, .25, .25], [-.25, 0, -.25, -.25], [.25, -.25, 0, .25],
                   [.25, -.25, .25, 0]])
    w2 = np.array([[.125, .125, -.125, .625], [.125, .125, -.625, .125],
                   [-.125, -.625, .125, -.125], [.625, .125, -.125, .125]])
    x1 = jnp.array([1.0, -1.0, 1.0, 1.0])
    x2 = jnp.array([1.0, 1.0, -1.0, 1.0])
    got1 = hopfield.storkey_update(hopfield.init(4), x1)
    np.testing.assert_allclose(got1, w1, atol=1e-7)
    np.testing.assert_allclose(hopfield.storkey_update(got1, x2), w2, atol=1e-7)
    np.testing.assert_allclose(hopfield.store(hopfield.init(4), jnp.stack([x1, x2]), "storkey"),
                               w2, atol=1e-7)


def test_storkey_matches_loop_reference_and_is_order_dependent():
    pats = _patterns(0, 4, 7)
    got = hopfield.store(hopfield.init(7), jnp.asarray(pats), "storkey")
    np.testing.assert_allclose(got, _storkey_loops(pats.tolist()), atol=1e-6)
    np.testing.assert_allclose(got, got.T, atol=1e-6)
    flipped = hopfield.store(hopfield.init(7), jnp.asarray(pats[::-1]), "storkey")
    assert not np.allclose(got, flipped, atol=1e-4)


def test_hebbian_is_the_printed_rule():
    pats = _patterns(1, 3, 5)
    ref = sum(np.outer(x, x) for x in pats) / 5
    got = hopfield.store(hopfield.init(5), jnp.asarray(pats), "hebbian")
    np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("rule", sorted(hopfield.RULES))
def test_stored_patterns_are_fixed_points(rule):
    d, p = 256, 8  # far below capacity (Hebbian ~0.14 d, Storkey more)
    pats = jnp.asarray(_patterns(2, p, d))
    w = hopfield.store(hopfield.init(d), pats, rule)
    np.testing.assert_array_equal(np.sign(np.asarray(w) @ np.asarray(pats).T).T, pats)
    assert bool(jnp.all(hopfield.is_fixed_point(w, pats)))
    for x in pats:
        s, sweeps = hopfield.recall(w, x)
        np.testing.assert_array_equal(s, x)
        assert int(sweeps) == 1


def test_overloaded_network_loses_fixed_points():
    # The check above can fail: far beyond capacity most stored patterns are not stable.
    d = 64
    pats = jnp.asarray(_patterns(3, 64, d))
    w = hopfield.store(hopfield.init(d), pats, "hebbian")
    assert float(jnp.mean(hopfield.is_fixed_point(w, pats))) < 0.5


@pytest.mark.parametrize("rule", sorted(hopfield.RULES))
def test_recall_from_corrupted_pattern(rule):
    d, p = 256, 5
    pats = _patterns(4, p, d)
    w = hopfield.store(hopfield.init(d), jnp.asarray(pats), rule)
    rng = np.random.default_rng(5)
    for k in range(p):
        probe = pats[k].copy()
        flip = rng.choice(d, size=d // 5, replace=False)  # 20% of the neurons wrong
        probe[flip] *= -1
        assert float(hopfield.energy(w, jnp.asarray(probe))) > float(
            hopfield.energy(w, jnp.asarray(pats[k])))
        s, _ = hopfield.recall(w, jnp.asarray(probe))
        np.testing.assert_array_equal(s, pats[k])


def test_recall_many_matches_recall_row_by_row():
    d = 128
    w = hopfield.store(hopfield.init(d), jnp.asarray(_patterns(10, 4, d)), "hebbian")
    probes = jnp.asarray(_patterns(11, 6, d))
    got, _ = hopfield.recall_many(w, probes)
    for k in range(6):
        np.testing.assert_array_equal(got[k], hopfield.recall(w, probes[k])[0])


@pytest.mark.parametrize("rule", sorted(hopfield.RULES))
def test_attractors_are_the_stored_patterns_and_negations(rule):
    d, p = 256, 5
    pats = _patterns(12, p, d)
    w = hopfield.store(hopfield.init(d), jnp.asarray(pats), rule)
    got = hopfield.attractors(w, jax.random.key(0))
    want = {tuple(s * x) for x in pats for s in (1, -1)}
    assert {tuple(x) for x in got} == want and len(got) == 2 * p
    e = np.asarray(hopfield.energy(w, jnp.asarray(got)))
    assert np.all(np.diff(e) >= 0)  # lowest energy first
    # The energy cut matters: without it the spurious (mixture) fixed points come too.
    loose = hopfield.attractors(w, jax.random.key(0), energy_ratio=0.3)
    assert len(loose) > 2 * p
    assert all(bool(hopfield.is_fixed_point(w, jnp.asarray(x))) for x in loose)


def test_energy_and_gradient_against_numpy():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(6, 6)).astype(np.float32)
    s = rng.normal(size=(3, 6)).astype(np.float32)
    ref = np.array([-0.5 * v @ w @ v for v in s])
    np.testing.assert_allclose(hopfield.energy(jnp.asarray(w), jnp.asarray(s)), ref, rtol=1e-5)
    np.testing.assert_allclose(hopfield.energy_grad(jnp.asarray(w), jnp.asarray(s)),
                               -0.5 * s @ (w + w.T), rtol=1e-5, atol=1e-6)


def test_jit_matches_eager_and_does_not_recompile():
    pats = jnp.asarray(_patterns(7, 3, 32))
    store = jax.jit(hopfield.store, static_argnames="rule")
    w = store(hopfield.init(32), pats, rule="storkey")
    np.testing.assert_allclose(w, hopfield.store(hopfield.init(32), pats, "storkey"), atol=1e-6)
    store(w, pats, rule="storkey")
    assert store._cache_size() == 1


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown Hopfield rule"):
        hopfield.store(hopfield.init(4), jnp.ones((1, 4)), "oja")
    with pytest.raises(ValueError, match="neurons"):
        hopfield.storkey_update(hopfield.init(4), jnp.ones(5))
    with pytest.raises(ValueError, match="square"):
        hopfield.energy(jnp.ones((3, 4)), jnp.ones(4))
    with pytest.raises(ValueError, match="d >= 1"):
        hopfield.init(0)


def test_storage_bits():
    assert hopfield.storage_bits(2048, 5) == {"hopfield_bits": 2048 * 2048 * 32,
                                              "hopfield_symmetric_bits": 2048 * 2049 // 2 * 32,
                                              "mask_bits": 5 * 2048}


def test_initial_scores_hamming_and_steps_to_recover():
    stored = {"a": jnp.array([[1, 0, 1], [1, 1, 0], [0, 1, 1]], bool)}
    np.testing.assert_allclose(hopsupsup.initial_scores(stored)["a"], [1 / 3, 1 / 3, 1 / 3])
    assert hopsupsup.hamming({"a": [1, 0, 1], "b": [0]}, {"a": [1, 1, 0], "b": [1]}) == 3
    assert hopsupsup.steps_to_recover([5, 2, 0, 1, 0, 0]) == 4
    assert hopsupsup.steps_to_recover([0, 0]) == 0
    assert hopsupsup.steps_to_recover([3, 0, 2]) is None


def _entropy_np(logits):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(np.mean(-(np.exp(logp) * logp).sum(-1)))


def test_attractor_recovery_is_successive_halving_by_entropy():
    # Reference: every combination of the given per-layer candidates, ordered by summed energy,
    # halved by cumulative entropy with plain loops and numpy.
    net = bnnet(10, seed=1, hidden=(16, 12))
    pre = train_lib.make_preprocess((0.5,), (0.25,))
    rec = hopsupsup.HopfieldRecovery(net, pre, rule="hebbian", batch_size=8)
    rng = np.random.default_rng(13)
    cands = {"neuron_masks/0": rng.choice([-1.0, 1.0], (3, 16)).astype(np.float32),
             "neuron_masks/1": rng.choice([-1.0, 1.0], (2, 12)).astype(np.float32)}
    memory = {p: hopfield.store(hopfield.init(c.shape[1]), jnp.asarray(c), "hebbian")
              for p, c in cands.items()}
    images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    combos = [(i, j) for i in range(3) for j in range(2)]
    energy = [sum(float(-0.5 * v @ np.asarray(memory[p]) @ v)
                  for p, v in (("neuron_masks/0", cands["neuron_masks/0"][i]),
                               ("neuron_masks/1", cands["neuron_masks/1"][j])))
              for i, j in combos]
    combos = [combos[k] for k in np.argsort(energy, kind="stable")]

    def mask(c):
        return {"neuron_masks/0": cands["neuron_masks/0"][c[0]] >= 0,
                "neuron_masks/1": cands["neuron_masks/1"][c[1]] >= 0}

    truth = mask(combos[-1])
    key = jax.random.key(3)
    order = np.asarray(jax.random.permutation(key, 40))
    alive, total, leaders = list(range(len(combos))), [0.0] * len(combos), [0]
    for b in range(5):
        if len(alive) == 1:
            break
        x = images[order[8 * b:8 * b + 8]]
        for k in alive:
            m = {p: jnp.asarray(v, jnp.float32) for p, v in mask(combos[k]).items()}
            logits, _ = net.apply(masking.mask_params(net.params, m), {},
                                  pre(jnp.asarray(x), None, False), False)
            total[k] += _entropy_np(np.asarray(logits, np.float64))
        alive = sorted(sorted(alive), key=lambda k: total[k])[:(len(alive) + 1) // 2]
        leaders.append(alive[0])
    assert len(leaders) == 4  # 6 -> 3 -> 2 -> 1
    r = rec.recover(memory, None, images, key, true_masks=truth, candidates=cands)
    assert r.num_candidates == 6
    want = [hopsupsup.hamming(mask(combos[k]), truth) for k in leaders]
    np.testing.assert_array_equal(r.hamming, want)
    for p in truth:
        np.testing.assert_array_equal(r.masks[p], mask(combos[leaders[-1]])[p])
    np.testing.assert_allclose(r.entropy[-1], total[leaders[-1]] / 3, rtol=1e-4)
    # Without explicit candidates they come from the networks (hopfield.attractors).
    own = rec.candidates(memory)
    r2 = rec.recover(memory, None, images, key)
    assert r2.num_candidates == len(own["neuron_masks/0"]) * len(own["neuron_masks/1"])


def test_bnnet_batch_norm_and_masked_neurons():
    x = np.random.default_rng(8).normal(size=(16, 5)).astype(np.float32)
    ref = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(batch_norm(jnp.asarray(x)), ref, rtol=1e-4, atol=1e-5)
    net = bnnet(10, hidden=(32, 16))
    masks = masking.masked_leaves(net.params, neuron_mask_filter)
    assert sorted(masks) == ["neuron_masks/0", "neuron_masks/1"]
    imgs = jnp.asarray(np.random.default_rng(9).normal(size=(8, 28, 28, 1)), jnp.float32)
    off = {"neuron_masks/0": jnp.ones(32), "neuron_masks/1": jnp.zeros(16)}
    logits, _ = net.apply(masking.mask_params(net.params, off), {}, imgs, False)
    np.testing.assert_array_equal(logits, 0.0)  # Swish(0) = 0: masked neurons output exactly 0


def test_end_to_end_recovery_on_fashion(fashion_mnist):
    # Three SplitFashionMNIST tasks, (T-shirt, trouser), (shirt, sneaker) and (bag, ankle boot),
    # BNNet 2048-2048, the official protocol: train, store, recover without the task.
    from supsup_jax.data import split_mnist

    stream = split_mnist(fashion_mnist)
    tasks = [stream.task(0), stream.task(3), stream.task(4)]
    net = bnnet(10, seed=0, hidden=(2048, 2048))
    pre = train_lib.make_preprocess((0.1307,), (0.3081,))
    trainer = train_lib.Trainer(net, masking.make_mask_fn("threshold"),
                                train_lib.make_optimizer("sgd", 0.1, weight_decay=1e-4),
                                pre, is_masked=neuron_mask_filter, chunk_size=60)
    rec = hopsupsup.HopfieldRecovery(net, pre, rule="storkey", method="anneal")
    masks, memory = [], rec.init_memory()
    for t, task in enumerate(tasks):
        zeros = {p: jnp.zeros(w.shape) for p, w in trainer.weights.items()}
        state = trainer.init_task(jax.random.key(t), scores=zeros)
        state = trainer.train_task(state, task.train_images, task.train_labels,
                                   jax.random.key(10 + t), 60, 128)
        masks.append({p: np.asarray(m) for p, m in trainer.masks(state.scores).items()})
        memory = rec.store(memory, masks[-1])
    assert min(hopsupsup.hamming(a, b) for a in masks for b in masks if a is not b) > 1000
    stored = {p: jnp.stack([jnp.asarray(m[p]) for m in masks]) for p in rec.weights}
    att = hopsupsup.HopfieldRecovery(net, pre, rule="storkey", method="attractor")
    cands = att.candidates(memory)  # from the networks alone: the 3 masks and their negations
    assert all(len(c) == 6 for c in cands.values())
    for t, task in enumerate(tasks):
        x, y = task.test_images, task.test_labels  # 2000 images: 32 steps of 64
        given = rec.accuracy(masks[t], x, y)
        assert given > 0.9
        a = att.recover(memory, None, x, jax.random.key(20 + t), true_masks=masks[t],
                        candidates=cands)
        assert a.num_candidates == 36 and len(a.hamming) == 7 and a.hamming[-1] == 0
        r = rec.recover(memory, stored, x, jax.random.key(20 + t), true_masks=masks[t])
        assert r.hamming.shape == (33,) and r.energy.shape == r.entropy.shape == (32,)
        assert r.hamming[0] > 1000 and r.hamming[-1] == 0
        assert rec.accuracy(r.masks, x, y) == pytest.approx(given)


def test_runner_runs_hopsupsup_and_resumes_after_the_last_finished_task(tmp_path, fashion_mnist,
                                                                       monkeypatch):
    from experiments.configs import hopsupsup as hop_config
    from supsup_jax.checkpoint import CheckpointError
    from supsup_jax.runner import train_and_evaluate

    c = hop_config.get_config("fashion,tiny")
    c.steps, c.max_eval_examples = 10, 128
    c.hopfield.repeats, c.hopfield.compare_methods, c.hopfield.compare_rules = 1, (), ()
    c.quiet = True
    full = train_and_evaluate(c, tmp_path / "a")  # through the runner's entry point
    assert full["num_tasks"] == 5 and len(full["wall_time_per_task"]) == 5
    # A run killed while training task 2: tasks 0 and 1 come back from its checkpoint.
    trained, kill_at = [], [3]
    original = train_lib.Trainer.train_task

    def train_task(self, *args, **kwargs):
        trained.append(1)
        if len(trained) == kill_at[0]:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(train_lib.Trainer, "train_task", train_task)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(c, tmp_path / "b")
    trained.clear()
    kill_at[0] = None
    resumed = train_and_evaluate(c, tmp_path / "b")
    assert len(trained) == 3  # tasks 2, 3 and 4
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["inferred_accuracy_matrix"] == full["inferred_accuracy_matrix"]
    c2 = hop_config.get_config("fashion,tiny")
    c2.steps, c2.max_eval_examples, c2.seed = 10, 128, 1
    with pytest.raises(CheckpointError, match="different config"):
        train_and_evaluate(c2, tmp_path / "b")


def test_annealed_recovery_step_and_schedule_against_a_hand_reference(monkeypatch):
    # One step of the paper's annealed pass, written out independently: the straight-through
    # mask as `s + stop_gradient(step(s) - s)`, entropy and energy by hand, and PyTorch's SGD
    # (momentum buffer = grad + wd * p on the first step).
    net = bnnet(10, seed=0, hidden=(16, 12))
    rec = hopsupsup.HopfieldRecovery(net, train_lib.make_preprocess((0.5,), (0.25,)),
                                     method="anneal", gamma=0.3, lr=2.0, momentum=0.9,
                                     weight_decay=0.01, batch_size=8)
    rng = np.random.default_rng(0)
    stored = {p: jnp.asarray(rng.random((3, w.shape[0])) < 0.5) for p, w in rec.weights.items()}
    memory = rec.init_memory()
    for t in range(3):
        memory = rec.store(memory, {p: m[t] for p, m in stored.items()})
    images = rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    scores = hopsupsup.initial_scores(stored)
    frac = 0.25

    def reference(scores):
        masks = {p: s + jax.lax.stop_gradient((s >= 0).astype(s.dtype) - s)
                 for p, s in scores.items()}
        x = (jnp.asarray(images, jnp.float32) / 255.0 - 0.5) / 0.25
        logits, _ = net.apply(masking.mask_params(net.params, masks), {}, x, False)
        logp = jax.nn.log_softmax(logits)
        h = jnp.mean(-jnp.sum(jnp.exp(logp) * logp, -1))
        e = sum(-0.5 * (2 * masks[p] - 1) @ memory[p] @ (2 * masks[p] - 1) for p in masks)
        return (1 - frac) * h + 0.3 * frac * e

    g = jax.grad(reference)(scores)
    want = {p: np.asarray(scores[p] - 2.0 * (g[p] + 0.01 * scores[p])) for p in scores}
    got, _, _, _ = rec._step(net.params, memory, scores, rec.optimizer.init(scores),
                             jnp.asarray(images), jnp.float32(frac))
    assert any(np.any(np.asarray(g[p]) != 0) for p in g)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-5)

    # The schedule: batch b of N is weighted (1 - b/N) H + gamma (b/N) E, b = 1..N.
    fracs = []
    step = rec._step
    monkeypatch.setattr(rec, "_step", lambda *a: (fracs.append(float(a[-1])), step(*a))[1])
    many = np.concatenate([images] * 3)  # 24 images: 3 batches of 8
    rec.recover(memory, stored, many)
    np.testing.assert_allclose(fracs, [1 / 3, 2 / 3, 1.0], rtol=1e-6)
