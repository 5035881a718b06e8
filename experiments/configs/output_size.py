"""Output-size ablation (paper Fig. 6): PermutedMNIST GNu with output s in {25, 100, 200}, H or G.

LeNet 300-100 by default, FC 1024-1024 with ``fc``; pick the size with ``s25``, ``s100`` or
``s200`` and the objective with ``h``/``g``. 250 tasks. Reproduce one point:

    python -m experiments.run --config=experiments/configs/output_size.py:s25,g --workdir=runs/s25g
"""

from experiments.configs.base import apply_common_variants, base_config, parse_variants


def get_config(variants: str | None = None):
    v = parse_variants(variants)
    c = base_config()
    sizes = [int(x[1:]) for x in v if x in ("s25", "s100", "s200")]
    c.num_outputs = sizes[0] if sizes else 100
    c.model = "fc1024" if "fc" in v else "lenet300_100"
    c.inference.objective = "h" if "h" in v else "g"
    c.name = f"output_size_{c.model}_{c.num_outputs}_{c.inference.objective}"
    c.num_tasks = 250
    c.eval_at = (10, 50, 100, 250)
    return apply_common_variants(c, v, {"s25", "s100", "s200", "fc", "h", "g"})
