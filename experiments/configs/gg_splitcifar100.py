"""GG SplitCIFAR100: 20 tasks of 5 classes (seeded split), GEMResNet18 with top-k masks at an ER
scale, signed constant weights, per-task non-affine BN, Adam lr 1e-3 (wd 1e-4), batch 128,
cosine schedule over 250 epochs per task (paper Fig. 2 right; SPEC 2.2). ``transfer`` is SupSup
Transfer (each task starts from the running mean of the earlier scores). ``er1`` ... ``er32``
pick the ER scale (default 4).

The paper's other curves (SPEC 1.10, 2.2), same data, network, schedule and epochs:

* ``batche``: BatchE, W (kaiming normal) with the task-0 fast weights at Adam lr 1e-3, later
  tasks' fast weights at lr 0.1 (the repo has only the Rand W script; its lr 0.1 is used);
  ``batche,randw``: BatchE Rand W, W frozen at PyTorch's default init, fast weights lr 0.1;
* ``separate_heads``: trunk trained on task 0 (lr 1e-3), a head per task (lr 1e-2);
  ``separate_heads,randw``: random frozen trunk, heads only;
* ``upper_bound``: every weight trained on every task in turn (lr 1e-3), a model kept per task;
* ``lower_bound``: one trunk trained on every task in turn (lr 1e-3), a head per task (lr 1e-2).

Every method keeps per-task non-affine BN statistics. All curves in one figure:
``python -m experiments.compare --figure=splitcifar100 --workdir=runs/cifar_all``. Reproduce:

    python -m experiments.run --config=experiments/configs/gg_splitcifar100.py:er4 \
        --workdir=runs/cifar
    python -m experiments.run --config=experiments/configs/gg_splitcifar100.py:transfer \
        --workdir=runs/cifar_t
"""

from .base import apply_common_variants, base_config, parse_variants

ER = {f"er{s}": s for s in (1, 2, 4, 8, 16, 32)}
BASELINES = ("batche", "separate_heads", "upper_bound", "lower_bound")


# This config's own variants (``tiny`` and ``fashion`` apply to every config).
VARIANTS = frozenset({"transfer", "randw", *ER, *BASELINES})


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
    chosen = [m for m in BASELINES if m in v]
    if len(chosen) > 1 or (chosen and c.transfer):
        raise ValueError(f"pick one of transfer, {', '.join(BASELINES)}; got {sorted(v)}")
    if "randw" in v and not (set(chosen) & {"batche", "separate_heads"}):
        raise ValueError("randw applies to batche and separate_heads only")
    if chosen:
        _baseline(c, chosen[0], "randw" in v)
    c = apply_common_variants(c, v, VARIANTS)
    if "tiny" in v:
        c.num_tasks = 20  # the split is fixed at 20 tasks; tiny shrinks steps and data instead
        c.steps, c.batch_size, c.max_eval_examples = 4, 16, 64
        c.eval_at = (20,)
    return c


def _baseline(c, method, rand_w):
    c.method = method
    c.rand_w = rand_w
    c.name = f"gg_splitcifar100_{method}" + ("_randw" if rand_w else "")
    c.mask_rule, c.er_scale = "threshold", None  # unused by the baselines
    c.weight_init = "pytorch_default" if rand_w else "kaiming_normal"
    c.weight_lr = 1e-3
    c.lr = {"batche": 0.1, "separate_heads": 1e-2, "lower_bound": 1e-2,
            "upper_bound": 1e-3}[method]
