"""BatchE (BatchEnsemble, Wen et al. 2020) as the official ``VectorizedBatchEnsembles`` (SPEC 1.10).

Every weight layer computes ``out = s_t * layer(x * r_t, W)``: per-task fast weights ``r_t``
(one per input channel, the official ``t``) and ``s_t`` (one per output channel) on a shared
``W``. Since the layer is linear this is the layer with the rank-one-modulated kernel

    ``W_t = W * (r_t s_t^T)``   (broadcast over the kernel's spatial axes),

which is how it is computed here, so any network's kernels can carry fast weights. ``r``, ``s``
start as random +-1 signs. ``W`` and the task-0 fast weights are trained on task 0 at
``weight_lr`` (``train_weight_tasks = 1``); later tasks train only their own ``r_t, s_t`` at
``lr``, so an earlier task never changes once learned. With ``rand_w`` (``train_weight_tasks =
0``) ``W`` stays at its random initialisation (PyTorch's default init in the official Rand W runs).

Task inference (paper Fig. 5 right, the non-vectorised ``BatchEnsembles``): superpose the learned
tasks' rank-one matrices with weights ``alpha``, ``W * sum_i alpha_i r_i s_i^T``, and take
:func:`one_shot`, the arg-min of the objective's gradient w.r.t. ``alpha`` at ``alpha = 1/k``
(Eq. 4, with :mod:`supsup_jax.inference`'s H and G objectives).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import inference, masking, scenarios
from supsup_jax.baselines import core
from supsup_jax.models.network import Network

__all__ = ["BatchE", "evaluate_unknown_task", "one_shot", "rank_one", "shortlist",
           "superposed_factors"]


def rank_one(r: jax.Array, s: jax.Array) -> jax.Array:
    """``r s^T``: float ``[c_in, c_out]`` from ``r [c_in]`` and ``s [c_out]``."""
    return r[:, None] * s[None, :]


def superposed_factors(alpha: jax.Array, r: jax.Array, s: jax.Array) -> jax.Array:
    """``sum_i alpha_i r_i s_i^T``: float ``[c_in, c_out]`` from ``alpha [T]``, ``r [T, c_in]``,
    ``s [T, c_out]``."""
    return jnp.einsum("t,ti,to->io", alpha, r, s)


class BatchE(core.Method):
    """State ``{"weights": {path: W}, "r": {kernel: [T, c_in]}, "s": {kernel: [T, c_out]}}``.

    Every kernel of rank >= 2 (dense ``(c_in, c_out)``, conv ``(k_h, k_w, c_in, c_out)``) gets
    fast weights; other parameters are shared as they are.
    """

    def __init__(self, network: Network, num_tasks: int, *, rand_w: bool = False):
        super().__init__(network, num_tasks)
        self.rand_w = rand_w
        self.name = "batche_rand_w" if rand_w else "batche"
        self.kernels = sorted(masking.masked_leaves(network.params))

    def trains_shared(self, t):
        return not self.rand_w and t == 0

    def init(self, key):
        weights = self.flat.flatten(self.network.params)
        r, s = {}, {}
        for i, p in enumerate(self.kernels):
            c_in, c_out = np.shape(weights[p])[-2:]
            kr, ks = jax.random.split(jax.random.fold_in(key, i))
            r[p] = jax.random.rademacher(kr, (self.num_tasks, c_in), jnp.float32)
            s[p] = jax.random.rademacher(ks, (self.num_tasks, c_out), jnp.float32)
        return {"weights": weights, "r": r, "s": s}

    def fast(self, state, t) -> dict:
        """Task ``t``'s fast weights ``{"r": {kernel: [c_in]}, "s": {kernel: [c_out]}}`` (``t``
        may be traced)."""
        return {"r": core.take(state["r"], t), "s": core.take(state["s"], t)}

    def train_vars(self, state, t):
        fast = self.fast(state, t)
        return {"weights": state["weights"], "fast": fast} if self.trains_shared(t) else {
            "fast": fast}

    def fixed_vars(self, state, t):
        return {} if self.trains_shared(t) else {"weights": state["weights"]}

    def learning_rates(self, t):
        if self.trains_shared(t):  # the official task 0: W and fast weights at train_weight_lr
            return {"weights": "weight_lr", "fast": "weight_lr"}
        return {"fast": "lr"}

    def finish(self, state, trained, t):
        fast = trained["fast"]
        return {"weights": trained.get("weights", state["weights"]),
                "r": core.put(state["r"], t, fast["r"]),
                "s": core.put(state["s"], t, fast["s"])}

    def eval_vars(self, state, t):
        self.check_task(t)
        return {"weights": state["weights"], "fast": self.fast(state, t)}

    def modulated(self, weights, factors) -> Any:
        """The network parameters with each kernel ``W`` replaced by ``W * factors[path]``
        (``factors[path]``: float ``[c_in, c_out]``, broadcast over spatial axes)."""
        flat = dict(weights)
        for p in self.kernels:
            w = weights[p]
            f = factors[p].astype(w.dtype)
            flat[p] = w * f.reshape((1,) * (w.ndim - 2) + f.shape)
        return self.flat.unflatten(flat)

    def params(self, vars):
        fast = vars["fast"]
        return self.modulated(vars["weights"], {p: rank_one(fast["r"][p], fast["s"][p])
                                                for p in self.kernels})

    def superposed_params(self, state, alpha: jax.Array):
        """Parameters with kernels ``W * sum_i alpha_i r_i s_i^T``; ``alpha`` float ``[T]``."""
        return self.modulated(state["weights"], {
            p: superposed_factors(alpha, state["r"][p], state["s"][p]) for p in self.kernels})

    def stored_bytes(self, state, learned):
        fast = core.nbytes(jax.tree.map(lambda a: a[0], (state["r"], state["s"])))
        return (0 if self.rand_w else core.nbytes(state["weights"])) + learned * fast


def _uniform_gradient(method: BatchE, state, num_learned, x, weights, objective):
    learned = jnp.arange(method.num_tasks) < num_learned
    alpha0 = learned.astype(jnp.float32) / jnp.maximum(jnp.sum(learned), 1).astype(jnp.float32)

    def f(alpha):
        logits, _ = method.network.apply(method.superposed_params(state, alpha),
                                         method.network.batch_stats, x,
                                         method.network.has_bn)
        return objective(logits, weights)

    return learned, jax.grad(f)(alpha0)


def one_shot(method: BatchE, state, num_learned, x: jax.Array, weights: jax.Array,
             objective: inference.Objective) -> jax.Array:
    """One-Shot over BatchE's rank-one factors: ``argmin_i d objective / d alpha_i`` at
    ``alpha = 1/k`` on the ``k = num_learned`` learned tasks (paper Eq. 4, Fig. 5 right).

    Args:
      num_learned: int (or traced int32) count of learned tasks, the candidates.
      x: float ``[B, *input_shape]``; weights: float ``[B]``, the examples that decide
        (:func:`inference.first_m_weights`); objective: from :func:`inference.make_objective`.

    Returns:
      int32 scalar task index in ``[0, num_learned)``. Networks with BN run on batch statistics
      (as SupSup's inference, since no task's statistics apply to a superposition).
    """
    learned, g = _uniform_gradient(method, state, num_learned, x, weights, objective)
    return inference.lowest(learned, g)


def shortlist(method: BatchE, state, stats, num_learned, x: jax.Array, weights: jax.Array,
              objective: inference.Objective, size: int,
              rerank: inference.Objective = inference.entropy) -> jax.Array:
    """:func:`supsup_jax.inference.shortlist` over BatchE's rank-one factors: :func:`one_shot`'s
    ``size`` lowest gradients, re-ranked by ``rerank`` of ``x`` under each candidate's own
    fast weights (and its BN statistics ``stats``, stacked on the task axis; ``{}`` without
    BN); the lowest wins. Arguments as :func:`one_shot`; ``size``: a static int >= 1.

    Returns:
      int32 scalar task index in ``[0, num_learned)``, or :data:`inference.NO_TASK` if the
      gradient carries no information (unless every learned task is shortlisted) or a rerank
      value is not finite.
    """
    learned, g = _uniform_gradient(method, state, num_learned, x, weights, objective)
    has_bn = method.network.has_bn

    def value(t):
        logits, _ = method.logits({"weights": state["weights"], "fast": method.fast(state, t)},
                                  core.take(stats, t) if has_bn else method.network.batch_stats,
                                  x, False)
        return rerank(logits, weights)

    return inference.pick_from_shortlist(learned, g, size, value)


@functools.partial(jax.jit, static_argnames=("trainer", "how"))
def _evaluate_batches(state, stats, images, labels, true_task, num_learned, *, trainer, how):
    method = trainer.method
    objective = inference.make_objective(how.objective, how.num_real)

    def one(batch):
        x_u8, y = batch
        valid = y >= 0
        x = trainer.preprocess(x_u8, None, False)
        xd, w = inference.deciding_images(method.network, x, how.m, valid)
        task = (one_shot(method, state, num_learned, xd, w, objective) if how.method == "one_shot"
                else shortlist(method, state, stats, num_learned, xd, w, objective,
                               how.shortlist, inference.make_objective(how.rerank,
                                                                       how.num_real)))
        task_stats = core.take(stats, task) if method.network.has_bn else method.network.batch_stats
        logits, _ = method.logits({"weights": state["weights"], "fast": method.fast(state, task)},
                                  task_stats, x, False)
        right = task == true_task
        correct = (jnp.argmax(logits, -1) == y) & valid & right
        no_task = jnp.sum(valid) * (task == inference.NO_TASK).astype(jnp.int32)
        return jnp.sum(correct), jnp.sum(valid) * right.astype(jnp.int32), no_task

    correct, task_correct, no_task = jax.lax.map(one, (images, labels))
    return jnp.sum(correct), jnp.sum(task_correct), jnp.sum(no_task)


def evaluate_unknown_task(trainer: core.MethodTrainer, state, stats, images: np.ndarray,
                          labels: np.ndarray, true_task: int, num_learned: int, how,
                          key: jax.Array, *, batch_size: int = 128) -> dict[str, float]:
    """GNu accuracy of one task's test set with BatchE One-Shot (unshared labels: a batch whose
    inferred task is wrong scores 0), as :func:`supsup_jax.scenarios.evaluate_unknown_task`.

    Args:
      trainer: a :class:`~supsup_jax.baselines.core.MethodTrainer` of a :class:`BatchE`.
      state: its state; stats: the stacked per-task BN statistics (``{}`` without BN).
      images: uint8 ``(N, *input_shape)``, shuffled by ``key`` into batches of ``batch_size``
        whose first ``how.m`` images decide; labels: int ``(N,)``.
      how: a :class:`~supsup_jax.scenarios.TaskInference` with ``method="one_shot"`` or
        ``"shortlist"``.

    Returns:
      ``{"accuracy": ..., "task_accuracy": ...}``.
    """
    if not isinstance(trainer.method, BatchE):
        raise TypeError(f"BatchE task inference needs a BatchE method, got {trainer.method.name}")
    if how.method not in ("one_shot", "shortlist") or how.per_example:
        raise ValueError("BatchE task inference implements One-Shot and the shortlist per "
                         "batch only; got "
                         f"method={how.method!r}, per_example={how.per_example}")
    if not 0 <= true_task < num_learned <= trainer.method.num_tasks:
        raise IndexError(f"true task {true_task} is outside the {num_learned} learned tasks")
    if how.m > batch_size:
        raise ValueError(f"m={how.m} images cannot decide a batch of {batch_size}")
    trainer.check_data(images, labels)
    n = len(labels)
    x, y = scenarios.shuffled_batches(images, labels, key, batch_size)
    correct, task_correct, no_task = _evaluate_batches(
        state, stats, x, y, jnp.int32(true_task), jnp.int32(num_learned), trainer=trainer,
        how=how)
    scenarios.raise_if_no_signal(int(no_task), n, how)
    return {"accuracy": float(correct) / n, "task_accuracy": float(task_correct) / n}
