"""The config's values, checked before a run touches its workdir: every mistake is a
:class:`~supsup_jax.errors.ConfigError` that names the field, its value and what is allowed.

Types are already enforced by ``ml_collections`` (a locked config refuses a string for an int);
this checks ranges, names and combinations."""

from __future__ import annotations

import math
import numbers
import os

from supsup_jax import baselines, inference, masks
from supsup_jax.data import DATASET_NAMES
from supsup_jax.errors import ConfigError
from supsup_jax.runner import nns_stream
from supsup_jax.runner.build import SCENARIOS
from supsup_jax.steps import OPTIMIZERS, SCHEDULES

__all__ = ["check_config", "check_against_stream"]

STREAMS = ("permuted", "rotated", "split", "split_mnist", "split_cifar100", "split_imagenet")
NORMALIZATIONS = ("mnist", "dataset")


def _fail(field: str, value, allowed: str):
    raise ConfigError(f"config field {field}={value!r} is not allowed: {allowed}")


def _int(config, field: str, lo: int | None = None, hi: int | None = None, *,
         extra: tuple = ()) -> None:
    value = _get(config, field)
    if value in extra:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
            lo is not None and value < lo) or (hi is not None and value > hi):
        rng = (f">= {lo}" if hi is None else f"in [{lo}, {hi}]") if lo is not None else ""
        _fail(field, value, f"an integer {rng}".strip()
              + (f" (or one of {list(extra)})" if extra else ""))


def _real(config, field: str, *, positive: bool = False, none_ok: bool = False,
          hi: float | None = None) -> None:
    value = _get(config, field)
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
            value) or (value <= 0 if positive else value < 0) or (hi is not None and value > hi):
        what = "a finite number " + ("> 0" if positive else ">= 0")
        _fail(field, value, what + (f" and <= {hi}" if hi is not None else "")
              + (" (or None)" if none_ok else ""))


def _choice(config, field: str, choices) -> None:
    value = _get(config, field)
    if value not in choices:
        _fail(field, value, f"one of {list(choices)}")


def _get(config, field: str):
    value = config
    for part in field.split("."):
        value = value[part]
    return value


def check_config(config) -> None:
    """Raise :class:`ConfigError` for the first field whose value no run can use."""
    _int(config, "seed", 0)
    _choice(config, "method", (*baselines.METHODS, "hopsupsup"))
    for f in ("data_factory", "stream_factory"):
        spec = config[f]
        if spec is not None and (not isinstance(spec, str) or spec.count(":") != 1
                                 or not all(spec.split(":"))):
            _fail(f, spec, "'module:function' (an importable factory), or None")
    if config.data_factory is not None and config.stream_factory is not None:
        _fail("data_factory", config.data_factory, "None when stream_factory is given")
    if config.data_factory is None and config.stream_factory is None:
        _choice(config, "dataset", DATASET_NAMES)
    if config.data_dir is not None and not os.path.isdir(os.path.expanduser(config.data_dir)):
        _fail("data_dir", config.data_dir, "an existing directory (or None)")
    _choice(config, "stream", STREAMS)
    _int(config, "num_tasks", 1)
    _int(config, "classes_per_task", 1)
    _real(config, "degrees_per_task")
    _choice(config, "interpolation", ("bilinear", "nearest"))
    _choice(config, "normalization", NORMALIZATIONS)
    for f in ("max_train_examples", "max_test_examples", "max_eval_examples"):
        _int(config, f, 1, extra=(-1,))
    _int(config, "num_outputs", 1)
    _choice(config, "mask_rule", masks.MASK_RULES)
    _real(config, "density", positive=True, none_ok=True, hi=1.0)
    _real(config, "er_scale", positive=True, none_ok=True)
    if config.mask_rule == "topk" and config.density is None and config.er_scale is None:
        _fail("density", None, "top-k masks need density (or er_scale)")
    for f in ("density", "er_scale"):
        if config.mask_rule != "topk" and _get(config, f) is not None:
            _fail(f, _get(config, f), f"None with mask_rule={config.mask_rule!r} (the "
                  "threshold rule's density is set by the scores' signs)")
    _choice(config, "optimizer", OPTIMIZERS)
    _real(config, "lr", positive=True)
    _real(config, "weight_lr", positive=True, none_ok=True)
    _real(config, "weight_decay")
    _real(config, "momentum")
    _choice(config, "schedule", SCHEDULES)
    _int(config, "warmup_epochs", 0)
    _int(config, "epochs", 0)
    _int(config, "steps", 0)
    if config.steps == 0 and config.epochs == 0:
        _fail("steps", 0, "at least 1 optimiser step per task (set steps, or epochs >= 1)")
    _int(config, "batch_size", 1)
    _int(config, "chunk_size", 1)
    _int(config, "test_batch_size", 1)
    _choice(config, "scenario", SCENARIOS)
    _choice(config, "inference.method", tuple(inference.METHODS))
    _choice(config, "inference.objective", inference.OBJECTIVES)
    _int(config, "inference.m", 1, config.test_batch_size)
    _int(config, "inference.shortlist", 1)
    _choice(config, "inference.rerank", inference.RERANKS)
    layers = config.inference.layers
    if not isinstance(layers, tuple) or not all(isinstance(p, str) for p in layers):
        _fail("inference.layers", layers, "a tuple of masked-layer paths, () for all")
    for t in config.eval_at:
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not (
                1 <= t <= config.num_tasks):
            _fail("eval_at", tuple(config.eval_at),
                  f"task counts in [1, num_tasks={config.num_tasks}]")
    _int(config, "nns.decide_every", 1)
    _real(config, "nns.eps", positive=True)
    _int(config, "nns.budget", 1)
    _choice(config, "nns.boundaries", nns_stream.BOUNDARIES)
    _int(config, "nns.offset", 0, config.nns.decide_every - 1)
    _int(config, "nns.visits", 1)


def check_against_stream(config, stream) -> None:
    """The checks that need the data: output width against the classes, batch size against
    the training examples, and G's superfluous neurons."""
    task = stream.task(0)
    classes = task.num_classes
    if config.num_outputs < classes:
        _fail("num_outputs", config.num_outputs, f"at least the {classes} classes of a task")
    examples = len(task.train_labels)
    if config.batch_size > examples:
        _fail("batch_size", config.batch_size, f"at most the {examples} training examples of a "
              "task")
    infers = config.scenario in ("GNu", "GNs", "NNs") and config.method in ("supsup", "batche")
    if infers and config.num_outputs <= classes:
        inf = config.inference
        needs = [f"inference.{f}={v!r}" for f, v in (("objective", inf.objective),
                                                    ("rerank", inf.rerank))
                 if v in ("g", "s") and (f == "objective"
                                         or inf.method in ("shortlist", "exhaustive"))]
        if needs:
            _fail("num_outputs", config.num_outputs,
                  f"more than the {classes} real classes with {', '.join(needs)}: G and S "
                  "use the superfluous output neurons (or use 'h')")
