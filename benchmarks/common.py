"""What every benchmark script shares: the device description and writing its results file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax


def device() -> str:
    """E.g. ``"cpu (x86_64, 2 cores)"``: the first device and the host it runs on."""
    return f"{jax.devices()[0].device_kind} ({platform.machine()}, {os.cpu_count()} cores)"


def cpu_description() -> dict:
    """The CPU model, the instruction-set flags that choose the bank's kernel variant, and the
    variant a plain call runs (``kernels.kernel_status()``)."""
    from supsup_jax import kernels

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), "")
    except OSError:
        pass
    flags = kernels.cpu_flags()
    return {"cpu_model": model or platform.processor(),
            "cpu_simd_flags": sorted(f for f in flags if f.startswith(("avx", "sse", "fma",
                                                                       "neon", "asimd", "sve"))),
            "kernel_variants_supported": list(kernels.supported_variants()),
            "bank_products": kernels.kernel_status()}


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one untimed call (compilation)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(statistics.median(times))


def write_result(path: str, result: dict) -> None:
    """Write ``result`` as indented JSON to ``path`` (creating its directory) and say where."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
