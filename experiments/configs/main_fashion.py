"""The main job: GNu PermutedFashionMNIST, FC 1024-1024 (output 500), objective G, 20 tasks.

The paper's protocol (1000 steps of batch 128, RMSprop 1e-4, threshold masks), One-Shot from one
image per test batch of 128; about 6 minutes on a 2-core CPU. Reproduce:

    python -m experiments.run --config=experiments/configs/main_fashion.py --workdir=runs/main
"""

from experiments.configs.base import apply_common_variants, base_config, parse_variants


def get_config(variants: str | None = None):
    c = base_config()
    c.name = "main_gnu_permuted_fashion_fc_g"
    c.dataset = "fashion_mnist"
    c.num_tasks = 20
    c.eval_at = (1, 5, 10, 15, 20)
    return apply_common_variants(c, parse_variants(variants), set())
