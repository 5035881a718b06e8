"""GNu and NNs with 2500 PermutedMNIST tasks on LeNet 300-100, output 500 (paper Fig. 4).

One-Shot from one image per batch, objective H (``g`` variant: G); checkpoints of the accuracy
at 10, 500, 1000, 1500, 2000 and 2500 tasks. ``nns`` runs scenario NNs (no task identity, a
decision every 100 batches, eps 2^-3, a budget of 2500 masks) on one continuous stream whose task
changes fall 50 batches into a decision block; ``aligned`` restarts the blocks at every task (the
first round's runner), ``revisit`` splits each task into two pieces that return out of order
(``supsup_jax/runner/nns_stream.py``). Reproduce:

    python -m experiments.run --config=experiments/configs/gnu_2500.py --workdir=runs/gnu2500
    python -m experiments.run --config=experiments/configs/gnu_2500.py:nns --workdir=runs/nns2500
"""

from .base import apply_common_variants, base_config, parse_variants

# This config's own variants (``tiny`` and ``fashion`` apply to every config).
VARIANTS = frozenset({"nns", "g", "aligned", "revisit"})


def get_config(variants: str | None = None):
    v = parse_variants(variants)
    c = base_config()
    c.name = "gnu_2500"
    c.model, c.num_outputs = "lenet300_100", 500
    c.num_tasks = 2500
    c.eval_at = (10, 500, 1000, 1500, 2000, 2500)
    c.inference.objective = "g" if "g" in v else "h"
    if "nns" in v:
        c.name = "nns_2500"
        c.scenario = "NNs"
        c.inference.objective = "h"
        for boundaries in ("aligned", "revisit"):
            if boundaries in v:
                c.nns.boundaries = boundaries
                c.name += "_" + boundaries
    elif v & {"aligned", "revisit"}:
        raise ValueError("the aligned and revisit variants are NNs streams: add nns")
    c = apply_common_variants(c, v, VARIANTS)
    if "tiny" in v and "nns" in v:
        c.nns.decide_every, c.nns.offset = 10, 5
        c.nns.budget = 6
    return c
