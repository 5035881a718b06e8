"""PSP, parameter superposition (Cheung et al. 2019), as the official ``PSPRotation`` (SPEC 1.10).

Every fully connected layer computes ``y = W (C_t x)``: a fixed random context ``C_t`` per task
rotates the layer's input, and the one ``W`` is trained on every task (``train_weight_tasks =
-1``, ``xavier_normal`` init). The context is not trained:

* ``"orthogonal"`` (default): ``C_t`` a Haar-random orthogonal ``[c_in, c_in]`` matrix
  (``scipy.stats.ortho_group`` in the official ``--ortho-group`` runs);
* ``"binary"``: ``C_t = diag(c_t)`` with ``c_t`` random +-1 (PSP's cheaper binary superposition).

Contexts are a pure function of ``(key, task, layer)`` and are regenerated instead of stored. Only
fully connected networks apply (the official code: "only works for 1x1 layers"): the network must
be an :class:`~supsup_jax.models.MLP` (``flatten -> [Dense -> ReLU]* -> Dense``, no bias), whose
forward is written out here so the context multiplies the activations (``B c_in^2`` flops) rather
than the kernel (``c_in^2 c_out``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax.baselines import core
from supsup_jax.models.network import Network

__all__ = ["CONTEXTS", "PSP", "context", "psp_mlp_forward"]

CONTEXTS = ("orthogonal", "binary")


def context(key: jax.Array, task, layer: int, size: int, kind: str) -> jax.Array:
    """Task ``task``'s context of layer ``layer``: float32 ``[size, size]`` (orthogonal) or
    ``[size]`` (binary +-1)."""
    k = jax.random.fold_in(jax.random.fold_in(key, task), layer)
    if kind == "orthogonal":
        return jax.random.orthogonal(k, size, dtype=jnp.float32)
    if kind == "binary":
        return jax.random.rademacher(k, (size,), jnp.float32)
    raise ValueError(f"unknown PSP context {kind!r}; choose one of {CONTEXTS}")


def psp_mlp_forward(kernels, contexts, x: jax.Array) -> jax.Array:
    """``y_l = W_l (C_l h_{l-1})``, ReLU between layers, no bias.

    Args:
      kernels: list of float ``[c_in, c_out]`` Flax kernels (``h @ K`` is ``W h``).
      contexts: list of ``[c_in, c_in]`` orthogonal matrices or ``[c_in]`` sign vectors.
      x: float ``[B, ...]``, flattened to ``[B, c_in]``.

    Returns:
      logits ``[B, c_out of the last kernel]``.
    """
    h = x.reshape(x.shape[0], -1)
    for i, (k, c) in enumerate(zip(kernels, contexts, strict=True)):
        h = h * c[None, :] if c.ndim == 1 else h @ c.T  # row form of C h
        h = h @ k
        if i < len(kernels) - 1:
            h = jax.nn.relu(h)
    return h


class PSP(core.Method):
    """State ``{"weights": {path: W}}``; task ``t`` reads the contexts ``context(key, t, l)``."""

    name = "psp"

    def __init__(self, network: Network, num_tasks: int, *, kind: str = "orthogonal",
                 key: jax.Array | None = None):
        super().__init__(network, num_tasks)
        if kind not in CONTEXTS:
            raise ValueError(f"unknown PSP context {kind!r}; choose one of {CONTEXTS}")
        paths = self.flat.paths
        layers = [f"layers/{i}/kernel" for i in range(len(paths))]
        shapes = [np.shape(w) for w in jax.tree.leaves(network.params)]
        if (paths != layers or any(len(s) != 2 for s in shapes)
                or jax.tree.leaves(network.batch_stats)):
            raise ValueError("PSP needs a fully connected network without bias or BN (an MLP: "
                             f"fc1024 or lenet300_100); this one has parameters {paths}")
        self.kind = kind
        self.key = jax.random.key(0) if key is None else key
        self.sizes = [s[0] for s in shapes]
        self._cache: dict[int, list[jax.Array]] = {}
        # Jitted: an orthogonal context is a QR decomposition, slow op by op.
        self._contexts = jax.jit(lambda t: [context(self.key, t, i, n, self.kind)
                                            for i, n in enumerate(self.sizes)])

    def trains_shared(self, t):
        return True

    def contexts(self, t) -> list[jax.Array]:
        """Task ``t``'s contexts, one per layer (``t`` may be traced)."""
        if isinstance(t, jax.core.Tracer):
            return self._contexts(t)
        t = int(t)
        if t not in self._cache:  # a few tasks' contexts, so evaluation rows reuse them
            if len(self._cache) >= 16:
                self._cache.pop(next(iter(self._cache)))
            self._cache[t] = self._contexts(jnp.int32(t))
        return self._cache[t]

    def init(self, key):
        del key
        return {"weights": self.flat.flatten(self.network.params)}

    def train_vars(self, state, t):
        return {"weights": state["weights"]}

    def fixed_vars(self, state, t):
        return {"contexts": self.contexts(t)}

    def learning_rates(self, t):
        return {"weights": "weight_lr"}

    def finish(self, state, trained, t):
        return {"weights": trained["weights"]}

    def eval_vars(self, state, t):
        self.check_task(t)
        return {"weights": state["weights"], "contexts": self.contexts(t)}

    def logits(self, vars, batch_stats, x, train):
        kernels = [vars["weights"][p] for p in self.flat.paths]
        return psp_mlp_forward(kernels, vars["contexts"], x), batch_stats

    def params(self, vars):
        raise TypeError("PSP's contexts act on activations; use logits(), not params()")

    def stored_bytes(self, state, learned):
        # The shared W, amortised; contexts regenerate from the seed.
        return core.nbytes(state["weights"])
