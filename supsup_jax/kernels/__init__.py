"""Bit-matrix products of the mask bank: C++ CPU kernels (XLA FFI) with a plain-JAX twin.

``bits`` is ``uint8[k, nb]``: row ``i`` is task ``i``'s flattened mask packed 8 weights per byte
(little bit order, as :func:`supsup_jax.bank.pack_masks` writes it). Task inference needs two
products with it (SPEC 6), and both are memory-bound streams over ``k * nb`` bytes:

* :func:`bits_matvec` ``(bits, v) -> g``, ``g_i = sum_j bit_ij v_j``: ``dL/dalpha`` (One-Shot's
  gradient, the backward of the superposition);
* :func:`bits_vecmat` ``(alpha, bits) -> s``, ``s_j = sum_i alpha_i bit_ij``: the superposed
  mask ``sum_i alpha_i M_i`` (Eq. 2).

Plain JAX has no cheap way to multiply by a bit: it must unpack each bit to a number first
(benchmarks/oneshot.py measures the cost). On CPU the products therefore run as an XLA FFI
custom call built from ``kernels/bitops.cc`` in one of three variants (:data:`VARIANTS`):

* ``"avx512"`` (AVX-512 F and BW): a 16-bit slice of a row is a lane mask, one masked add per
  16 weights;
* ``"avx2"``: a byte indexes a 256-entry table of 8-lane masks, ``and`` + add per 8 weights;
* ``"portable"``: plain C++ that the compiler vectorises for the baseline ISA (SSE2, NEON).

From a few rows on, :func:`bits_matvec` looks up tables of partial sums of ``v`` instead (in
registers, one permute for a group of 16 or 8 rows, on AVX-512 and AVX2; in memory, 256 sums per
byte, on portable), never reading the bits where ``v`` is zero (One-Shot's inputs that ReLU
zeroed). At uniform alpha (One-Shot's superposition, every Binary round) :func:`bits_vecmat`
counts set bits exactly in integers, bit-sliced over 16 rows at a time from enough rows
(carry-save adders on the variant's widest vector, the same source for all three).

Each is compiled on first use with the system C++ compiler and the variant's own flags (never
``-march=native``, so a cached build is correct on any CPU that has the variant's ISA) into a
cache directory (``$SUPSUP_JAX_KERNEL_CACHE``, default ``~/.cache/supsup_jax``), keyed by the
source, the jaxlib version, the compiler and the variant. The default is the best variant the
CPU supports (its ``/proc/cpuinfo`` flags, checked again by the built library itself before it
is registered); ``SUPSUP_JAX_KERNEL_VARIANT`` (one of :data:`VARIANTS` or ``"xla"``) forces one,
and ``SUPSUP_JAX_KERNELS=0`` the twin. Three knobs for measuring, read per call:
``SUPSUP_JAX_KERNEL_THREADS`` (threads, default the CPU count), ``SUPSUP_JAX_TABLE_ROWS``
(from how many rows matvec uses tables of partial sums) and ``SUPSUP_JAX_SLICE_ROWS`` (from how
many rows the counting is bit-sliced); their defaults per variant are in ``bitops.cc``,
measured in benchmarks/README.md. On GPU/TPU (``lax.platform_dependent``), and on CPU when
no compiler is found, the plain-JAX twin runs. :func:`kernel_status` says which and why. The
variant is read when a function is traced, so it is fixed inside each compiled program.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

__all__ = ["VARIANTS", "bits_matvec", "bits_matvec_xla", "bits_vecmat", "bits_vecmat_xla",
           "cpu_flags", "default_variant", "kernel_status", "supported_variants"]

_SOURCE = Path(__file__).with_name("bitops.cc")
# Compiled variants, best first: (macro, compiler flags, CPU flags it needs).
_BUILDS = {
    "avx512": ("SUPSUP_AVX512", ("-mavx512f", "-mavx512bw", "-mavx2", "-mfma"),
               ("avx512f", "avx512bw", "avx2")),
    "avx2": ("SUPSUP_AVX2", ("-mavx2", "-mfma"), ("avx2",)),
    "portable": (None, (), ()),
}
VARIANTS = tuple(_BUILDS)
# Upper bound on the float32 temporaries of one tile of tasks in the plain-JAX products.
TILE_BYTES = 64 * 2**20
# From how many rows the twin's matvec builds tables of partial sums (benchmarks/README.md).
TABLE_ROWS = 96

log = logging.getLogger(__name__)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags (``/proc/cpuinfo`` ``flags``/``Features``; empty where it
    is not readable)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def supported_variants() -> tuple[str, ...]:
    """The compiled variants this CPU can run, best first (``"portable"`` always)."""
    flags = cpu_flags()
    return tuple(v for v, (_, _, need) in _BUILDS.items()
                 if not need or (_is_x86() and all(f in flags for f in need)))


def default_variant() -> str:
    """What the products run on CPU: ``SUPSUP_JAX_KERNEL_VARIANT`` if set, ``"xla"`` (the twin)
    if ``SUPSUP_JAX_KERNELS=0`` or the kernel cannot be built, else the best supported variant."""
    forced = os.environ.get("SUPSUP_JAX_KERNEL_VARIANT")
    if forced:
        if forced != "xla" and forced not in VARIANTS:
            raise ValueError(f"SUPSUP_JAX_KERNEL_VARIANT={forced!r}; choose one of "
                             f"{VARIANTS + ('xla',)}")
        return forced
    if os.environ.get("SUPSUP_JAX_KERNELS", "1") == "0":
        return "xla"
    variant = supported_variants()[0]
    return variant if _load(variant)[0] else "xla"


def _compile(variant: str) -> Path:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    macro, flags, _ = _BUILDS[variant]
    cmd = ["-O3", "-shared", "-fPIC", "-std=c++17", "-w", *flags,
           *([f"-D{macro}"] if macro else []), f"-I{jax.ffi.include_dir()}", str(_SOURCE),
           "-pthread"]
    key = hashlib.sha256(b"\0".join(s.encode() for s in (
        _SOURCE.read_text(), jax.__version__, importlib.metadata.version("jaxlib"),
        compiler, platform.machine(), *cmd))).hexdigest()[:16]
    cache = Path(os.environ.get("SUPSUP_JAX_KERNEL_CACHE",
                                Path.home() / ".cache" / "supsup_jax"))
    target = cache / f"bitops-{variant}-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name and rename, so concurrent processes never load half a file.
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        out = Path(tmp) / target.name
        proc = subprocess.run([compiler, *cmd, "-o", str(out)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling {_SOURCE.name} ({variant}) failed:\n"
                               f"{proc.stderr[-2000:]}")
        os.replace(out, target)
    return target


def _targets(variant: str) -> tuple[str, str]:
    return f"supsup_bits_matvec_{variant}", f"supsup_bits_vecmat_{variant}"


@functools.cache
def _load(variant: str) -> tuple[bool, str]:
    """Build and register one variant once per process: ``(available, reason)``."""
    if variant not in supported_variants():
        return False, f"this CPU lacks {', '.join(_BUILDS[variant][2])}"
    try:
        lib = ctypes.cdll.LoadLibrary(str(_compile(variant)))
        if not lib.SupsupBitsVariantSupported():
            return False, f"the {variant} build reports this CPU cannot run it"
        for name, symbol in zip(_targets(variant), (lib.SupsupBitsMatvec, lib.SupsupBitsVecmat),
                                strict=True):
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
    except (RuntimeError, OSError, AttributeError) as e:
        log.warning("supsup_jax: CPU bit kernel %s unavailable, using plain JAX (%s)", variant, e)
        return False, str(e)
    return True, "compiled"


def kernel_status() -> str:
    """E.g. ``"cpu kernel avx2 (cpu has avx2; not avx512f)"`` or ``"plain JAX (<reason>)"``:
    what the bank's products run on CPU, and the CPU flags that chose it."""
    variant = default_variant()
    flags = cpu_flags()
    relevant = sorted({f for _, _, need in _BUILDS.values() for f in need})
    has = [f for f in relevant if f in flags]
    lacks = [f for f in relevant if f not in flags]
    why = f"cpu has {' '.join(has) or 'none of ' + ' '.join(relevant)}"
    why += f"; not {' '.join(lacks)}" if has and lacks else ""
    if os.environ.get("SUPSUP_JAX_KERNEL_VARIANT"):
        why += "; forced by SUPSUP_JAX_KERNEL_VARIANT"
    if variant != "xla":
        return f"cpu kernel {variant} ({why})"
    if os.environ.get("SUPSUP_JAX_KERNEL_VARIANT") or os.environ.get("SUPSUP_JAX_KERNELS") == "0":
        return f"plain JAX (chosen by the environment; {why})"
    return f"plain JAX ({_load(supported_variants()[0])[1]}; {why})"


