"""Mask rules against the rules written out by hand in numpy (SPEC 1.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import masks


def _scores(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape)


def test_threshold_forward_and_straight_through_gradient():
    s = _scores(0, (7, 5))
    s = s.at[0, 0].set(0.0)  # 0 is kept: the rule is s >= 0
    m = masks.threshold_mask(s)
    np.testing.assert_array_equal(np.asarray(m), (np.asarray(s) >= 0).astype(np.float32))
    assert m.dtype == s.dtype
    # L = sum(c * M): the straight-through gradient is c itself, wherever s is.
    c = _scores(1, (7, 5))
    g = jax.grad(lambda s: jnp.sum(c * masks.threshold_mask(s)))(s)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(c))


@pytest.mark.parametrize("shape,density", [((10, 10), 0.5), ((3, 3, 4, 8), 0.1),
                                           ((784, 300), 0.037), ((5, 7), 1.0), ((5, 7), 0.0)])
def test_topk_keeps_exact_count_of_largest_magnitudes(shape, density):
    s = np.asarray(_scores(2, shape))
    m = np.asarray(masks.topk_mask(jnp.asarray(s), density))
    numel = s.size
    keep = numel - int((1 - density) * numel)  # SPEC 1.2a, by hand
    assert masks.kept_count(numel, density) == keep
    assert int(m.sum()) == keep
    if 0 < keep < numel:
        kept = np.abs(s)[m == 1]
        dropped = np.abs(s)[m == 0]
        assert kept.min() >= dropped.max()


def test_topk_exact_count_with_ties():
    s = jnp.asarray([1.0, 1.0, 1.0, 1.0, -1.0, 0.5])
    m = masks.topk_mask(s, 0.5)
    assert int(m.sum()) == 3
    # Ties are broken by position (stable sort): the last of the tied entries are kept.
    np.testing.assert_array_equal(np.asarray(m), [0, 0, 1, 1, 1, 0])


def test_topk_gradient_is_sign_of_scores():
    s = _scores(3, (6, 9))
    c = _scores(4, (6, 9))
    g = jax.grad(lambda s: jnp.sum(c * masks.topk_mask(s, 0.3)))(s)
    np.testing.assert_allclose(np.asarray(g), np.sign(np.asarray(s)) * np.asarray(c), rtol=0,
                               atol=0)


def test_topk_is_jittable_and_per_layer():
    f = jax.jit(lambda a, b: (masks.topk_mask(a, 0.5), masks.topk_mask(b, 0.25)))
    a, b = f(_scores(5, (8, 8)), _scores(6, (4, 4)))
    assert int(a.sum()) == 32 and int(b.sum()) == 4


def test_er_density_matches_spec_formula():
    # Conv 3x3 64->128 at scale 4: 4 * (128 + 64) / (128 * 64 * 9)
    assert masks.er_density((3, 3, 64, 128), 4) == pytest.approx(4 * 192 / (128 * 64 * 9))
    # Capped at 0.5 for small layers.
    assert masks.er_density((3, 5), 16) == 0.5
    with pytest.raises(ValueError, match="rank >= 2"):
        masks.er_density((10,), 1)


def test_er_kept_counts_match_spec_table_for_gemresnet18():
    # SPEC 1.2: GEMResNet18 (nf=20, 5-way head), kept weights per ER scale.
    from supsup_jax import masking
    from supsup_jax.models import gemresnet18

    w = masking.masked_leaves(gemresnet18(num_classes=5).params)
    assert sum(x.size for x in w.values()) == 1_090_940 and len(w) == 21
    table = {1: 2_868, 2: 5_736, 4: 11_212, 8: 21_944, 16: 42_670, 32: 81_390}
    for scale, kept in table.items():
        d = masking.er_densities(w, scale)
        total = sum(masks.kept_count(x.size, d[p]) for p, x in w.items())
        assert abs(total - kept) <= len(w), (scale, total, kept)  # rounding, one per layer


def test_bad_density():
    with pytest.raises(ValueError, match="density"):
        masks.kept_count(10, 1.5)
