"""The fields every experiment config has, with the paper's PermutedMNIST defaults (SPEC 2.2).

Configs are ``ml_collections.ConfigDict``; each file in this folder has ``get_config(variants)``
where ``variants`` is the text after ``:`` in ``--config=FILE:VARIANTS``, a comma-separated list
(``tiny`` shrinks a run for a CPU smoke test; ``fashion`` swaps MNIST for Fashion-MNIST).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


def base_config() -> ml_collections.ConfigDict:
    """Every field the runner reads, with its default (fields that may be None are typed
    placeholders, so ``--config.X=V`` sets them too)."""
    c = ml_collections.ConfigDict()
    c.name = "experiment"
    c.seed = 0
    # Method: "supsup", a baseline of supsup_jax.baselines.METHODS, or "hopsupsup".
    c.method = "supsup"
    c.rand_w = False  # the Rand W variant of batche and separate_heads
    c.weight_lr = placeholder(float)  # lr of shared weights (baselines); None: same as lr
    c.psp_context = "orthogonal"  # psp: "orthogonal" or "binary"
    # Data.
    c.dataset = "mnist"
    c.data_dir = placeholder(str)
    # Your own data: "module:function", function(config) -> supsup_jax.data.Dataset (then
    # `stream` applies to it), or for a whole stream function(config) -> an object with
    # task(t) -> TaskData, num_tasks, mean, std, augment and dataset (README "Your own data").
    c.data_factory = placeholder(str)
    c.stream_factory = placeholder(str)
    c.stream = "permuted"
    c.num_tasks = 250
    c.classes_per_task = 2
    c.split_seed = placeholder(int)
    c.relabel = True
    c.degrees_per_task = 10.0
    c.interpolation = "bilinear"  # rotated stream: or "nearest" (the official code's)
    c.normalization = "mnist"  # the official pipeline's statistics for the MNIST family
    c.max_train_examples = -1
    c.max_test_examples = -1
    c.max_eval_examples = -1
    # Model and masks.
    c.model = "fc1024"
    c.model_kwargs = ml_collections.ConfigDict()
    c.num_outputs = 500
    c.weight_init = "signed_constant"
    c.mask_rule = "threshold"
    c.density = placeholder(float)  # top-k masks: the fraction kept per layer
    c.er_scale = placeholder(float)  # top-k masks: Erdos-Renyi densities at this scale
    # Training, per task.
    c.optimizer = "rmsprop"
    c.lr = 1e-4
    c.weight_decay = 0.0
    c.momentum = 0.9
    c.schedule = "constant"
    c.warmup_epochs = 0
    c.steps = 1000
    c.epochs = 0
    c.batch_size = 128
    c.chunk_size = 100
    c.transfer = False
    # Evaluation.
    c.scenario = "GNu"
    c.inference = ml_collections.ConfigDict(
        {"method": "one_shot", "objective": "g", "m": 1, "per_example": False,
         # method "shortlist": how many tasks it re-ranks, and by which objective
         "shortlist": 16, "rerank": "s",
         # masked-layer paths whose alpha-gradient terms rank the tasks; () for all
         "layers": ()})
    c.test_batch_size = 128
    c.eval_at = ()  # tasks-learned counts to evaluate at; empty: after every task
    # NNs' stream (supsup_jax/runner/nns_stream.py): task changes fall `offset` batches into a
    # decision block ("continuous"), also with tasks returning in `visits` pieces ("revisit"),
    # or on block starts ("aligned", the first round's runner).
    c.nns = ml_collections.ConfigDict({"decide_every": 100, "eps": 2.0**-3, "budget": 2500,
                                       "boundaries": "continuous", "offset": 50, "visits": 2})
    # HopSupSup (method "hopsupsup", model "bnnet", SPEC 1.9): storage and recovery.
    c.hopfield = ml_collections.ConfigDict({
        "method": "attractor",
        "compare_methods": ("anneal",),  # also recovered with these methods (same masks)
        "rule": "hebbian",  # anneal: measured better than the official "storkey" (RESULTS.md)
        "compare_rules": ("storkey",),  # also recovered with these rules (same trained masks)
        "num_starts": 256,  # attractor: random +-1 starts of the recall dynamics per layer
        "energy_ratio": 0.95,  # attractor: keep states with E <= energy_ratio * E_min
        "gamma": 1.5e-3,
        "lr": 500.0,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "repeats": 5,  # recovery passes with differently shuffled test batches, per recovery
    })
    c.quiet = False
    c.tensorboard = True  # scalars in WORKDIR/tensorboard when tensorboardX is installed
    return c


def parse_variants(variants: str | None) -> set[str]:
    return {v.strip() for v in (variants or "").split(",") if v.strip()}


def use_shortlist(c) -> None:
    """Issue 14's task inference: the first layer's alpha-gradient names 16 tasks, S under
    each mask alone picks one (``supsup_jax.inference.shortlist``; RESULTS.md)."""
    c.inference.method = "shortlist"
    c.inference.layers = ("layers/0/kernel",)
    c.name += "_shortlist"


def apply_common_variants(c, variants: set[str], known: set[str]) -> ml_collections.ConfigDict:
    """``fashion``: Fashion-MNIST instead of MNIST (the twin that runs on this machine)."""
    unknown = variants - known - {"tiny", "fashion"}
    if unknown:
        raise ValueError(f"unknown config variants {sorted(unknown)}; known: "
                         f"{sorted(known | {'tiny', 'fashion'})}")
    if "fashion" in variants:
        if c.dataset != "mnist":
            raise ValueError(f"the fashion variant swaps MNIST, but this config uses {c.dataset}")
        c.dataset = "fashion_mnist"
        c.name += "_fashion"
    if "tiny" in variants:
        c.name += "_tiny"
        if c.stream in ("permuted", "rotated", "split"):  # the others have a fixed task count
            c.num_tasks = min(c.num_tasks, 3)
        c.steps = 20
        c.epochs = 0
        c.chunk_size = 10
        c.batch_size = 32
        c.max_train_examples = 2000
        c.max_eval_examples = 256
        c.eval_at = ()
        c.quiet = True
    return c
