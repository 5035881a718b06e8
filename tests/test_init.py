"""Initialisers against their definitions (SPEC 1.1)."""

import math

import jax
import numpy as np
import pytest

from supsup_jax import init, masking, models


@pytest.mark.parametrize("shape", [(784, 300), (3, 3, 16, 32), (160, 5)])
def test_signed_constant_has_exactly_two_values(shape):
    w = np.asarray(init.signed_kaiming_constant()(jax.random.key(0), shape))
    fan_in = math.prod(shape[:-1])
    c = np.float32(math.sqrt(2.0) / math.sqrt(fan_in))
    assert set(np.unique(w).tolist()) == {-c, c}
    # Each sign with probability 1/2.
    assert abs((w > 0).mean() - 0.5) < 0.05


def test_signed_constant_layers_of_a_model_and_same_seed_same_weights():
    a = models.fc1024(num_outputs=500, seed=3)
    b = models.fc1024(num_outputs=500, seed=3)
    c = models.fc1024(num_outputs=500, seed=4)
    for (p, wa), wb, wc in zip(masking.masked_leaves(a.params).items(),
                               masking.masked_leaves(b.params).values(),
                               masking.masked_leaves(c.params).values(), strict=True):
        np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb))
        assert not np.array_equal(np.asarray(wa), np.asarray(wc))
        vals = np.unique(np.asarray(wa))
        assert len(vals) == 2 and vals[0] == -vals[1], p
        np.testing.assert_allclose(vals[1], math.sqrt(2 / wa.shape[0]), rtol=1e-6)


def test_kaiming_normal_and_uniform_statistics():
    shape = (400, 500)
    n = np.asarray(init.kaiming_normal()(jax.random.key(1), shape))
    assert abs(n.std() - math.sqrt(2 / 400)) / math.sqrt(2 / 400) < 0.01
    u = np.asarray(init.kaiming_uniform()(jax.random.key(1), shape))
    bound = math.sqrt(2) * math.sqrt(3 / 400)
    assert u.max() <= bound and u.min() >= -bound and u.max() > 0.99 * bound


def test_score_init_is_pytorch_kaiming_uniform_a_sqrt5():
    s = np.asarray(init.score_init(jax.random.key(2), (300, 100)))
    bound = 1 / math.sqrt(300)
    assert s.max() <= bound and s.min() >= -bound and s.max() > 0.99 * bound
    assert abs((s >= 0).mean() - 0.5) < 0.02  # a fresh threshold mask is ~50% dense


def test_fan_mode_and_errors():
    w = np.asarray(init.signed_kaiming_constant(mode="fan_out")(jax.random.key(0), (3, 3, 4, 8)))
    np.testing.assert_allclose(np.abs(w), math.sqrt(2 / 72), rtol=1e-6)
    with pytest.raises(ValueError, match="fan_in"):
        init.signed_kaiming_constant(mode="bad")(jax.random.key(0), (3, 4))
    with pytest.raises(ValueError, match="unknown weight init"):
        init.weight_init("nope")
