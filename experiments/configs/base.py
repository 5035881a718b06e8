"""The fields every experiment config has, with the paper's PermutedMNIST defaults (SPEC 2.2).

Configs are ``ml_collections.ConfigDict``; each file in this folder has ``get_config(variants)``
where ``variants`` is the text after ``:`` in ``--config=FILE:VARIANTS``, a comma-separated list
(``tiny`` shrinks a run for a CPU smoke test; ``fashion`` swaps MNIST for Fashion-MNIST).
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "experiment"
    c.seed = 0
    # Data.
    c.dataset = "mnist"
    c.data_dir = None
    c.stream = "permuted"
    c.num_tasks = 250
    c.classes_per_task = 2
    c.split_seed = None
    c.relabel = True
    c.degrees_per_task = 10.0
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
    c.density = None
    c.er_scale = None
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
        {"method": "one_shot", "objective": "g", "m": 1, "per_example": False})
    c.test_batch_size = 128
    c.eval_at = ()  # tasks-learned counts to evaluate at; empty: after every task
    c.nns = ml_collections.ConfigDict({"decide_every": 100, "eps": 2.0**-3, "budget": 2500})
    c.quiet = False
    c.tensorboard = True  # scalars in WORKDIR/tensorboard when tensorboardX is installed
    return c


def parse_variants(variants: str | None) -> set[str]:
    return {v.strip() for v in (variants or "").split(",") if v.strip()}


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
