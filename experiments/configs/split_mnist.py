"""SplitMNIST GNu: 5 tasks of digit pairs (0,1), (2,3), ... with the original labels 0-9, FC
1024-1024 (output 10), threshold masks, One-Shot H on the full batch. The supermask baseline of
the paper's HopSupSup figure (SPEC 2.2). Reproduce:

    python -m experiments.run --config=experiments/configs/split_mnist.py --workdir=runs/split
"""

from .base import apply_common_variants, base_config, parse_variants

# This config's own variants (``tiny`` and ``fashion`` apply to every config).
VARIANTS = frozenset()


def get_config(variants: str | None = None):
    c = base_config()
    c.name = "split_mnist"
    c.stream = "split_mnist"
    c.relabel = False
    c.num_tasks = 5
    c.num_outputs = 10
    c.steps = 0
    c.epochs = 1
    c.inference.objective = "h"
    c.inference.m = 128
    return apply_common_variants(c, parse_variants(variants), VARIANTS)
