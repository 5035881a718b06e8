"""GNu PermutedMNIST, 250 tasks, One-Shot from one image per batch (paper Fig. 3; SPEC 2.2).

FC 1024-1024 (output 500) by default, or LeNet 300-100 (output 100) with the ``lenet`` variant;
objective G by default, ``h`` for the entropy. Reproduce:

    python -m experiments.run --config=experiments/configs/gnu_permuted.py:g --workdir=runs/fc_g
    python -m experiments.run --config=experiments/configs/gnu_permuted.py:lenet,h \
        --workdir=runs/lenet_h

Variants: ``shortlist`` (task inference by the 16 tasks the first layer's alpha-gradient
ranks best, re-ranked by S under each mask alone, ``supsup_jax.inference.shortlist``;
RESULTS.md), ``fashion`` (PermutedFashionMNIST, runs here), ``tiny`` (CPU smoke test).
"""

from .base import (
    apply_common_variants,
    base_config,
    parse_variants,
    use_shortlist,
)

# This config's own variants (``tiny`` and ``fashion`` apply to every config).
VARIANTS = frozenset({"lenet", "h", "g", "shortlist"})


def get_config(variants: str | None = None):
    v = parse_variants(variants)
    c = base_config()
    c.name = "gnu_permuted"
    c.num_tasks = 250
    c.eval_at = (1, 5, 10, 25, 50, 100, 150, 200, 250)
    if "lenet" in v:
        c.model, c.num_outputs = "lenet300_100", 100
        c.name += "_lenet"
    c.inference.objective = "h" if "h" in v else "g"
    c.name += "_" + c.inference.objective
    if "shortlist" in v:
        use_shortlist(c)
    return apply_common_variants(c, v, VARIANTS)
