"""GG SplitImageNet: 100 tasks of 10 classes (classes permuted with seed 1), ResNet-50 with top-k
masks at an ER scale (default 8; ``er4``/``er8``/``er16`` as reported), per-task non-affine BN,
Adam lr 1e-3 without weight decay, batch 256, cosine over 100 epochs with 5 warm-up epochs
(paper Fig. 2 left and table; SPEC 2.2). Needs ImageNet prepared for tensorflow-datasets.

    python -m experiments.run --config=experiments/configs/gg_splitimagenet.py:er8 --workdir=runs/in
"""

from .base import apply_common_variants, base_config, parse_variants

ER = {"er4": 4, "er8": 8, "er16": 16, "er32": 32}


# This config's own variants (``tiny`` and ``fashion`` apply to every config).
VARIANTS = frozenset(set(ER))


def get_config(variants: str | None = None):
    v = parse_variants(variants)
    c = base_config()
    c.name = "gg_splitimagenet"
    c.dataset = "imagenet2012"
    c.stream = "split_imagenet"
    c.normalization = "dataset"
    c.num_tasks = 100
    c.model = "resnet50"
    c.num_outputs = 10
    c.mask_rule = "topk"
    c.er_scale = float(next((ER[x] for x in v if x in ER), 8))
    c.optimizer = "adam"
    c.lr = 1e-3
    c.schedule = "cosine"
    c.warmup_epochs = 5
    c.steps = 0
    c.epochs = 100
    c.batch_size = 256
    c.chunk_size = 1
    c.scenario = "GG"
    c = apply_common_variants(c, v, VARIANTS)
    if "tiny" in v:
        # The first 2 tasks of the same class split (SplitStream with seed 1 is split_imagenet).
        c.stream, c.classes_per_task, c.split_seed, c.num_tasks = "split", 10, 1, 2
        c.steps, c.batch_size, c.max_eval_examples = 2, 4, 8
        c.model_kwargs = {"width": 0.125}
    return c
