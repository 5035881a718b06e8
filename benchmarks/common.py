"""What every benchmark script shares: the device description and writing its results file."""

from __future__ import annotations

import json
import os
import platform

import jax


def device() -> str:
    """E.g. ``"cpu (x86_64, 2 cores)"``: the first device and the host it runs on."""
    return f"{jax.devices()[0].device_kind} ({platform.machine()}, {os.cpu_count()} cores)"


def write_result(path: str, result: dict) -> None:
    """Write ``result`` as indented JSON to ``path`` (creating its directory) and say where."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
