"""The bank's bit-matrix products (CPU kernel and plain-JAX twin) against numpy references."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import kernels

# (k, nb): tails of every loop (nb = 1..7 mod 4 and 16, odd row starts, one task), nb past the
# kernel's 4096-byte row block, and one bank of > 2 MB so that both threads run.
SHAPES = [(1, 1), (3, 5), (5, 6), (9, 7), (7, 33), (16, 4096 + 21), (40, 300), (600, 4099)]


def _data(k, nb, seed=0):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 256, (k, nb), dtype=np.uint8)
    dense = np.unpackbits(bits, axis=1, bitorder="little").astype(np.float64)
    v = rng.standard_normal(8 * nb).astype(np.float32)
    alpha = rng.standard_normal(k).astype(np.float32)
    alpha[::3] = 0.0  # the vecmat kernel skips zero weights
    return bits, dense, v, alpha


@pytest.mark.parametrize("k,nb", SHAPES)
@pytest.mark.parametrize("impl", ["dispatch", "xla"])
def test_products_match_unpacked_reference(k, nb, impl):
    bits, dense, v, alpha = _data(k, nb)
    matvec = kernels.bits_matvec if impl == "dispatch" else kernels.bits_matvec_xla
    vecmat = kernels.bits_vecmat if impl == "dispatch" else kernels.bits_vecmat_xla
    g = jax.jit(matvec)(jnp.asarray(bits), jnp.asarray(v))
    s = jax.jit(vecmat)(jnp.asarray(alpha), jnp.asarray(bits))
    atol = 1e-5 * np.sqrt(8 * nb)
    np.testing.assert_allclose(np.asarray(g), dense @ v, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(np.asarray(s), alpha @ dense, rtol=1e-5, atol=1e-5 * np.sqrt(k))


@pytest.mark.parametrize("impl", ["dispatch", "xla"])
def test_matvec_computes_only_the_requested_rows(impl):
    bits, dense, v, _ = _data(19, 70, seed=3)
    rows = np.random.default_rng(4).random(19) < 0.4
    matvec = kernels.bits_matvec if impl == "dispatch" else kernels.bits_matvec_xla
    g = jax.jit(matvec)(jnp.asarray(bits), jnp.asarray(v), jnp.asarray(rows))
    np.testing.assert_allclose(np.asarray(g), np.where(rows, dense @ v, 0.0), rtol=1e-5,
                               atol=1e-4)


def test_xla_twin_is_tiling_independent(monkeypatch):
    bits, dense, v, alpha = _data(9, 50)
    monkeypatch.setattr(kernels, "TILE_BYTES", 64)  # tiles of one task
    np.testing.assert_allclose(np.asarray(kernels.bits_matvec_xla(bits, v)), dense @ v,
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(kernels.bits_vecmat_xla(alpha, bits)), alpha @ dense,
                               rtol=1e-5, atol=1e-5)


def test_products_vmap_over_vectors():
    bits, dense, v, alpha = _data(5, 40)
    vs = np.stack([v, -2 * v, np.ones_like(v)])
    g = jax.vmap(kernels.bits_matvec, in_axes=(None, 0))(jnp.asarray(bits), jnp.asarray(vs))
    np.testing.assert_allclose(np.asarray(g), vs @ dense.T, rtol=1e-5, atol=1e-4)
    alphas = np.stack([alpha, alpha[::-1]])
    s = jax.vmap(kernels.bits_vecmat, in_axes=(0, None))(jnp.asarray(alphas), jnp.asarray(bits))
    np.testing.assert_allclose(np.asarray(s), alphas @ dense, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_named():
    bits = jnp.zeros((3, 4), jnp.uint8)
    with pytest.raises(TypeError, match="uint8"):
        kernels.bits_matvec(bits.astype(jnp.int32), jnp.zeros(32))
    with pytest.raises(ValueError, match=r"need \(32,\)"):
        kernels.bits_matvec(bits, jnp.zeros(31))
    with pytest.raises(ValueError, match=r"need \(3,\)"):
        kernels.bits_vecmat(jnp.zeros(4), bits)


@pytest.mark.skipif((shutil.which("c++") is None and shutil.which("g++") is None)
                    or os.environ.get("SUPSUP_JAX_KERNELS") == "0",
                    reason="no C++ compiler on this machine, or kernels disabled")
def test_cpu_kernel_is_built_where_a_compiler_exists():
    # Guards against silently falling back to the ~20x slower plain-JAX products on CPU.
    assert kernels.kernel_status() == "cpu kernel"


@pytest.mark.parametrize("target", ["cuda", "tpu"])
def test_accelerators_lower_to_plain_jax(target):
    # No GPU/TPU here, but lowering for one shows which branch it would run: the C++ custom
    # call is CPU-only, so the accelerator program must not contain it.
    args = (jax.ShapeDtypeStruct((4, 3), jnp.uint8), jax.ShapeDtypeStruct((24,), jnp.float32))
    module = jax.export.export(jax.jit(kernels.bits_matvec), platforms=[target])(*args)
    text = module.mlir_module()
    assert "supsup_bits" not in text and "stablehlo.shift_right_logical" in text
