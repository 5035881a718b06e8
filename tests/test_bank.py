"""The bit-packed mask bank against unpacked float references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import bank as bank_lib

SHAPES = {"a/kernel": (13, 7), "b/kernel": (3, 3, 2, 5)}  # sizes not multiples of 8


def _random_masks(seed):
    rng = np.random.default_rng(seed)
    return {p: rng.random(s) < 0.5 for p, s in SHAPES.items()}


def _bank(num, capacity=2, stats=False):
    weights = {p: np.zeros(s, np.float32) for p, s in SHAPES.items()}
    template = {"bn": {"mean": np.zeros(4, np.float32)}} if stats else None
    bank = bank_lib.MaskBank.create(weights, template, capacity=capacity)
    masks = [_random_masks(i) for i in range(num)]
    for i, m in enumerate(masks):
        bank = bank.add(m, {"bn": {"mean": np.full(4, i, np.float32)}} if stats else None)
    return bank, masks


def test_packed_bank_equals_unpacked_reference_and_grows_geometrically():
    bank, masks = _bank(5, capacity=2, stats=True)
    assert int(bank.num_tasks) == 5 and bank.capacity == 5  # 2 -> 3 -> 4 -> 5 (x1.25, ceil)
    for i, m in enumerate(masks):
        got = bank.task_masks(i)
        for p in SHAPES:
            np.testing.assert_array_equal(np.asarray(got[p]), m[p].astype(np.float32))
        np.testing.assert_array_equal(np.asarray(bank.task_batch_stats(i)["bn"]["mean"]), i)
    # 1 bit per weight: ceil(P_l / 8) bytes per layer and slot.
    assert bank.bits["a/kernel"].shape == (5, 12) and bank.bits["b/kernel"].dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(bank.learned()), [1] * 5)
    assert bank.add(masks[0], {"bn": {"mean": np.zeros(4, np.float32)}}).capacity == 7  # 5 * 1.25


def test_superpose_and_contract_against_float_reference():
    bank, masks = _bank(5, capacity=8)
    alpha = jnp.asarray(np.random.default_rng(0).normal(size=8), jnp.float32)
    alpha = jnp.where(bank.learned(), alpha, 0.0)
    sup = bank_lib.superpose(alpha, bank)
    v = {p: np.random.default_rng(1).normal(size=s).astype(np.float32) for p, s in SHAPES.items()}
    g = np.asarray(bank_lib.contract(bank, v))
    for p in SHAPES:
        ref = sum(float(alpha[i]) * masks[i][p] for i in range(5))
        np.testing.assert_allclose(np.asarray(sup[p]), ref, rtol=1e-5, atol=1e-6)
    ref_g = [sum(float((masks[i][p] * v[p]).sum()) for p in SHAPES) for i in range(5)]
    np.testing.assert_allclose(g[:5], ref_g, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(g[5:], 0)
    # The custom VJP of superpose w.r.t. alpha is the contraction.
    grad = jax.grad(lambda a: sum(jnp.sum(s * v[p]) for p, s in
                                  bank_lib.superpose(a, bank).items()))(alpha)
    np.testing.assert_allclose(np.asarray(grad), g, rtol=1e-5, atol=1e-5)


def test_grad_rows_restrict_the_gradient_to_those_slots():
    bank, _ = _bank(5, capacity=8)
    v = {p: np.random.default_rng(2).normal(size=s).astype(np.float32) for p, s in SHAPES.items()}
    alpha = jnp.where(bank.learned(), 0.2, 0.0)
    loss = lambda a, rows=None: sum(jnp.sum(s * v[p]) for p, s in
                                    bank_lib.superpose(a, bank, grad_rows=rows).items())
    full = np.asarray(jax.grad(loss)(alpha))
    rows = jnp.asarray([True, False, True, True, False, False, False, False])
    part = np.asarray(jax.grad(lambda a: loss(a, rows))(alpha))
    np.testing.assert_allclose(part, np.where(rows, full, 0.0), rtol=1e-6)
    assert np.all(full[:5] != 0)
    # float64 alpha gets a float64 gradient (the kernels compute in float32).
    with jax.enable_x64():
        g64 = jax.grad(loss)(alpha.astype(jnp.float64))
    assert g64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(g64), full, rtol=1e-6)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    bank, _ = _bank(3, capacity=4, stats=True)
    path = tmp_path / "bank.npz"
    bank_lib.save_bank(bank, path)
    back = bank_lib.load_bank(path, {"bn": {"mean": np.zeros(4, np.float32)}})
    assert back.shapes == bank.shapes and int(back.num_tasks) == 3
    for p in SHAPES:
        np.testing.assert_array_equal(np.asarray(back.bits[p]), np.asarray(bank.bits[p]))
    np.testing.assert_array_equal(np.asarray(back.batch_stats["bn"]["mean"]),
                                  np.asarray(bank.batch_stats["bn"]["mean"]))


def test_masks_to_scores_round_trip():
    from supsup_jax import masking

    m = _random_masks(7)
    back = masking.make_mask_fn("threshold")(bank_lib.masks_to_scores(m))
    for p in SHAPES:
        np.testing.assert_array_equal(np.asarray(back[p]).astype(bool), m[p])


def test_adding_tasks_does_not_recompile_within_capacity():
    bank, _ = _bank(1, capacity=16)
    before = bank_lib._write._cache_size()
    for i in range(5):
        bank = bank.add(_random_masks(10 + i))
    assert bank_lib._write._cache_size() == before


def test_bad_masks():
    bank, _ = _bank(1)
    with pytest.raises(ValueError, match="masks cover"):
        bank.add({"a/kernel": np.ones((13, 7), bool)})
    with pytest.raises(ValueError, match="has shape"):
        bank.add({"a/kernel": np.ones((7, 13), bool), "b/kernel": np.ones((3, 3, 2, 5), bool)})


def test_set_task_overwrites_one_learned_slot():
    bank, masks = _bank(3, capacity=4)
    new = _random_masks(99)
    bank2 = bank.set_task(1, new)
    for p in SHAPES:
        np.testing.assert_array_equal(np.asarray(bank2.task_masks(1)[p]), new[p])
        np.testing.assert_array_equal(np.asarray(bank2.task_masks(2)[p]), masks[2][p])
    assert int(bank2.num_tasks) == 3
    with pytest.raises(IndexError, match="outside the 3 learned"):
        bank.set_task(3, new)
