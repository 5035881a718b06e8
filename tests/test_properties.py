"""Property-based checks (hypothesis) of the exact counting rules."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from supsup_jax import bank as bank_lib
from supsup_jax import masks


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 300), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_topk_keeps_exactly_the_spec_count(numel, density, seed):
    s = np.random.default_rng(seed).normal(size=numel).astype(np.float32)
    m = np.asarray(masks.topk_mask(jnp.asarray(s), density))
    assert int(m.sum()) == numel - int((1 - density) * numel)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip_any_shape(shape, seed):
    shape = tuple(shape)
    m = np.random.default_rng(seed).random(shape) < 0.5
    bank = bank_lib.MaskBank.create({"w": np.zeros(shape)}, capacity=1).add({"w": m})
    np.testing.assert_array_equal(np.asarray(bank.task_masks(0)["w"]).astype(bool), m)
