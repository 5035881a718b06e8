"""HopSupSup: neuron masks stored in a Hopfield network, recovered at test time (SPEC 1.9).

Paper section 3.7 (Eq. 5-6) and the official ``FastHopMaskBN`` / ``hopfield_recovery``:

1. **Training** (scenario GG, per task): BNNet's neuron masks (``models.bnnet``) are threshold
   masks ``M = 1[score >= 0]`` of per-task scores initialised to **zeros** (all neurons on), trained
   with the straight-through estimator by :class:`~supsup_jax.train.Trainer` (SGD lr 0.1,
   momentum 0.9, weight decay 1e-4, batch 128, one epoch). Labels keep their global values 0-9
   and the output has 10 units.
2. **Storage**: after a task is trained its mask of every masked layer is stored, as ``2 M - 1``,
   in that layer's Hopfield network (``supsup_jax.hopfield``; Storkey or Hebbian rule).
3. **Recovery** (task not given), two methods (``METHODS``):

   * ``"attractor"`` (default): task inference in the SupSup spirit, over candidates taken from
     the Hopfield networks alone. Each layer's network gives its stable states
     (:func:`hopfield.attractors`: recall dynamics from 256 random +-1 starts, fixed points,
     deduplicated, spurious states dropped by energy; a stored pattern comes with its negation,
     which has the same energy). The candidates are every combination of one state per layer
     (100 for 5 tasks and 2 layers). Then successive halving over the test batches, like
     ``inference.binary``: each batch's mean prediction entropy ``H`` is added to every
     surviving candidate's total, and the half with the lowest mean ``H`` so far survives
     (``ceil(k/2)``, ties by energy order), until one is left (7 batches for 100 candidates).
     The stored masks are never read: they only measure the Hamming distance.
   * ``"anneal"`` (the paper's procedure): the scores start at ``mean_j(2 M_j - 1)`` over the
     stored masks; for each test batch ``b = 1..N`` one SGD step (lr 500, momentum 0.9, weight
     decay 1e-4) on ``(1 - b/N) H(f(x_b; s)) + gamma (b/N) sum_layers E(s)`` with
     ``s = 2 STE(score >= 0) - 1``, ``H`` the mean prediction entropy and
     ``E(s) = -1/2 s^T W s`` (gamma = 1.5e-3, test batch 64). The objective anneals from pure
     entropy to pure energy.

   The whole test set is then evaluated with the recovered mask.

``"attractor"`` is the default because it recovers every task exactly where ``"anneal"`` does
not (measured in ``experiments/RESULTS.md``, HopSupSup). The whole protocol for a config
(``experiments/configs/hopsupsup.py``) is :func:`supsup_jax.runner.hopsupsup.run`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from supsup_jax import hopfield, inference, masking
from supsup_jax.evaluate import count_correct
from supsup_jax.masks import threshold_mask
from supsup_jax.models.bnnet import neuron_mask_filter
from supsup_jax.models.network import Network
from supsup_jax.steps import Preprocess, make_optimizer

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "HopfieldRecovery",
    "RecoveryResult",
    "hamming",
    "initial_scores",
    "steps_to_recover",
]

Masks = dict[str, jax.Array]

METHODS = ("attractor", "anneal")
DEFAULT_METHOD = "attractor"


class RecoveryResult(NamedTuple):
    """One recovery pass over a test set.

    Attributes:
      masks: ``{path: bool (d,)}`` the recovered neuron masks.
      hamming: int ``(N + 1,)`` Hamming distance (summed over layers) of the mask to the true one,
        before the first step (index 0) and after each of the ``N`` steps; None without a truth.
      energy: float ``(N,)`` the summed Hopfield energy at each step (before its update).
      entropy: float ``(N,)`` the batch's mean prediction entropy at each step.

    For ``"attractor"`` a step is a test batch of the successive halving, the mask after a step
    is the leading candidate (lowest mean ``H`` so far; before the first step the lowest-energy
    candidate), ``energy`` and ``entropy`` are the leader's (``entropy`` its mean over the
    batches so far), and ``num_candidates`` the number of candidates at the start.
    """

    masks: Masks
    hamming: np.ndarray | None
    energy: np.ndarray
    entropy: np.ndarray
    num_candidates: int | None = None


def initial_scores(stored: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """``mean_j (2 M_j - 1)`` per layer: the official start of recovery (SPEC 1.9 step 1).

    Args:
      stored: ``{path: (T, d)}`` the stacked stored masks (bool or {0, 1}), T >= 1.

    Returns:
      ``{path: float32 (d,)}``; its threshold mask is the neuron-wise majority (ties: on).
    """
    out = {}
    for p, m in stored.items():
        if m.ndim != 2 or m.shape[0] < 1:
            raise ValueError(f"stored masks for {p!r} must be (T >= 1, d), got {m.shape}")
        out[p] = jnp.mean(hopfield.mask_to_pattern(m), axis=0)
    return out


def hamming(a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
    """Number of neurons where the masks ``a`` and ``b`` (``{path: (d,)}``) differ, all layers."""
    if set(a) != set(b):
        raise ValueError(f"masks of different layers: {sorted(a)} vs {sorted(b)}")
    return int(sum(np.count_nonzero(np.asarray(a[p], bool) != np.asarray(b[p], bool)) for p in a))


def steps_to_recover(distances) -> int | None:
    """The first step after which the Hamming distance is 0 and stays 0; None if it ends above 0.

    ``distances[0]`` is the distance before any step, so 0 means the start was already exact.
    """
    d = np.asarray(distances)
    if d.size == 0 or d[-1] != 0:
        return None
    nonzero = np.flatnonzero(d)
    return 0 if nonzero.size == 0 else int(nonzero[-1]) + 1


def _batches(n: int, batch_size: int, key: jax.Array | None) -> list[np.ndarray]:
    order = np.arange(n) if key is None else np.asarray(jax.random.permutation(key, n))
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


class HopfieldRecovery:
    """Hopfield storage and test-time mask recovery for one network (SPEC 1.9).

    Args:
      network: the model (BNNet), frozen weights in ``network.params``.
      preprocess: ``preprocess(uint8 images, key, train) -> float``, from
        ``train.make_preprocess``.
      rule: the Hopfield learning rule, a key of ``hopfield.RULES``.
      method: the recovery, ``"attractor"`` (default) or ``"anneal"`` (the paper's).
      num_starts, energy_ratio, attractor_seed: ``"attractor"``: :func:`hopfield.attractors`'
        random starts (from ``jax.random.key(attractor_seed)``) and energy cut.
      gamma: weight of the energy term (official ``--gamma`` 1.5e-3).
      lr, momentum, weight_decay: the SGD of the recovery (official 500, 0.9, 1e-4).
      batch_size: test batch size (official 64); one recovery step per batch.
      (gamma, lr, momentum and weight_decay are ``"anneal"``'s only.)
      is_masked: which parameter leaves are neuron masks.
    """

    def __init__(self, network: Network, preprocess: Preprocess, *,
                 rule: str = hopfield.DEFAULT_RULE, method: str = DEFAULT_METHOD,
                 num_starts: int = 256, energy_ratio: float = 0.95, attractor_seed: int = 0,
                 gamma: float = 1.5e-3, lr: float = 500.0,
                 momentum: float = 0.9, weight_decay: float = 1e-4, batch_size: int = 64,
                 is_masked: masking.PathFilter = neuron_mask_filter):
        if rule not in hopfield.RULES:
            raise ValueError(f"unknown Hopfield rule {rule!r}; choose one of "
                             f"{sorted(hopfield.RULES)}")
        if method not in METHODS:
            raise ValueError(f"unknown recovery method {method!r}; choose one of {METHODS}")
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (batch statistics), got {batch_size}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.network = network
        self.preprocess = preprocess
        self.rule = rule
        self.method = method
        self.num_starts = int(num_starts)
        self.energy_ratio = float(energy_ratio)
        self.attractor_seed = int(attractor_seed)
        self.gamma = float(gamma)
        self.batch_size = int(batch_size)
        self.weights = masking.masked_leaves(network.params, is_masked)
        for p, w in self.weights.items():
            if w.ndim != 1:
                raise ValueError(f"neuron mask {p!r} must be 1-D, got shape {w.shape}")
        self.optimizer = make_optimizer("sgd", lr, weight_decay=weight_decay,
                                                  momentum=momentum)
        self._step = jax.jit(self._step_impl)
        self._correct = jax.jit(self._correct_impl)
        self._entropies = jax.jit(self._entropies_impl)

    # ------------------------------------------------------------------------------ storage
    def init_memory(self) -> dict[str, jax.Array]:
        """``{path: zeros (d, d)}``: one empty Hopfield network per masked layer."""
        return {p: hopfield.init(w.shape[0], w.dtype) for p, w in self.weights.items()}

    def store(self, memory: Mapping[str, jax.Array], masks: Mapping[str, Any]) -> dict:
        """Store one task's masks ``{path: (d,)}`` (bool or {0, 1}) as +-1 patterns."""
        self._check_masks(masks)
        return {p: hopfield.store(memory[p], hopfield.mask_to_pattern(jnp.asarray(masks[p])),
                                  self.rule)
                for p in self.weights}

    # ----------------------------------------------------------------------------- recovery
    def _objective(self, scores, params, memory, x, frac):
        m = {p: threshold_mask(s) for p, s in scores.items()}
        logits, _ = self.network.apply(masking.mask_params(params, m), {}, x, False)
        h = inference.entropy(logits, jnp.ones(logits.shape[:1], logits.dtype))
        e = sum(hopfield.energy(memory[p], 2 * m[p] - 1) for p in sorted(m))
        return (1 - frac) * h + self.gamma * frac * e, (h, e)

    def _step_impl(self, params, memory, scores, opt_state, images, frac):
        x = self.preprocess(images, None, False)
        (_, (h, e)), g = jax.value_and_grad(self._objective, has_aux=True)(
            scores, params, memory, x, frac)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = self.optimizer.update(g, opt_state, scores)
        return optax.apply_updates(scores, updates), opt_state, h, e

    def candidates(self, memory: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        """``{path: float (k_p, d) of +-1}``: each layer's attractors, from its network alone."""
        self._check_memory(memory)
        key = jax.random.key(self.attractor_seed)
        return {p: hopfield.attractors(memory[p], jax.random.fold_in(key, i), self.num_starts,
                                       energy_ratio=self.energy_ratio)
                for i, p in enumerate(sorted(self.weights))}

    def recover(self, memory: Mapping[str, jax.Array], stored: Mapping[str, jax.Array] | None,
                images, key: jax.Array | None = None,
                true_masks: Mapping[str, Any] | None = None, *,
                candidates: Mapping[str, np.ndarray] | None = None) -> RecoveryResult:
        """Recover the mask of the (unknown) task of ``images`` with ``self.method``.

        Args:
          memory: ``{path: (d, d)}`` the Hopfield networks.
          stored: ``{path: (T, d)}`` the stacked stored masks, for ``"anneal"``'s initial scores
            only; ``"attractor"`` ignores it (None is fine).
          images: uint8 ``(n, *input_shape)`` the test images of the (unknown) task; batches of
            ``batch_size`` in the order of ``jax.random.permutation(key, n)`` (in order without a
            key); the last batch may be smaller.
          true_masks: ``{path: (d,)}`` to report the Hamming distance after every step.
          candidates: ``"attractor"``: the output of :meth:`candidates` for ``memory``, to reuse
            it across tasks (computed here when None).

        Returns:
          A :class:`RecoveryResult`.
        """
        params = self.network.params
        self._check_memory(memory)
        self._check_images(images)
        if true_masks is not None:
            self._check_masks(true_masks)
        batches = _batches(len(images), self.batch_size, key)
        if len(batches[-1]) < 2:  # one example: batch statistics undefined
            batches = batches[:-1] if len(batches) > 1 else batches
        truth = None if true_masks is None else {p: np.asarray(m, bool)
                                                 for p, m in true_masks.items()}
        images = np.asarray(images)
        if self.method == "attractor":
            if candidates is None:
                candidates = self.candidates(memory)
            return self._recover_attractor(params, memory, candidates, images, batches, truth)
        if stored is None or set(stored) != set(self.weights):
            raise ValueError(f"'anneal' needs the stored masks of {sorted(self.weights)} for its "
                             f"start, got {None if stored is None else sorted(stored)}")
        return self._recover_anneal(params, memory, stored, images, batches, truth)

    def _recover_anneal(self, params, memory, stored, images, batches, truth) -> RecoveryResult:
        """One annealed pass over the batches (SPEC 1.9 steps 1-3)."""
        scores = initial_scores(stored)
        opt_state = self.optimizer.init(scores)
        n = len(batches)
        dist = [] if truth is None else [hamming(self._masks(scores), truth)]
        hs, es = [], []
        for b, idx in enumerate(batches, start=1):
            scores, opt_state, h, e = self._step(params, memory, scores, opt_state,
                                                 jnp.asarray(images[idx]),
                                                 jnp.float32(b / n))
            hs.append(h)
            es.append(e)
            if truth is not None:
                dist.append(hamming(self._masks(scores), truth))
        return RecoveryResult(self._masks(scores), None if truth is None else np.array(dist),
                              np.asarray(jnp.stack(es)), np.asarray(jnp.stack(hs)))

    def _entropies_impl(self, params, masks, images):
        x = self.preprocess(images, None, False)

        def one(m):
            logits, _ = self.network.apply(masking.mask_params(params, m), {}, x, False)
            return inference.entropy(logits, jnp.ones(logits.shape[:1], logits.dtype))

        return jax.lax.map(one, masks)

    def _recover_attractor(self, params, memory, candidates, images, batches,
                           truth) -> RecoveryResult:
        """Successive halving by mean entropy over every combination of per-layer attractors."""
        paths = sorted(self.weights)
        for p in paths:
            c = np.asarray(candidates[p])
            if c.ndim != 2 or c.shape[1:] != tuple(self.weights[p].shape) or len(c) < 1:
                raise ValueError(f"candidates for {p!r} must be (k >= 1, "
                                 f"{self.weights[p].shape[0]}), got {c.shape}")
        # Combinations in order of summed energy (each layer's list is sorted by energy).
        layer_e = [np.asarray(hopfield.energy(memory[p], jnp.asarray(candidates[p])))
                   for p in paths]
        grid = np.stack(np.meshgrid(*[np.arange(len(e)) for e in layer_e], indexing="ij"),
                        -1).reshape(-1, len(paths))
        total_e = sum(layer_e[k][grid[:, k]] for k in range(len(paths)))
        grid = grid[np.argsort(total_e, kind="stable")]
        total_e = np.sort(total_e, kind="stable")
        masks = {p: np.asarray(candidates[p])[grid[:, k]] >= 0 for k, p in enumerate(paths)}

        def mask_of(i):
            return {p: masks[p][i] for p in paths}

        alive = np.arange(len(grid))
        total_h = np.zeros(len(grid))
        dist = [] if truth is None else [hamming(mask_of(0), truth)]
        hs, es = [], []
        for b, idx in enumerate(batches, start=1):
            if len(alive) == 1:
                break
            alive = np.sort(alive)  # ties go to the lower energy
            m = {p: jnp.asarray(masks[p][alive], jnp.float32) for p in paths}
            total_h[alive] += np.asarray(self._entropies(params, m, jnp.asarray(images[idx])))
            alive = alive[np.argsort(total_h[alive], kind="stable")][:-(-len(alive) // 2)]
            hs.append(total_h[alive[0]] / b)
            es.append(total_e[alive[0]])
            if truth is not None:
                dist.append(hamming(mask_of(alive[0]), truth))
        return RecoveryResult(mask_of(alive[0]), None if truth is None else np.array(dist),
                              np.asarray(es, np.float32), np.asarray(hs, np.float32),
                              len(grid))

    def _masks(self, scores) -> Masks:
        return {p: np.asarray(s >= 0) for p, s in scores.items()}

    # --------------------------------------------------------------------------- evaluation
    def _correct_impl(self, params, masks, images, labels):
        m = {p: v.astype(jnp.float32) for p, v in masks.items()}
        logits, _ = self.network.apply(masking.mask_params(params, m), {},
                                       self.preprocess(images, None, False), False)
        return count_correct(logits, labels)

    def accuracy(self, masks: Mapping[str, Any], images, labels,
                 key: jax.Array | None = None) -> float:
        """Accuracy of ``f(x; mask)``, argmax over all outputs, in batches of ``batch_size``.

        The batches are those of :meth:`recover` for the same ``key``. Each batch is normalised
        with its own statistics, so batches are never padded (which would change them).
        """
        params = self.network.params
        self._check_masks(masks)
        self._check_images(images)
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be int ({len(images)},), got {labels.dtype} "
                             f"{labels.shape}")
        masks = {p: jnp.asarray(m) for p, m in masks.items()}
        images = np.asarray(images)
        correct = 0
        for idx in _batches(len(images), self.batch_size, key):
            correct += self._correct(params, masks, jnp.asarray(images[idx]),
                                     jnp.asarray(labels[idx], jnp.int32))
        return float(correct) / len(images)

    # ----------------------------------------------------------------------------- checking
    def _check_memory(self, memory) -> None:
        if set(memory) != set(self.weights):
            raise ValueError(f"memory covers {sorted(memory)}; the masked layers are "
                             f"{sorted(self.weights)}")

    def _check_masks(self, masks) -> None:
        if set(masks) != set(self.weights):
            raise ValueError(f"masks cover {sorted(masks)}; the masked layers are "
                             f"{sorted(self.weights)}")
        for p, w in self.weights.items():
            if tuple(np.shape(masks[p])) != tuple(w.shape):
                raise ValueError(f"mask {p!r} has shape {np.shape(masks[p])}, expected {w.shape}")

    def _check_images(self, images) -> None:
        if tuple(images.shape[1:]) != self.network.input_shape:
            raise ValueError(f"images have example shape {tuple(images.shape[1:])}; the network "
                             f"expects {self.network.input_shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if len(images) < 2:
            raise ValueError("recovery and evaluation need at least 2 images (batch statistics)")
