"""GNu RotatedMNIST: 36 tasks rotated by 10 degrees each, FC 1024-1024 with output 200, Binary
task inference with H on the full batch of 128 (paper Fig. 5 left; SPEC 2.2); ``g``: with G;
``shortlist``: the 16 tasks the first layer's alpha-gradient ranks best, re-ranked by S under
each mask alone, instead of Binary (``supsup_jax.inference.shortlist``; RESULTS.md).
Reproduce:

    python -m experiments.run --config=experiments/configs/gnu_rotated.py --workdir=runs/rotated
"""

from .base import (
    apply_common_variants,
    base_config,
    parse_variants,
    use_shortlist,
)

# This config's own variants (``tiny`` and ``fashion`` apply to every config).
VARIANTS = frozenset({"g", "shortlist"})


def get_config(variants: str | None = None):
    c = base_config()
    c.name = "gnu_rotated"
    c.stream = "rotated"
    c.num_tasks = 36
    c.num_outputs = 200
    c.inference.method = "binary"
    c.inference.objective = "h"
    c.inference.m = 128
    c.eval_at = (2, 5, 10, 15, 20, 25, 30, 35, 36)
    v = parse_variants(variants)
    if "g" in v:  # the superfluous-neuron objective instead of the paper's H
        c.inference.objective = "g"
        c.name += "_g"
    if "shortlist" in v:
        use_shortlist(c)
    return apply_common_variants(c, v, VARIANTS)
