"""GNs PermutedMNIST: task identity given at training, not at test, labels shared: the batch is
scored with the inferred mask against its labels (SPEC 2.1). FC 1024-1024, output 500, One-Shot
G on one image. The paper reports GNu only (strictly harder). Reproduce:

    python -m experiments.run --config=experiments/configs/gns_permuted.py --workdir=runs/gns
"""

from .base import apply_common_variants, base_config, parse_variants

# This config's own variants (``tiny`` and ``fashion`` apply to every config).
VARIANTS = frozenset()


def get_config(variants: str | None = None):
    c = base_config()
    c.name = "gns_permuted"
    c.scenario = "GNs"
    c.num_tasks = 250
    c.eval_at = (10, 50, 100, 250)
    return apply_common_variants(c, parse_variants(variants), VARIANTS)
