"""Masking parameter pytrees: selection, W * M, and errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen

from supsup_jax import masking, models


def test_masked_model_equals_hand_masked_model():
    net = models.lenet300_100(num_outputs=20, seed=0)
    scores = masking.init_scores(jax.random.key(1), net.params)
    mask_fn = masking.make_mask_fn("threshold")
    x = jax.random.normal(jax.random.key(2), (4, 28, 28, 1))
    out, _ = net.apply(masking.mask_params(net.params, mask_fn(scores)), {}, x, False)
    # By hand: W * M with numpy, then the MLP forward in numpy.
    h = np.asarray(x).reshape(4, -1)
    for i in range(3):
        w = np.asarray(net.params["layers"][i]["kernel"])
        m = (np.asarray(scores[f"layers/{i}/kernel"]) >= 0).astype(np.float32)
        h = h @ (w * m)
        if i < 2:
            h = np.maximum(h, 0)
    np.testing.assert_allclose(np.asarray(out), h, rtol=2e-5, atol=2e-5)


class _LinenCNN(linen.Module):
    """A model we did not write for SupSup: Linen, biases, BatchNorm with scale/bias."""

    @linen.compact
    def __call__(self, x, train: bool):
        x = linen.Conv(8, (3, 3))(x)
        x = linen.BatchNorm(use_running_average=not train)(x)
        x = linen.relu(x).mean(axis=(1, 2))
        return linen.Dense(5)(x)


def test_masking_a_linen_model_we_did_not_write():
    module = _LinenCNN()
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    variables = module.init(jax.random.key(1), x, train=False)
    net = models.from_linen(module, variables, (8, 8, 3))
    weights = masking.masked_leaves(net.params)
    assert sorted(weights) == ["Conv_0/kernel", "Dense_0/kernel"]  # not biases, not BN scale
    frozen = masking.reinit_frozen(jax.random.key(2), net.params)
    vals = np.unique(np.asarray(frozen["Conv_0"]["kernel"]))
    assert len(vals) == 2  # signed constant
    np.testing.assert_array_equal(frozen["Dense_0"]["bias"], net.params["Dense_0"]["bias"])
    scores = masking.init_scores(jax.random.key(3), frozen)
    masks = masking.make_mask_fn("topk", 0.5)(scores)
    out, stats = net.apply(masking.mask_params(frozen, masks), net.batch_stats, x, True)
    # By hand: the same module applied to params with W * M set explicitly.
    hand = jax.tree.map(lambda a: a, frozen)
    hand["Conv_0"]["kernel"] = frozen["Conv_0"]["kernel"] * masks["Conv_0/kernel"]
    hand["Dense_0"]["kernel"] = frozen["Dense_0"]["kernel"] * masks["Dense_0/kernel"]
    ref, upd = module.apply({"params": hand, "batch_stats": net.batch_stats}, x, train=True,
                            mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6)
    chex.assert_trees_all_equal(stats, upd["batch_stats"])


def test_custom_filter_and_er_densities():
    net = models.fc1024(num_outputs=500)
    only_first = lambda path, leaf: path == "layers/0/kernel"
    w = masking.masked_leaves(net.params, only_first)
    assert list(w) == ["layers/0/kernel"]
    d = masking.er_densities(masking.masked_leaves(net.params), 4)
    assert d["layers/1/kernel"] == pytest.approx(4 * 2048 / 1024**2)
    with pytest.raises(ValueError, match="no parameter is selected"):
        masking.masked_leaves(net.params, lambda p, x: False)


def test_check_scores_errors_name_the_problem():
    net = models.lenet300_100()
    w = masking.masked_leaves(net.params)
    s = masking.init_scores(jax.random.key(0), net.params)
    masking.check_scores(w, s)
    bad = dict(s)
    del bad["layers/1/kernel"]
    with pytest.raises(ValueError, match="missing \\['layers/1/kernel'\\]"):
        masking.check_scores(w, bad)
    bad = dict(s, **{"layers/1/kernel": jnp.zeros((3, 3))})
    with pytest.raises(ValueError, match="layers/1/kernel.*shape"):
        masking.check_scores(w, bad)
    bad = dict(s, **{"layers/2/kernel": s["layers/2/kernel"].at[0, 0].set(jnp.nan)})
    with pytest.raises(ValueError, match="NaN"):
        masking.check_scores(w, bad)


def test_mask_fn_errors():
    with pytest.raises(ValueError, match="unknown mask rule"):
        masking.make_mask_fn("random")
    with pytest.raises(ValueError, match="needs a density"):
        masking.make_mask_fn("topk")
    with pytest.raises(KeyError, match="no top-k density"):
        masking.make_mask_fn("topk", {"a": 0.5})({"b": jnp.ones((2, 2))})


def test_scores_from_the_model_seed_are_independent_of_the_weights():
    # Regression: scores drawn with fold_in(key(s), i) copied the signs of a model built with
    # seed s (Flax folds in too), so every kept weight had one sign and the network was dead.
    for seed in range(3):
        net = models.lenet300_100(num_outputs=100, seed=seed)
        scores = masking.init_scores(jax.random.key(seed), net.params)
        for p, w in masking.masked_leaves(net.params).items():
            agree = float(jnp.mean((scores[p] >= 0) == (w > 0)))
            assert abs(agree - 0.5) < 0.05, (seed, p, agree)
