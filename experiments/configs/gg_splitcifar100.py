"""GG SplitCIFAR100: 20 tasks of 5 classes (seeded split), GEMResNet18 with top-k masks at an ER
scale, signed constant weights, per-task non-affine BN, Adam lr 1e-3 (wd 1e-4), batch 128,
cosine schedule over 250 epochs per task (paper Fig. 2 right; SPEC 2.2). ``transfer`` is SupSup
Transfer (each task starts from the running mean of the earlier scores). ``er1`` ... ``er32``
pick the ER scale (default 4). Reproduce:

    python -m experiments.run --config=experiments/configs/gg_splitcifar100.py:er4 \
        --workdir=runs/cifar
    python -m experiments.run --config=experiments/configs/gg_splitcifar100.py:transfer \
        --workdir=runs/cifar_t
"""

from experiments.configs.base import apply_common_variants, base_config, parse_variants

ER = {f"er{s}": s for s in (1, 2, 4, 8, 16, 32)}


def get_config(variants: str | None = None):
    v = parse_variants(variants)
    c = base_config()
    c.name = "gg_splitcifar100"
    c.dataset = "cifar100"
    c.stream = "split_cifar100"
    c.normalization = "dataset"
    c.num_tasks = 20
    c.model = "gemresnet18"
    c.num_outputs = 5
    c.mask_rule = "topk"
    c.er_scale = float(next((ER[x] for x in v if x in ER), 4))
    c.optimizer = "adam"
    c.lr = 1e-3
    c.weight_decay = 1e-4
    c.schedule = "cosine"
    c.steps = 0
    c.epochs = 250
    c.scenario = "GG"
    c.transfer = "transfer" in v
    if c.transfer:
        c.name += "_transfer"
    c = apply_common_variants(c, v, {"transfer", *ER})
    if "tiny" in v:
        c.num_tasks = 20  # the split is fixed at 20 tasks; tiny shrinks steps and data instead
        c.steps, c.batch_size, c.max_eval_examples = 4, 16, 64
        c.eval_at = (20,)
    return c
