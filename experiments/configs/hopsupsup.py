"""HopSupSup on SplitMNIST (paper Fig. 7, camera-ready; SPEC 1.9 and 2.2): BNNet 2048-2048 with
neuron masks (non-affine batch-statistics BN as the mask, Swish), 5 tasks of digit pairs with the
original labels 0-9 (output 10), SGD lr 0.1 momentum 0.9 wd 1e-4, batch 128, 1 epoch per task;
masks stored in a Hopfield network per layer and recovered at test time, by default from the
networks' attractors compared by entropy (``hopfield.method="attractor"``), also with the paper's
annealed pass (``"anneal"``: gamma 1.5e-3, SGD lr 500, test batch 64). Variants: ``fashion``
(SplitFashionMNIST, the twin that runs here), ``tiny``.
Reproduce (90 s on a 2-core CPU for the Fashion twin, 5 recovery repeats per method and rule):

    python -m experiments.run --config=experiments/configs/hopsupsup.py:fashion \
        --workdir=runs/hopsupsup_fashion
"""

from .base import apply_common_variants, base_config, parse_variants

# This config's own variants (``tiny`` and ``fashion`` apply to every config).
VARIANTS = frozenset()


def get_config(variants: str | None = None):
    c = base_config()  # its `hopfield` fields hold the recovery's defaults
    c.name = "hopsupsup_split_mnist"
    c.method = "hopsupsup"
    c.scenario = "GNu"
    c.stream = "split_mnist"
    c.relabel = False
    c.num_tasks = 5
    c.model = "bnnet"
    c.model_kwargs.hidden = (2048, 2048)
    c.num_outputs = 10
    c.optimizer = "sgd"
    c.lr = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.steps = 0
    c.epochs = 1
    c.test_batch_size = 64
    variants = parse_variants(variants)
    c = apply_common_variants(c, variants, VARIANTS)
    if "tiny" in variants:
        c.model_kwargs.hidden = (256, 256)
        c.hopfield.repeats = 2
    return c
