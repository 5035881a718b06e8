"""The main job: GNu PermutedFashionMNIST, LeNet 300-100 (output 500), objective G, 20 tasks.

The paper's protocol (1000 steps of batch 128, RMSprop 1e-4, threshold masks), One-Shot from one
image per test batch of 128; LeNet 300-100 is the paper's network for its 2500-task runs. About
100 s on a 2-core CPU of 149 GFLOP/s (f32 matmul), so about 6 minutes on one of 44 GFLOP/s.
Reproduce:

    python -m experiments.run --config=experiments/configs/main_fashion.py --workdir=runs/main

Variant ``fc``: the same protocol on FC 1024-1024 (the first round's main job, about 7x the
training FLOPs; 326 s on a 2-core AMD EPYC with AVX-512):

    python -m experiments.run --config=experiments/configs/main_fashion.py:fc --workdir=runs/fc
"""

from .base import apply_common_variants, base_config, parse_variants

# This config's own variants (``tiny`` and ``fashion`` apply to every config).
VARIANTS = frozenset({"fc"})


def get_config(variants: str | None = None):
    variants = parse_variants(variants)
    c = base_config()
    c.dataset = "fashion_mnist"
    c.num_tasks = 20
    c.eval_at = (1, 5, 10, 15, 20)
    if "fc" in variants:
        c.name = "main_gnu_permuted_fashion_fc_g"
    else:
        c.name = "main_gnu_permuted_fashion_lenet_g"
        c.model = "lenet300_100"
    return apply_common_variants(c, variants, VARIANTS)
