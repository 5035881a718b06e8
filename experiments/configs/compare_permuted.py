"""PermutedMNIST comparison (paper Fig. 3; Fig. 5 right): SupSup GNu against BatchE GG and PSP GG.

One config, the method picked by a variant (SPEC 2.2 hyperparameters, 1000 steps of batch 128
per task, FC 1024-1024 or LeNet 300-100 with ``lenet``):

* ``supsup`` (default): GNu, One-Shot from one image, objective G (``h`` for H), output 500
  (100 for LeNet): exactly ``gnu_permuted.py``;
* ``batche``: GG, output 10, ``kaiming_normal`` W trained with the task-0 fast weights by Adam
  lr 1e-4, later tasks' fast weights by Adam lr 1e-2 (wd 1e-4, the official default);
  ``randw`` keeps W random; ``oneshot`` is Fig. 5 right: BatchE in GNu, One-Shot over the
  rank-one factors with alpha, output 500 (``shortlist``: One-Shot's 16 best-ranked tasks
  re-ranked by S under each task's own factors);
* ``psp``: GG, output 10, ``xavier_normal`` W trained on every task by RMSprop lr 1e-4, a random
  orthogonal context per task and layer (``binary``: +-1 contexts).

``rotated`` swaps the stream for RotatedMNIST (36 tasks, 10 degrees apart; paper Fig. 5 left):
SupSup is then exactly ``gnu_rotated.py`` (output 200, Binary H on the full batch; ``g``: G).

Reproduce (``fashion``: PermutedFashionMNIST, which runs here; ``tiny``: CPU smoke test):

    python -m experiments.run --config=experiments/configs/compare_permuted.py:batche,fashion \\
        --config.num_tasks=10 --workdir=runs/batche10
    python -m experiments.compare --figure=permuted_fashion10 --workdir=runs/compare10
"""

from . import gnu_permuted, gnu_rotated
from .base import apply_common_variants, base_config, parse_variants

METHODS = ("supsup", "batche", "psp")
_OPTIONS = {"lenet", "h", "g", "randw", "oneshot", "binary", "rotated", "shortlist"}


# This config's own variants (``tiny`` and ``fashion`` apply to every config).
VARIANTS = frozenset(set(METHODS) | _OPTIONS)


def get_config(variants: str | None = None):
    v = parse_variants(variants)
    chosen = [m for m in METHODS if m in v]
    if len(chosen) > 1:
        raise ValueError(f"pick one method of {METHODS}, got {chosen}")
    method = chosen[0] if chosen else "supsup"
    rest = v - set(METHODS)
    if method == "supsup":
        bad = rest & {"randw", "oneshot", "binary"}
        if bad:
            raise ValueError(f"variants {sorted(bad)} do not apply to supsup")
        if "rotated" in rest:
            if "lenet" in rest:
                raise ValueError("the rotated comparison is FC 1024-1024")
            c = gnu_rotated.get_config(",".join(sorted(rest - {"rotated", "h"})))
            c.name = c.name.replace("gnu_rotated", "compare_rotated_supsup", 1)
            return c
        c = gnu_permuted.get_config(",".join(sorted(rest)))
        c.name = c.name.replace("gnu_permuted", "compare_permuted_supsup", 1)
        return c
    c = base_config()
    c.name = f"compare_permuted_{method}"
    c.num_tasks = 250
    c.eval_at = (1, 5, 10, 25, 50, 100, 150, 200, 250)
    c.scenario = "GG"
    c.num_outputs = 10
    c.method = method
    c.rand_w = False
    c.weight_lr = 1e-4
    c.psp_context = "orthogonal"
    if "lenet" in v:
        c.model = "lenet300_100"
        c.name += "_lenet"
    if "rotated" in v:  # Fig. 5 left: 36 tasks rotated by 10 degrees each
        c.stream = "rotated"
        c.num_tasks = 36
        c.eval_at = (2, 5, 10, 15, 20, 25, 30, 35, 36)
        c.name = c.name.replace("permuted", "rotated", 1)
    if method == "batche":
        c.weight_init = "kaiming_normal"
        c.optimizer, c.lr, c.weight_decay = "adam", 1e-2, 1e-4
        if "randw" in v:
            c.rand_w = True
            c.weight_init = "pytorch_default"
            c.name += "_randw"
        if "oneshot" in v:
            c.scenario = "GNu"
            c.num_outputs = 500
            c.inference.objective = "h" if "h" in v else "g"
            c.name += "_oneshot_" + c.inference.objective
            if "shortlist" in v:
                c.inference.method = "shortlist"
                c.name += "_shortlist"
        elif "shortlist" in v:
            raise ValueError("the shortlist variant needs oneshot (BatchE in GNu)")
    elif method == "psp":
        c.weight_init = "xavier_normal"
        c.optimizer, c.lr = "rmsprop", 1e-4
        if "binary" in v:
            c.psp_context = "binary"
            c.name += "_binary"
    bad = rest & ({"randw", "oneshot", "shortlist"} if method == "psp" else {"binary"})
    if bad:
        raise ValueError(f"variants {sorted(bad)} do not apply to {method}")
    return apply_common_variants(c, v, VARIANTS)
