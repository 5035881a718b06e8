"""Masking any parameter pytree: which leaves are masked, and ``W * M`` on them.

Scores and masks are *flat* dicts keyed by the masked leaf's path in the parameter pytree,
``"layer/0/kernel"``, so they are independent of how a model nests its parameters (an NNX pure
dict, a Linen ``params`` dict or any other pytree of arrays). Stacking them on a leading task axis
gives the per-task state that superposition contracts and evaluation vmaps over.

Typical use::

    weights = network.params                                # frozen, random
    scores = init_scores(key, weights)                      # {path: float[...]}
    mask_fn = make_mask_fn("threshold")                     # {path: scores} -> {path: {0,1}}
    logits = apply(mask_params(weights, mask_fn(scores)), x)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import init as init_lib
from supsup_jax import masks as masks_lib

__all__ = [
    "MaskFn",
    "PathFilter",
    "check_scores",
    "default_mask_filter",
    "er_densities",
    "init_scores",
    "make_mask_fn",
    "mask_params",
    "masked_leaves",
    "path_str",
    "reinit_frozen",
]

# Arbitrary constants that separate the key streams of scores and frozen weights.
_SCORES_DOMAIN = 0x5C0E5
_WEIGHTS_DOMAIN = 0xF207E

PathFilter = Callable[[str, jax.Array], bool]
MaskFn = Callable[[Mapping[str, jax.Array]], dict[str, jax.Array]]


def path_str(path) -> str:
    """``'a/0/kernel'`` for a JAX key path (dict keys, sequence indices, attributes)."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        else:
            parts.append(str(k))
    return "/".join(parts)


def default_mask_filter(path: str, leaf) -> bool:
    """Mask every ``kernel`` of rank >= 2 (Dense and Conv weights); never biases or BN."""
    return path.rsplit("/", 1)[-1] == "kernel" and np.ndim(leaf) >= 2


