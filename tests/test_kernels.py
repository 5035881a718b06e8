"""The bank's bit-matrix products (CPU kernel and plain-JAX twin) against numpy references."""

import functools
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import kernels

# (k, nb): tails of every loop (nb = 1..7 mod 4, 8 and 16, odd row starts, one task), nb past
# the matvec row block (4096 bytes), its table blocks (32 portable, 1024 AVX2 / AVX-512, with
# tails shorter than a 32- or 64-byte chunk) and the vecmat column block (1024), k past the 96
# rows from which the twin's matvec uses tables and the 8, 16 and 32 from which the AVX2,
# portable and AVX-512 matvec do (k = 97, 257, 600 with tails of 1 and 88 rows, and groups of
# 8 / 16 rows with a partial last one), and banks of > 2 MB so that both threads run.
# test_matvec_paths_agree forces each path at every k; test_uniform_superposition_counts each
# counting path.
SHAPES = [(1, 1), (3, 5), (5, 6), (9, 7), (7, 33), (16, 4096 + 21), (40, 300), (97, 4096 + 3),
          (257, 70), (600, 4099), (300, 1024 + 9)]
IMPLS = [*kernels.VARIANTS, "xla"]


def _skip_unsupported(impl):
    if impl != "xla" and impl not in kernels.supported_variants():
        pytest.skip(f"this CPU cannot run the {impl} kernel")
    if impl != "xla" and shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")


def _data(k, nb, seed=0):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 256, (k, nb), dtype=np.uint8)
    dense = np.unpackbits(bits, axis=1, bitorder="little").astype(np.float64)
    v = rng.standard_normal(8 * nb).astype(np.float32)
    alpha = rng.standard_normal(k).astype(np.float32)
    alpha[::3] = 0.0  # the vecmat kernel skips zero weights
    return bits, dense, v, alpha


def _products(impl):
    return (functools.partial(kernels.bits_matvec, variant=impl),
            functools.partial(kernels.bits_vecmat, variant=impl))


