"""Bit-matrix products of the mask bank: a C++ CPU kernel (XLA FFI) with a plain-JAX twin.

``bits`` is ``uint8[k, nb]``: row ``i`` is task ``i``'s flattened mask packed 8 weights per byte
(little bit order, as :func:`supsup_jax.bank.pack_masks` writes it). Task inference needs two
products with it (SPEC 6), and both are memory-bound streams over ``k * nb`` bytes:

* :func:`bits_matvec` ``(bits, v) -> g``, ``g_i = sum_j bit_ij v_j``: ``dL/dalpha`` (One-Shot's
  gradient, the backward of the superposition);
* :func:`bits_vecmat` ``(alpha, bits) -> s``, ``s_j = sum_i alpha_i bit_ij``: the superposed
  mask ``sum_i alpha_i M_i`` (Eq. 2).

Plain JAX has no cheap way to multiply by a bit: it must unpack each bit to a float first, which
on CPU costs ~20x the memory stream (benchmarks/oneshot.py measures both). On CPU the products
therefore run as an XLA FFI custom call, ``kernels/bitops.cc``: with AVX-512 a 16-bit slice of a
row is used directly as a lane mask, so one masked add consumes 16 weights. The source is
compiled on first use with the system C++ compiler (``-O3 -march=native``) into a cache
directory (``$SUPSUP_JAX_KERNEL_CACHE``, default ``~/.cache/supsup_jax``), keyed by the source,
the jaxlib version and the CPU. On GPU/TPU, where no kernel is built, and on CPU when no
compiler is found or ``SUPSUP_JAX_KERNELS=0``, the plain-JAX twin runs (bit planes unpacked one
tile of tasks at a time); :func:`kernel_status` says which and why.
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

__all__ = ["bits_matvec", "bits_matvec_xla", "bits_vecmat", "bits_vecmat_xla", "kernel_status"]

_SOURCE = Path(__file__).with_name("bitops.cc")
_MATVEC, _VECMAT = "supsup_bits_matvec", "supsup_bits_vecmat"
# Upper bound on the float32 temporaries of one tile of tasks in the plain-JAX products.
TILE_BYTES = 64 * 2**20

log = logging.getLogger(__name__)


def _cpu_id() -> str:
    """The CPU model and its instruction-set flags: a ``-march=native`` build is only reused on
    a CPU with the same flags (a VM may hide AVX-512 on the same model)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keys = ("model name", "flags", "Features", "CPU implementer", "CPU part")
    return "\n".join(sorted({ln for ln in lines if ln.startswith(keys)}))


def _compile() -> Path:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    include = jax.ffi.include_dir()
    key = hashlib.sha256(b"\0".join(s.encode() for s in (
        _SOURCE.read_text(), jax.__version__, importlib.metadata.version("jaxlib"),
        _cpu_id(), compiler))).hexdigest()[:16]
    cache = Path(os.environ.get("SUPSUP_JAX_KERNEL_CACHE",
                                Path.home() / ".cache" / "supsup_jax"))
    target = cache / f"bitops-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name and rename, so concurrent processes never load half a file.
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        out = Path(tmp) / target.name
        cmd = [compiler, "-O3", "-march=native", "-shared", "-fPIC", "-std=c++17", "-w",
               f"-I{include}", str(_SOURCE), "-o", str(out), "-pthread"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling {_SOURCE.name} failed:\n{proc.stderr[-2000:]}")
        os.replace(out, target)
    return target


@functools.cache
def _load() -> tuple[bool, str]:
    """Build and register the CPU kernel once per process: ``(available, reason)``."""
    if os.environ.get("SUPSUP_JAX_KERNELS", "1") == "0":
        return False, "disabled by SUPSUP_JAX_KERNELS=0"
    try:
        lib = ctypes.cdll.LoadLibrary(str(_compile()))
        for name, symbol in ((_MATVEC, lib.SupsupBitsMatvec), (_VECMAT, lib.SupsupBitsVecmat)):
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
    except (RuntimeError, OSError, AttributeError) as e:
        log.warning("supsup_jax: CPU bit kernel unavailable, using plain JAX (%s)", e)
        return False, str(e)
    return True, "compiled"


def kernel_status() -> str:
    """``"cpu kernel"`` or ``"plain JAX (<reason>)"``: what the bank's products run on CPU."""
    ok, reason = _load()
    return "cpu kernel" if ok else f"plain JAX ({reason})"


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


def bits_matvec_xla(bits: jax.Array, v: jax.Array, rows: jax.Array | None = None) -> jax.Array:
    """Plain-JAX :func:`bits_matvec`: unpacks one tile of tasks at a time."""
    k, nb = bits.shape
    v8 = v.reshape(nb, 8)
    g = jax.lax.map(lambda b: jnp.einsum("tjb,jb->t", _planes(b), v8), _tiles(bits))
    g = g.reshape(-1)[:k]
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


def bits_matvec(bits: jax.Array, v: jax.Array, rows: jax.Array | None = None) -> jax.Array:
    """``g = unpack(bits) @ v``: float32 ``[k]``, for uint8 ``bits [k, nb]`` and ``v [8 nb]``.

    ``rows``: optional bool ``[k]``; rows where it is False are not computed and give 0.
    """
    if bits.ndim != 2 or bits.dtype != jnp.uint8:
        raise TypeError(f"bits must be uint8[k, nb], got {bits.dtype}{list(bits.shape)}")
    if v.shape != (8 * bits.shape[1],):
        raise ValueError(f"v has shape {v.shape}; bits {bits.shape} need ({8 * bits.shape[1]},)")
    if rows is not None and rows.shape != bits.shape[:1]:
        raise ValueError(f"rows has shape {rows.shape}; bits {bits.shape} need "
                         f"({bits.shape[0]},)")
    v = v.astype(jnp.float32)
    if not _load()[0]:
        return bits_matvec_xla(bits, v, rows)
    active = (jnp.ones(bits.shape[:1], jnp.uint8) if rows is None
              else jnp.asarray(rows).astype(jnp.uint8))
    call = jax.ffi.ffi_call(_MATVEC, jax.ShapeDtypeStruct(bits.shape[:1], jnp.float32),
                            vmap_method="sequential")
    xla = lambda b, x, a: bits_matvec_xla(b, x, a.astype(bool))
    return jax.lax.platform_dependent(bits, v, active, cpu=call, default=xla)


def bits_vecmat(alpha: jax.Array, bits: jax.Array) -> jax.Array:
    """``s = alpha @ unpack(bits)``: float32 ``[8 nb]``, for ``alpha [k]`` and ``bits [k, nb]``."""
    if bits.ndim != 2 or bits.dtype != jnp.uint8:
        raise TypeError(f"bits must be uint8[k, nb], got {bits.dtype}{list(bits.shape)}")
    if alpha.shape != bits.shape[:1]:
        raise ValueError(f"alpha has shape {alpha.shape}; bits {bits.shape} need "
                         f"({bits.shape[0]},)")
    alpha = alpha.astype(jnp.float32)
    if not _load()[0]:
        return bits_vecmat_xla(alpha, bits)
    call = jax.ffi.ffi_call(_VECMAT, jax.ShapeDtypeStruct((8 * bits.shape[1],), jnp.float32),
                            vmap_method="sequential")
    return jax.lax.platform_dependent(alpha, bits, cpu=call, default=bits_vecmat_xla)