def masked_leaves(params, is_masked: PathFilter = default_mask_filter) -> dict[str, jax.Array]:
    """The leaves of ``params`` selected by ``is_masked``, as ``{path: array}``."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    out = {path_str(p): leaf for p, leaf in leaves if is_masked(path_str(p), leaf)}
    if not out:
        raise ValueError(
            "no parameter is selected for masking: the filter matched none of "
            f"{[path_str(p) for p, _ in leaves]}"
        )
    return out


def mask_params(params, masks: Mapping[str, jax.Array]):
    """``params`` with each masked leaf ``W`` replaced by ``W * M`` (the forward of SPEC 1.2).

    Args:
      params: any pytree of arrays (the frozen weights).
      masks: ``{path: mask}`` with one entry per masked leaf, each broadcastable to its leaf (a
        float {0, 1} mask of the same shape, or a superposed real-valued mask). Masks in a lower
        precision are cast to the weight dtype.

    Returns:
      A pytree with the structure of ``params``.
    """

    def one(path, leaf):
        m = masks.get(path_str(path))
        return leaf if m is None else leaf * m.astype(leaf.dtype)

    out = jax.tree_util.tree_map_with_path(one, params)
    return out


def init_scores(
    key: jax.Array,
    params,
    is_masked: PathFilter = default_mask_filter,
    init: Callable = init_lib.score_init,
) -> dict[str, jax.Array]:
    """One task's fresh scores: ``init(fold_in(key, i), shape)`` for the i-th masked leaf.

    The default is Kaiming uniform, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (SPEC 1.1).
    """
    leaves = masked_leaves(params, is_masked)
    # Domain separation: Flax derives the weights of a model built with seed s from key(s) by
    # fold_in too, so scores drawn as fold_in(key(s), i) would copy the weights' signs (every
    # kept weight of a layer positive, or negative: a dead network).
    key = jax.random.fold_in(key, _SCORES_DOMAIN)
    return {
        p: init(jax.random.fold_in(key, i), w.shape, w.dtype)
        for i, (p, w) in enumerate(sorted(leaves.items()))
    }


def reinit_frozen(
    key: jax.Array,
    params,
    init: Callable | str = "signed_constant",
    is_masked: PathFilter = default_mask_filter,
):
    """Re-draw the masked leaves of any model's ``params`` from ``key`` (e.g. signed constant).

    For a model we did not write: its kernels become the frozen random weights of SupSup,
    regenerable from ``key`` alone. Other leaves are kept.
    """
    if isinstance(init, str):
        init = init_lib.weight_init(init)
    order = {p: i for i, p in enumerate(sorted(masked_leaves(params, is_masked)))}
    key = jax.random.fold_in(key, _WEIGHTS_DOMAIN)

    def one(path, leaf):
        i = order.get(path_str(path))
        return leaf if i is None else init(jax.random.fold_in(key, i), leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(one, params)


def er_densities(weights: Mapping[str, jax.Array], scale: float) -> dict[str, float]:
    """Per-layer ER densities ``min(0.5, s (c_out + c_in) / (c_out c_in k_h k_w))`` (SPEC 1.2)."""
    return {p: masks_lib.er_density(w.shape, scale) for p, w in weights.items()}


def make_mask_fn(
    rule: str = "threshold", density: float | Mapping[str, float] | None = None
) -> MaskFn:
    """A function ``{path: scores} -> {path: mask}`` applying one rule to every masked layer.

    Args:
      rule: ``"threshold"`` (``1[s >= 0]``, SPEC 1.2b) or ``"topk"`` (edge-popup, SPEC 1.2a).
      density: for ``"topk"`` only: the kept fraction, one float for all layers or a
        ``{path: float}`` dict (e.g. from :func:`er_densities`).
    """
    if rule == "threshold":
        if density is not None:
            raise ValueError("the threshold rule takes no density (it is set by the scores' signs)")
        return lambda scores: {p: masks_lib.threshold_mask(s) for p, s in scores.items()}
    if rule == "topk":
        if density is None:
            raise ValueError("the topk rule needs a density (fraction of weights kept)")

        def fn(scores):
            out = {}
            for p, s in scores.items():
                d = density if isinstance(density, float | int) else density.get(p)
                if d is None:
                    raise KeyError(f"no top-k density given for masked layer {p!r}")
                out[p] = masks_lib.topk_mask(s, float(d))
            return out

        return fn
    raise ValueError(f"unknown mask rule {rule!r}; choose one of {masks_lib.MASK_RULES}")


def check_masks(shapes: Mapping[str, tuple[int, ...]], masks: Any, *, stacked: bool = False,
                against: str = "the masked weights") -> None:
    """Raise one clear error unless ``masks`` is a mapping ``{path: array}`` with exactly the
    paths of ``shapes`` and those shapes (after a leading task axis when ``stacked``).

    ``against`` names what ``shapes`` describes in the message (e.g. "the bank")."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping {{path: array}}, got {type(masks).__name__}")
    for p, m in masks.items():
        if not hasattr(m, "shape") or not hasattr(m, "dtype"):
            raise TypeError(f"mask {p!r} must be an array, got {type(m).__name__}")
    if set(masks) != set(shapes):
        raise ValueError(f"masks cover {sorted(masks)}; {against} hold {sorted(shapes)}")
    for p, s in shapes.items():
        shape = tuple(masks[p].shape[1:] if stacked else masks[p].shape)
        if shape != tuple(s):
            raise ValueError(f"mask {p!r} has shape {tuple(masks[p].shape)}; {against} expect "
                             f"{tuple(s)}" + (" (plus the task axis)" if stacked else ""))


def check_scores(
    weights: Mapping[str, jax.Array], scores: Mapping[str, jax.Array], *, stacked: bool = False
) -> None:
    """Raise one clear error if ``scores`` does not fit the masked ``weights`` or is not finite.

    Call at the Python boundary (outside jit). With ``stacked=True`` every score array carries a
    leading task axis.
    """
    if set(weights) != set(scores):
        missing = sorted(set(weights) - set(scores))
        extra = sorted(set(scores) - set(weights))
        raise ValueError(
            f"scores do not match the masked weights: missing {missing}, unexpected {extra}"
        )
    for p, w in weights.items():
        s = scores[p]
        shape = tuple(s.shape[1:]) if stacked else tuple(s.shape)
        if shape != tuple(w.shape):
            raise ValueError(
                f"scores for {p!r} have shape {tuple(s.shape)}; the weight has {tuple(w.shape)}"
                + (" (plus a leading task axis)" if stacked else "")
            )
        if jnp.issubdtype(s.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(s))):
            raise ValueError(f"scores for {p!r} contain NaN or inf")