def _variant(variant: str | None) -> str:
    """Check a requested variant (None: the default) and make sure it is built."""
    variant = default_variant() if variant is None else variant
    if variant == "xla":
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}; choose one of {VARIANTS + ('xla',)}")
    ok, reason = _load(variant)
    if not ok:
        raise RuntimeError(f"CPU kernel variant {variant!r} is unavailable: {reason}")
    return variant


def _tile(k: int, nb: int) -> int:
    return max(1, min(k, TILE_BYTES // max(32 * nb, 1)))


def _planes(bits: jax.Array) -> jax.Array:
    """uint8 ``[t, nb]`` -> float32 ``[t, nb, 8]`` of bits (bit b of byte j is weight 8j+b)."""
    shifts = jnp.arange(8, dtype=jnp.uint8)[None, None, :]
    return ((bits[:, :, None] >> shifts) & jnp.uint8(1)).astype(jnp.float32)


def _tiles(bits: jax.Array) -> jax.Array:
    k, nb = bits.shape
    tile = _tile(k, nb)
    return jnp.pad(bits, ((0, -k % tile), (0, 0))).reshape(-1, tile, nb)


def _byte_sums(v8: jax.Array) -> jax.Array:
    """float32 ``[L, 256]``: entry ``[j, c]`` is the sum of ``v8[j]`` over the set bits of byte
    value ``c`` (a nibble table each, then their outer sum: exact adds in a fixed order)."""
    nib = ((jnp.arange(16)[:, None] >> jnp.arange(4)[None, :]) & 1).astype(bool)  # [16, 4]
    low = jnp.sum(jnp.where(nib[None], v8[:, None, :4], 0.0), axis=-1)  # [L, 16]
    high = jnp.sum(jnp.where(nib[None], v8[:, None, 4:], 0.0), axis=-1)
    return (high[:, :, None] + low[:, None, :]).reshape(-1, 256)


def _matvec_block(bits: jax.Array, v8: jax.Array) -> jax.Array:
    sums = _byte_sums(v8)  # [L, 256]: one lookup per byte of a row instead of 8 unpacked bits
    cols = jnp.broadcast_to(jnp.arange(bits.shape[1]), bits.shape)
    return jnp.sum(sums[cols, bits.astype(jnp.int32)], axis=1)


def bits_matvec_xla(bits: jax.Array, v: jax.Array, rows: jax.Array | None = None) -> jax.Array:
    """Plain-JAX :func:`bits_matvec`: from :data:`TABLE_ROWS` rows, per block of byte positions
    a table of the 256 partial sums of ``v`` that a byte can select, then one gather per byte of
    the bits; below, bits unpacked to float32 one tile of tasks at a time."""
    k, nb = bits.shape
    v8 = v.reshape(nb, 8)
    if k < TABLE_ROWS:  # too few rows to pay for the tables: unpack one tile of tasks at a time
        g = jax.lax.map(lambda b: jnp.einsum("tjb,jb->t", _planes(b), v8), _tiles(bits))
        g = g.reshape(-1)[:k]
    else:
        # Block length: its table (1 KiB a byte) stays in cache, and its [k, block] gather
        # under TILE_BYTES of float32.
        block = max(1, min(nb, 4096, TILE_BYTES // max(4 * k, 1)))
        full = nb // block

        def body(g, i):
            b = jax.lax.dynamic_slice_in_dim(bits, i * block, block, axis=1)
            x = jax.lax.dynamic_slice_in_dim(v8, i * block, block, axis=0)
            return g + _matvec_block(b, x), None

        g, _ = jax.lax.scan(body, jnp.zeros(k, jnp.float32), jnp.arange(full))
        if full * block < nb:
            g = g + _matvec_block(bits[:, full * block:], v8[full * block:])
    return g if rows is None else jnp.where(rows, g, 0.0)


def bits_vecmat_xla(alpha: jax.Array, bits: jax.Array) -> jax.Array:
    """Plain-JAX :func:`bits_vecmat`: unpacks one tile of tasks at a time."""
    k, nb = bits.shape
    tiles = _tiles(bits)
    alpha_t = jnp.pad(alpha, (0, tiles.shape[0] * tiles.shape[1] - k)).reshape(tiles.shape[:2])

    def body(acc, xs):
        a, b = xs
        return acc + jnp.einsum("t,tjb->jb", a, _planes(b)), None

    out, _ = jax.lax.scan(body, jnp.zeros((nb, 8), jnp.float32), (alpha_t, tiles))
    return out.reshape(-1)


def bits_matvec(bits: jax.Array, v: jax.Array, rows: jax.Array | None = None, *,
                variant: str | None = None) -> jax.Array:
    """``g = unpack(bits) @ v``: float32 ``[k]``, for uint8 ``bits [k, nb]`` and ``v [8 nb]``.

    Args:
      rows: optional bool ``[k]``; rows where it is False are not computed and give 0.
      variant: the CPU kernel to use (one of :data:`VARIANTS`, or ``"xla"`` for the twin);
        default :func:`default_variant`. GPU/TPU always run the twin.
    """
    if bits.ndim != 2 or bits.dtype != jnp.uint8:
        raise TypeError(f"bits must be uint8[k, nb], got {bits.dtype}{list(bits.shape)}")
    if v.shape != (8 * bits.shape[1],):
        raise ValueError(f"v has shape {v.shape}; bits {bits.shape} need ({8 * bits.shape[1]},)")
    if rows is not None and rows.shape != bits.shape[:1]:
        raise ValueError(f"rows has shape {rows.shape}; bits {bits.shape} need "
                         f"({bits.shape[0]},)")
    v = v.astype(jnp.float32)
    variant = _variant(variant)
    if variant == "xla":
        return bits_matvec_xla(bits, v, rows)
    active = (jnp.ones(bits.shape[:1], jnp.uint8) if rows is None
              else jnp.asarray(rows).astype(jnp.uint8))
    call = jax.ffi.ffi_call(_targets(variant)[0],
                            jax.ShapeDtypeStruct(bits.shape[:1], jnp.float32),
                            vmap_method="sequential")
    xla = lambda b, x, a: bits_matvec_xla(b, x, a.astype(bool))
    return jax.lax.platform_dependent(bits, v, active, cpu=call, default=xla)


def bits_vecmat(alpha: jax.Array, bits: jax.Array, *, variant: str | None = None) -> jax.Array:
    """``s = alpha @ unpack(bits)``: float32 ``[8 nb]``, for ``alpha [k]`` and ``bits [k, nb]``.

    ``variant``: as in :func:`bits_matvec`.
    """
    if bits.ndim != 2 or bits.dtype != jnp.uint8:
        raise TypeError(f"bits must be uint8[k, nb], got {bits.dtype}{list(bits.shape)}")
    if alpha.shape != bits.shape[:1]:
        raise ValueError(f"alpha has shape {alpha.shape}; bits {bits.shape} need "
                         f"({bits.shape[0]},)")
    alpha = alpha.astype(jnp.float32)
    variant = _variant(variant)
    if variant == "xla":
        return bits_vecmat_xla(alpha, bits)
    call = jax.ffi.ffi_call(_targets(variant)[1],
                            jax.ShapeDtypeStruct((8 * bits.shape[1],), jnp.float32),
                            vmap_method="sequential")
    return jax.lax.platform_dependent(alpha, bits, cpu=call, default=bits_vecmat_xla)
