"""Output-size ablation (paper Fig. 6): PermutedMNIST GNu, output s in {25, 100, 200, 500}, H or G.

LeNet 300-100 by default, FC 1024-1024 with ``fc``; pick the size with ``s25``, ``s100``,
``s200`` or ``s500`` and the objective with ``h``/``g``. 250 tasks. Reproduce one point (every
size and objective as one figure: ``experiments/compare.py --figure=output_size_fashion_lenet``,
on 100 tasks, or ``output_size_fashion_fc`` on 25):

    python -m experiments.run --config=experiments/configs/output_size.py:s25,g --workdir=runs/s25g
"""

from .base import apply_common_variants, base_config, parse_variants

SIZES = ("s25", "s100", "s200", "s500")


# This config's own variants (``tiny`` and ``fashion`` apply to every config).
VARIANTS = frozenset({*SIZES, "fc", "h", "g"})


def get_config(variants: str | None = None):
    v = parse_variants(variants)
    c = base_config()
    sizes = [int(x[1:]) for x in v if x in SIZES]
    c.num_outputs = sizes[0] if sizes else 100
    c.model = "fc1024" if "fc" in v else "lenet300_100"
    c.inference.objective = "h" if "h" in v else "g"
    c.name = f"output_size_{c.model}_{c.num_outputs}_{c.inference.objective}"
    c.num_tasks = 250
    c.eval_at = (10, 50, 100, 250)
    return apply_common_variants(c, v, VARIANTS)