@pytest.mark.parametrize("k,nb", SHAPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_products_match_unpacked_reference(k, nb, impl):
    _skip_unsupported(impl)
    bits, dense, v, alpha = _data(k, nb)
    matvec, vecmat = _products(impl)
    g = jax.jit(matvec)(jnp.asarray(bits), jnp.asarray(v))
    s = jax.jit(vecmat)(jnp.asarray(alpha), jnp.asarray(bits))
    atol = 1e-5 * np.sqrt(8 * nb)
    np.testing.assert_allclose(np.asarray(g), dense @ v, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(np.asarray(s), alpha @ dense, rtol=1e-5, atol=1e-5 * np.sqrt(k))


@pytest.mark.parametrize("table_rows", ["1", "1000000"])
@pytest.mark.parametrize("impl", kernels.VARIANTS)
def test_matvec_paths_agree(impl, table_rows, monkeypatch):
    # SUPSUP_JAX_TABLE_ROWS moves the crossover between the direct loop and the partial-sum
    # tables (read per call): each path on its own, tails and active rows included.
    _skip_unsupported(impl)
    monkeypatch.setenv("SUPSUP_JAX_TABLE_ROWS", table_rows)
    matvec = jax.jit(functools.partial(kernels.bits_matvec, variant=impl))
    for k, nb in ((1, 1), (9, 7), (97, 4096 + 3), (257, 70)):
        bits, dense, dense_v, _ = _data(k, nb, seed=k)
        rng = np.random.default_rng(k)
        rows = rng.random(k) < 0.7
        # Runs of 128 zeros, as One-Shot's v has where ReLU zeroed an input: the table paths
        # skip the bytes of all-zero stretches.
        zero = np.repeat(rng.random(-(-8 * nb // 128)) < 0.6, 128)[: 8 * nb]
        for v in (dense_v, np.where(zero, 0.0, dense_v).astype(np.float32)):
            g = matvec(jnp.asarray(bits), jnp.asarray(v), jnp.asarray(rows))
            np.testing.assert_allclose(np.asarray(g), np.where(rows, dense @ v, 0.0),
                                       rtol=1e-5, atol=1e-5 * np.sqrt(8 * nb))


@pytest.mark.parametrize("impl", IMPLS)
def test_matvec_computes_only_the_requested_rows(impl):
    _skip_unsupported(impl)
    bits, dense, v, _ = _data(19, 70, seed=3)
    rows = np.random.default_rng(4).random(19) < 0.4
    matvec, _ = _products(impl)
    g = jax.jit(matvec)(jnp.asarray(bits), jnp.asarray(v), jnp.asarray(rows))
    np.testing.assert_allclose(np.asarray(g), np.where(rows, dense @ v, 0.0), rtol=1e-5,
                               atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_binary_rounds_shrinking_candidates(impl):
    # Binary's rounds: the gradient of a shrinking random candidate set (600, 300, ..., 1 rows:
    # the table path, then the direct one) and the superposition at uniform alpha over it.
    _skip_unsupported(impl)
    bits, dense, v, _ = _data(600, 130, seed=5)
    matvec, vecmat = (jax.jit(f) for f in _products(impl))
    rng = np.random.default_rng(6)
    alive = np.ones(600, bool)
    while alive.any():
        alpha = (alive / alive.sum()).astype(np.float32)
        g = matvec(jnp.asarray(bits), jnp.asarray(v), jnp.asarray(alive))
        np.testing.assert_allclose(np.asarray(g), np.where(alive, dense @ v, 0.0), rtol=1e-5,
                                   atol=1e-4)
        s = vecmat(jnp.asarray(alpha), jnp.asarray(bits))
        np.testing.assert_allclose(np.asarray(s), alpha @ dense, rtol=1e-5, atol=1e-6)
        keep = rng.permutation(np.flatnonzero(alive))[: alive.sum() // 2]
        alive = np.isin(np.arange(600), keep)


@pytest.mark.parametrize("slice_rows", ["1", "1000000"])
@pytest.mark.parametrize("impl", IMPLS)
def test_uniform_superposition_counts(impl, slice_rows, monkeypatch):
    # Equal weights on the selected rows take the counting path (16-bit counters, flushed to
    # floats every 65528 rows), bit-sliced from SUPSUP_JAX_SLICE_ROWS rows (read per call; "1"
    # forces it, with a last group of fewer than 16 rows) or directly: random bits with tails,
    # a subset of rows, and more set bits per weight than a 16-bit counter holds.
    _skip_unsupported(impl)
    monkeypatch.setenv("SUPSUP_JAX_SLICE_ROWS", slice_rows)
    _, vecmat = _products(impl)
    vecmat = jax.jit(vecmat)
    rtol = 1e-5 if impl == "xla" else 1e-6  # the kernels round once per weight, the twin per row
    # 600: past 248 rows of 8-bit counters; 4096 + 3 bytes: past the column block, with a tail
    # shorter than any vector.
    for k, nb in ((9, 7), (97, 4096 + 3), (600, 130), (1100, 200)):
        bits, dense, _, _ = _data(k, nb, seed=k)
        alive = np.random.default_rng(k).random(k) < 0.6
        alpha = (alive / alive.sum()).astype(np.float32)
        np.testing.assert_allclose(np.asarray(vecmat(jnp.asarray(alpha), jnp.asarray(bits))),
                                   alpha @ dense, rtol=rtol, atol=1e-7)
    k = 65537
    bits = np.full((k, 69), 0xFF, np.uint8)  # 64 bytes of whole vectors (sliced) and a tail
    bits[-1, [1, 66]] = 0x0F  # the last row, past the first flush: half of two bytes
    alpha = np.full(k, 2.0 ** -16, np.float32)  # k * alpha = 1 + 2^-16, exact in float32
    want = np.full(8 * 69, k * 2.0 ** -16)
    want[[*range(12, 16), *range(8 * 66 + 4, 8 * 66 + 8)]] -= 2.0 ** -16
    np.testing.assert_array_equal(np.asarray(vecmat(jnp.asarray(alpha), jnp.asarray(bits))),
                                  want)


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
                    or os.environ.get("SUPSUP_JAX_KERNELS") == "0"
                    or os.environ.get("SUPSUP_JAX_KERNEL_VARIANT") is not None,
                    reason="no C++ compiler on this machine, or the variant set by hand")
def test_best_supported_variant_is_built_and_named():
    # Guards against silently falling back to the ~20x slower plain-JAX products on CPU.
    best = kernels.supported_variants()[0]
    assert kernels.default_variant() == best
    status = kernels.kernel_status()
    assert status.startswith(f"cpu kernel {best} (cpu has"), status


def test_variant_choice_follows_cpu_flags(monkeypatch):
    for flags, best in (({"avx512f", "avx512bw", "avx2", "fma"}, "avx512"),
                        ({"avx512f", "avx2", "fma"}, "avx2"), ({"avx2", "fma"}, "avx2"),
                        ({"sse2"}, "portable"), (set(), "portable")):
        monkeypatch.setattr(kernels, "cpu_flags", lambda f=frozenset(flags): f)
        expected = best if kernels._is_x86() else "portable"
        assert kernels.supported_variants()[0] == expected, flags
    monkeypatch.setenv("SUPSUP_JAX_KERNEL_VARIANT", "xla")
    assert kernels.default_variant() == "xla"
    assert kernels.kernel_status().startswith("plain JAX (chosen by the environment")
    monkeypatch.setenv("SUPSUP_JAX_KERNEL_VARIANT", "sse9")
    with pytest.raises(ValueError, match="SUPSUP_JAX_KERNEL_VARIANT='sse9'"):
        kernels.default_variant()


def test_unknown_or_unsupported_variant_is_an_error(monkeypatch):
    bits, v = jnp.zeros((3, 4), jnp.uint8), jnp.zeros(32)
    with pytest.raises(ValueError, match="variant 'avx1024'"):
        kernels.bits_matvec(bits, v, variant="avx1024")
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset())
    kernels._load.cache_clear()
    try:
        if kernels._is_x86():
            with pytest.raises(RuntimeError, match="lacks avx2"):
                kernels.bits_vecmat(jnp.zeros(3), bits, variant="avx2")
    finally:
        kernels._load.cache_clear()


@pytest.mark.skipif(not kernels._is_x86() or shutil.which("objdump") is None
                    or (shutil.which("c++") is None and shutil.which("g++") is None),
                    reason="x86-64 with a compiler and objdump only")
@pytest.mark.parametrize("variant,forbidden", [("avx2", "%zmm"), ("portable", "%ymm")])
def test_lower_variants_contain_no_wider_instructions(variant, forbidden):
    # Built without -march=native: the AVX2 build must run on a CPU without AVX-512, and the
    # portable one on the x86-64 baseline, whatever CPU built them.
    so = kernels._compile(variant)
    asm = subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True,
                         check=True).stdout
    assert "Supsup" in asm and forbidden not in asm


@pytest.mark.parametrize("target", ["cuda", "tpu"])
def test_accelerators_lower_to_plain_jax(target):
    # No GPU/TPU here, but lowering for one shows which branch it would run: the C++ custom
    # call is CPU-only, so the accelerator program must not contain it.
    args = (jax.ShapeDtypeStruct((128, 3), jnp.uint8), jax.ShapeDtypeStruct((24,), jnp.float32))
    module = jax.export.export(jax.jit(kernels.bits_matvec), platforms=[target])(*args)
    text = module.mlir_module()
    assert "supsup_bits" not in text and "stablehlo.gather" in text  # the twin's lookups
