"""Hopfield networks over +-1 patterns, as pure functions over explicit arrays (SPEC 1.9).

HopSupSup stores each task's binary neuron mask ``M`` (one per masked layer, ``d`` neurons) as
the +-1 pattern ``x = 2 M - 1`` in a Hopfield network ``W`` of shape ``(d, d)``, and recovers a
mask at test time by descending the energy ``E(s) = -1/2 s^T W s`` (paper section 3.7, Eq. 5-6).

Two learning rules (``RULES``):

* ``"storkey"``: the update of the official code (``FastHopMaskBN.cache_masks``)::

      h = W x
      W <- W + (x x^T - I - x h^T - h x^T) / d

  Storkey's (1997) rule with the local field ``h`` taken over *all* neurons (the exact rule
  excludes ``k = i, j``); the approximation changes ``h_i`` by ``W_ii x_i + W_ij x_j`` only.
* ``"hebbian"``: the rule the paper prints, ``W <- W + x x^T / d`` (diagonal included).

Default: ``"hebbian"`` (``DEFAULT_RULE``), measured better. On SplitFashionMNIST (BNNet
2048-2048, 5 tasks, the official recovery of ``supsup_jax.hopsupsup``; ``experiments/RESULTS.md``,
HopSupSup section) both rules keep all five masks as fixed points, and the recovered accuracy
averaged over 5 shuffles of the test batches is 0.890 with Hebbian against 0.832 with Storkey.
Storkey lands exactly on a stored mask more often, but on the wrong one more often too. (With
HopSupSup's default attractor recovery both rules recover every task; see ``hopsupsup``.)

:func:`attractors` retrieves the network's stable states from ``W`` alone (recall dynamics from
random starts, fixed points kept, deduplicated, spurious states dropped by energy): the
candidates of HopSupSup's attractor recovery.

All functions are jittable, shape-polymorphic in ``d`` and run on any device; patterns are float
arrays of +-1 (or bool/{0, 1} masks where the name says ``mask``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DEFAULT_RULE",
    "RULES",
    "attractors",
    "energy",
    "energy_grad",
    "hebbian_update",
    "init",
    "is_fixed_point",
    "mask_to_pattern",
    "pattern_to_mask",
    "recall",
    "recall_many",
    "storage_bits",
    "store",
    "storkey_update",
]

DEFAULT_RULE = "hebbian"


def init(d: int, dtype=jnp.float32) -> jax.Array:
    """An empty network: ``W = 0`` of shape ``(d, d)`` (the official code starts from zeros)."""
    if d < 1:
        raise ValueError(f"a Hopfield network needs d >= 1 neurons, got {d}")
    return jnp.zeros((d, d), dtype)


def mask_to_pattern(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
    """``2 M - 1``: a bool or {0, 1} mask ``(..., d)`` as a +-1 pattern of ``dtype``."""
    return 2 * mask.astype(dtype) - 1


def pattern_to_mask(pattern: jax.Array) -> jax.Array:
    """``pattern >= 0`` as bool ``(..., d)`` (the threshold rule of SPEC 1.2b)."""
    return pattern >= 0


def _check(w: jax.Array, x: jax.Array) -> None:
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"W must be square (d, d), got shape {w.shape}")
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"pattern has {x.shape[-1]} neurons, the network {w.shape[0]}")


def storkey_update(w: jax.Array, x: jax.Array) -> jax.Array:
    """One pattern stored with the official code's Storkey rule (SPEC 1.9).

    ``h = W x``; ``W + (x x^T - I - x h^T - h x^T) / d``.

    Args:
      w: float ``(d, d)``.
      x: float ``(d,)`` of +-1.

    Returns:
      float ``(d, d)``, symmetric when ``w`` is.
    """
    _check(w, x)
    if x.ndim != 1:
        raise ValueError(f"storkey_update takes one pattern (d,), got shape {x.shape}")
    d = w.shape[0]
    x = x.astype(w.dtype)
    h = w @ x
    delta = jnp.outer(x, x) - jnp.eye(d, dtype=w.dtype) - jnp.outer(x, h) - jnp.outer(h, x)
    return w + delta / d


def hebbian_update(w: jax.Array, x: jax.Array) -> jax.Array:
    """One pattern stored with the Hebbian rule the paper prints: ``W + x x^T / d``.

    Args:
      w: float ``(d, d)``.
      x: float ``(d,)`` of +-1.

    Returns:
      float ``(d, d)``.
    """
    _check(w, x)
    if x.ndim != 1:
        raise ValueError(f"hebbian_update takes one pattern (d,), got shape {x.shape}")
    x = x.astype(w.dtype)
    return w + jnp.outer(x, x) / w.shape[0]


RULES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "storkey": storkey_update,
    "hebbian": hebbian_update,
}


def _rule(name: str):
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown Hopfield rule {name!r}; choose one of {sorted(RULES)}") from None


def store(w: jax.Array, patterns: jax.Array, rule: str = DEFAULT_RULE) -> jax.Array:
    """Store ``patterns`` one after another (in order; Storkey is order dependent).

    Args:
      w: float ``(d, d)``, e.g. from :func:`init` or an earlier ``store``.
      patterns: float ``(p, d)`` of +-1, or ``(d,)`` for one pattern.
      rule: a key of ``RULES``.

    Returns:
      float ``(d, d)``.
    """
    update = _rule(rule)
    patterns = jnp.atleast_2d(patterns)
    _check(w, patterns)
    w, _ = jax.lax.scan(lambda w, x: (update(w, x), None), w, patterns)
    return w


def energy(w: jax.Array, s: jax.Array) -> jax.Array:
    """``E(s) = -1/2 s^T W s`` (paper Eq. 6), for ``s`` ``(d,)`` or a batch ``(..., d)``.

    Returns:
      float, shape ``s.shape[:-1]``.
    """
    _check(w, s)
    return -0.5 * jnp.einsum("...i,ij,...j->...", s, w, s)


def energy_grad(w: jax.Array, s: jax.Array) -> jax.Array:
    """``dE/ds = -1/2 (W + W^T) s`` (``-W s`` for symmetric ``W``); shape of ``s``."""
    _check(w, s)
    return -0.5 * (jnp.einsum("ij,...j->...i", w, s) + jnp.einsum("ji,...j->...i", w, s))


def is_fixed_point(w: jax.Array, x: jax.Array) -> jax.Array:
    """Whether every neuron of ``x`` ``(..., d)`` agrees with the sign of its field ``W x``.

    A neuron with field exactly 0 counts as stable. Returns bool of shape ``x.shape[:-1]``.
    """
    _check(w, x)
    h = jnp.einsum("ij,...j->...i", w, x)
    return jnp.all(h * x >= 0, axis=-1)


def recall(w: jax.Array, s: jax.Array, max_steps: int = 100) -> tuple[jax.Array, jax.Array]:
    """Synchronous sign dynamics ``s <- sign(W s)`` until a fixed point or ``max_steps``.

    A neuron whose field is exactly 0 keeps its state. Synchronous updates may end in a 2-cycle;
    ``max_steps`` bounds the loop.

    Args:
      w: float ``(d, d)``.
      s: float ``(d,)`` of +-1, the probe.
      max_steps: static bound on the number of sweeps.

    Returns:
      ``(state, sweeps)``: float ``(d,)`` of +-1 and the int32 number of sweeps taken (the last
      one changed nothing when the loop stopped at a fixed point).
    """
    _check(w, s)
    if s.ndim != 1:
        raise ValueError(f"recall takes one probe (d,), got shape {s.shape}")
    state, sweeps = _recall_many(w, s[None].astype(w.dtype), jnp.int32(max_steps))
    return state[0], sweeps


@jax.jit
def _recall_many(w, s, max_steps):
    def cond(c):
        _, changed, i = c
        return changed & (i < max_steps)

    def body(c):
        s, _, i = c
        h = s @ w.T
        new = jnp.where(h > 0, 1.0, jnp.where(h < 0, -1.0, s)).astype(s.dtype)
        return new, jnp.any(new != s), i + 1

    s, _, steps = jax.lax.while_loop(cond, body, (s, jnp.bool_(True), jnp.int32(0)))
    return s, steps


def recall_many(w: jax.Array, s: jax.Array, max_steps: int = 100) -> tuple[jax.Array, jax.Array]:
    """:func:`recall` for a batch of probes ``(k, d)`` at once (``s <- sign(s W^T)``).

    All probes sweep together until none changes or ``max_steps``; a probe that reached a fixed
    point stays there. Check :func:`is_fixed_point` on the result: a probe caught in a 2-cycle
    is not one.

    Returns:
      ``(states (k, d), sweeps)``.
    """
    _check(w, s)
    if s.ndim != 2:
        raise ValueError(f"recall_many takes probes (k, d), got shape {s.shape}")
    return _recall_many(w, s.astype(w.dtype), jnp.int32(max_steps))


def attractors(w: jax.Array, key: jax.Array, num_starts: int = 256, max_steps: int = 100,
               energy_ratio: float = 0.95) -> np.ndarray:
    """The stable states of ``W``, found from ``W`` alone (HopSupSup's recovery candidates).

    1. ``num_starts`` uniformly random +-1 probes (from ``key``) run :func:`recall_many`;
    2. the probes that end on a fixed point (:func:`is_fixed_point`) are kept and deduplicated;
    3. states with energy above ``energy_ratio * E_min`` are dropped (``E < 0`` for every state
       kept, so this keeps the deep minima).

    Both rules give ``E(s) = E(-s)``, so a stored pattern comes with its negation: the network
    cannot tell them apart and both are returned. Step 3 separates the stored patterns from the
    spurious (mixture) states: for the five SplitFashionMNIST masks (d = 2048, Hebbian and
    Storkey) the stored patterns and their negations lie at ``E / E_min`` 0.97-1.00 and the
    deepest spurious state at 0.90 (Hebbian) / 0.76 (Storkey), and 256 starts find all ten.
    Far below capacity each stored pattern's basin is large, so random starts find it; near
    capacity more starts are needed.

    Not jittable (the number of states is data dependent).

    Returns:
      float ``(k, d)`` of +-1 (numpy), ``k >= 1``, sorted by energy (lowest first; ties by
      lexicographic order of the state, so the result is deterministic).
    """
    if num_starts < 1 or not 0 < energy_ratio <= 1:
        raise ValueError(f"need num_starts >= 1 and 0 < energy_ratio <= 1, got {num_starts}, "
                         f"{energy_ratio}")
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"W must be square (d, d), got shape {w.shape}")
    probes = jax.random.rademacher(key, (num_starts, w.shape[0]), w.dtype)
    states, _ = recall_many(w, probes, max_steps)
    fixed = np.asarray(is_fixed_point(w, states))
    states = np.unique(np.asarray(states)[fixed], axis=0)  # sorted lexicographically
    if len(states) == 0:
        raise ValueError(f"no probe of {num_starts} reached a fixed point in {max_steps} sweeps")
    e = np.asarray(energy(w, jnp.asarray(states)))
    keep = e <= energy_ratio * e.min() if e.min() < 0 else np.ones(len(e), bool)
    states, e = states[keep], e[keep]
    return states[np.argsort(e, kind="stable")]


def storage_bits(d: int, num_patterns: int, bits_per_weight: int = 32) -> dict[str, int]:
    """Bits a Hopfield network of ``d`` neurons holds against ``num_patterns`` stacked masks.

    Returns:
      ``{"hopfield_bits": d*d*bits_per_weight, "hopfield_symmetric_bits": d*(d+1)/2 *
      bits_per_weight (W is symmetric under both rules), "mask_bits": num_patterns * d}``. The
      network is fixed in size whatever the number of tasks; the stacked masks grow by ``d`` bits
      per task.
    """
    if d < 1 or num_patterns < 0 or bits_per_weight < 1:
        raise ValueError(f"bad sizes d={d}, num_patterns={num_patterns}, "
                         f"bits_per_weight={bits_per_weight}")
    return {
        "hopfield_bits": d * d * bits_per_weight,
        "hopfield_symmetric_bits": d * (d + 1) // 2 * bits_per_weight,
        "mask_bits": num_patterns * d,
    }
