"""The ImageNet input pipeline: JPEG decode + Resize + CenterCrop of ``TfdsImages`` with 1 and
with N decoding threads, and the training loop's overlap of reading the next chunk with the
device's training on this one.

The source is synthetic (no ImageNet here) but goes through the same code as tfds's: its
``__getitem__`` decodes a stored JPEG (``--width`` x ``--height``, quality 90, like ImageNet's
typical 500 x 375) with PIL, as a tfds data source does. Measured in one run, median of
``--repeats``:

    python benchmarks/imagenet_pipeline.py --out benchmarks/results/imagenet_pipeline.json
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import (  # benchmarks/ is on the path as a script
    cpu_description,
    median_seconds,
    write_result,
)

from supsup_jax.data import TfdsImages
from supsup_jax.loop import StepLoop


class JpegSource:
    """``n`` random-texture JPEGs, decoded on access (what a tfds data source returns)."""

    def __init__(self, n: int, width: int, height: int, seed: int = 0):
        from PIL import Image

        rng = np.random.default_rng(seed)
        # Smooth random images (noise upsampled), so that the JPEGs compress like photographs.
        self.jpegs = []
        for _ in range(n):
            small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=90)
            self.jpegs.append(buf.getvalue())

    def __len__(self) -> int:
        return len(self.jpegs)

    def __getitem__(self, k: int) -> dict:
        from PIL import Image

        return {"image": np.asarray(Image.open(io.BytesIO(self.jpegs[k])).convert("RGB"))}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=256, help="JPEGs in the source")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--step_ms", type=float, default=100.0,
                   help="simulated device time per training step, for the overlap figure")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/imagenet_pipeline.json")
    args = p.parse_args(argv)
    source = JpegSource(args.images, args.width, args.height)
    idx = np.arange(args.batch) % args.images
    out = {"benchmark": "imagenet_pipeline", **cpu_description(),
           "device": str(jax.devices()[0].device_kind), "image": [args.width, args.height],
           "batch": args.batch, "decode": []}
    workers = sorted({1, min(os.cpu_count() or 1, 16)})
    for w in workers:
        images = TfdsImages(source, 224, 256, workers=w)
        s = median_seconds(lambda images=images: images[idx], args.repeats)
        row = {"workers": w, "seconds_per_batch": round(s, 4),
               "images_per_second": round(args.batch / s, 1)}
        out["decode"].append(row)
        print(row, flush=True)

    # Overlap: a "device step" that sleeps outside the GIL (as a real device step does), 2
    # steps per chunk; the loop reads chunk k+1 while chunk k runs.
    def step(args_, carry, x, y, key):
        del args_, y, key
        carry = jax.pure_callback(lambda c: (time.sleep(args.step_ms / 1e3), c)[1],
                                  jax.ShapeDtypeStruct((), jnp.float32), carry + 0 * x.mean())
        return carry, {"loss": carry}

    loop = StepLoop(step, chunk_size=2, step_loop="python")
    images = TfdsImages(source, 224, 224)
    labels = np.zeros(args.images, np.int32)
    steps = 8
    run = lambda: loop.run(None, jnp.float32(0.0), images, labels,  # noqa: E731
                           jax.random.key(0), steps, args.batch).block_until_ready()
    total = median_seconds(run, args.repeats)  # after one run that compiles
    read = next(r for r in out["decode"] if r["workers"] == images.workers)["seconds_per_batch"]
    out["overlap"] = {"steps": steps, "step_seconds": args.step_ms / 1e3,
                      "seconds_total": round(total, 3),
                      "seconds_if_serial": round(steps * (read + args.step_ms / 1e3), 3),
                      "seconds_if_fully_overlapped": round(
                          read * 2 + steps * max(read, args.step_ms / 1e3), 3)}
    print(out["overlap"], flush=True)
    write_result(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
