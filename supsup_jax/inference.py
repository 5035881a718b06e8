"""Task inference from the gradient of an objective w.r.t. the superposition weights alpha.

With every learned mask superposed, ``f(x; W * sum_i alpha_i M_i)`` (paper Eq. 2), the task of
``x`` is found from ``dObjective/dalpha`` (SPEC 1.6):

* :func:`one_shot`: one gradient at uniform ``alpha = 1/k``, task ``argmin_i g_i`` over the
  *learned* tasks only (Eq. 4; the official code also ranks unlearned slots, SPEC 1.11 item 1);
* :func:`binary`: halving, keeping the ``ceil(n/2)`` survivors with the smallest gradient (ties
  by index) until exactly one task remains: ``ceil(log2 k)`` gradients, always one learned task
  (the official loop can end with a stale or undefined answer, SPEC 1.11 item 2);
* :func:`gradient_descent`: Eq. 3, ``alpha <- alpha - eta * grad``, until ``max softmax(alpha)``
  over the learned tasks exceeds a threshold or a step budget is spent;
* :func:`exhaustive`: a score (H, or S) under every mask on its own (``jax.lax.map`` with
  ``batch_size`` vmapping chunks of tasks), lowest wins: the baseline;
* :func:`shortlist`: One-Shot's gradient names the ``size`` likeliest tasks and an objective
  under each of their masks alone picks one: one gradient plus ``size`` forward passes, for
  tasks alike enough that the gradient's first place is unreliable (rotations). Measured best
  (RESULTS.md, issue 14): the first layer's gradient terms only (``alpha_gradient``'s
  ``layers``; the deeper layers' terms point away from the true task), 16 tasks, re-ranked
  by S.

Objectives: :func:`entropy` (H, over all outputs, s-neurons included), :func:`g_objective`
(G: ``logsumexp`` with the gradient stopped on the real neurons, SPEC 1.6 / paper Lemma 1) and
:func:`superfluous_mass` (S: the log-probability on the superfluous neurons, not in the paper).
Each takes per-example weights, so "the first m images decide" (m=1 or the full batch, paper
section 4.2) and padding are the same mechanism.

Networks with BatchNorm are run on batch statistics during inference (the official adaptors
call ``model.train()``), since no task's running statistics apply to a superposition.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from supsup_jax import bank as bank_lib
from supsup_jax import masking
from supsup_jax.errors import NoTaskSignalError
from supsup_jax.models.network import Network

__all__ = [
    "METHODS",
    "NO_TASK",
    "OBJECTIVES",
    "RERANKS",
    "alpha_gradient",
    "binary",
    "check_inputs",
    "check_shortlist_size",
    "deciding_images",
    "entropy",
    "exhaustive",
    "first_m_weights",
    "g_objective",
    "gradient_descent",
    "halve",
    "lowest",
    "lowest_learned",
    "make_objective",
    "masked_logits",
    "one_shot",
    "pick_from_shortlist",
    "shortlist",
    "superfluous_mass",
    "superposed_logits",
    "task_logits",
    "task_values",
    "uniform_alpha",
]

Objective = Callable[[jax.Array, jax.Array], jax.Array]
# alpha_gradient's signature: (network, params, bank, alpha, x, weights, objective,
# superposed=None, grad_rows=None) -> (value, float32 [capacity]).
GradientFn = Callable[..., tuple[jax.Array, jax.Array]]


def _weighted_mean(values, weights):
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def entropy(logits: jax.Array, weights: jax.Array) -> jax.Array:
    """H: weighted mean over examples of ``-sum_c p_c log p_c``, softmax over ALL outputs.

    Args:
      logits: float ``[B, C]``; weights: float ``[B]`` (1 for the examples that decide).
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    h = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return _weighted_mean(h, weights)


def g_objective(logits: jax.Array, weights: jax.Array, num_real: int) -> jax.Array:
    """G: weighted mean of ``logsumexp(z')``, ``z' = stop_grad(z * m) + z * (1 - m)``.

    ``m`` marks the ``num_real`` real neurons (the first outputs): the value includes every logit,
    but the gradient flows only through the superfluous neurons (SPEC 1.6).
    """
    real = (jnp.arange(logits.shape[-1]) < num_real)[None, :]
    z = jnp.where(real, jax.lax.stop_gradient(logits), logits)
    return _weighted_mean(jax.nn.logsumexp(z, axis=-1), weights)


def superfluous_mass(logits: jax.Array, weights: jax.Array, num_real: int) -> jax.Array:
    """S: weighted mean of ``log sum_{c >= num_real} softmax(z)_c``, the log-probability the
    network puts on the superfluous neurons.

    G's exact counterpart: G's gradient lowers the s-neurons' logits (Lemma 1), and a mask
    trained on the input's task puts almost no mass there. Scale-free, so its value under
    different masks compares (the rerank score of :func:`shortlist`); needs ``logits`` wider
    than ``num_real``.
    """
    if logits.shape[-1] <= num_real:
        raise ValueError(f"the S objective needs superfluous output neurons: {logits.shape[-1]} "
                         f"outputs for {num_real} real classes")
    logp = jax.nn.log_softmax(logits, axis=-1)
    return _weighted_mean(jax.nn.logsumexp(logp[..., num_real:], axis=-1), weights)


OBJECTIVES = ("h", "g", "s")
RERANKS = ("h", "s")  # objectives whose *value* under each mask alone ranks tasks


def make_objective(name: str, num_real: int | None = None) -> Objective:
    """``"h"`` (entropy), ``"g"`` or ``"s"`` (both need ``num_real``, the number of real
    classes)."""
    if name == "h":
        return entropy
    if name in ("g", "s"):
        if not num_real or num_real < 1:
            raise ValueError(f"the {name.upper()} objective needs num_real, the number of real "
                             "output neurons")
        return functools.partial(g_objective if name == "g" else superfluous_mass,
                                 num_real=num_real)
    raise ValueError(f"unknown objective {name!r}; choose one of {OBJECTIVES}")


def first_m_weights(batch: int, m: int, valid: jax.Array | None = None) -> jax.Array:
    """float ``[batch]``: 1 for the first ``m`` (valid) examples, which decide the task."""
    w = (jnp.arange(batch) < m).astype(jnp.float32)
    return w if valid is None else w * valid.astype(jnp.float32)


def deciding_images(network: Network, x: jax.Array, m: int, valid: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array]:
    """``(x_d, weights)``: the images that decide a batch's task, and :func:`first_m_weights`.

    Rows do not interact without BN, so only the first ``m`` go through the gradient's forward
    and backward pass: the same objective as the whole batch with zero weights, at ``m/B`` of
    its cost. BN networks infer on batch statistics, which every row shapes: the whole batch."""
    if network.has_bn or m >= x.shape[0]:
        return x, first_m_weights(x.shape[0], m, valid)
    return x[:m], first_m_weights(m, m, None if valid is None else valid[:m])


def uniform_alpha(bank: bank_lib.MaskBank, alive: jax.Array | None = None) -> jax.Array:
    """``1/n`` on the ``n`` learned (or ``alive``) slots, 0 elsewhere: float32 ``[capacity]``."""
    alive = bank.learned() if alive is None else alive
    a = alive.astype(jnp.float32)
    return a / jnp.maximum(jnp.sum(a), 1.0)


NO_TASK = -1


def lowest(candidates: jax.Array, values: jax.Array, *, zero_is_no_signal: bool = True
           ) -> jax.Array:
    """int32: the candidate (bool ``[n]``) with the smallest of ``values`` (float ``[n]``; ties
    to the lowest index), or :data:`NO_TASK` when the values carry no information: no
    candidate, a non-finite value, or (``zero_is_no_signal``, for gradients) exactly 0 for every
    one of two or more candidates, as G's gradient is without superfluous neurons. Never a
    plausible task for a meaningless input."""
    count = jnp.sum(candidates)
    finite = jnp.all(jnp.where(candidates, jnp.isfinite(values), True))
    ok = finite & (count > 0)
    if zero_is_no_signal:
        ok &= (count == 1) | jnp.any(candidates & (values != 0))
    best = jnp.argmin(jnp.where(candidates, values, jnp.inf))
    return jnp.where(ok, best, NO_TASK).astype(jnp.int32)


def lowest_learned(bank: bank_lib.MaskBank, values: jax.Array, *,
                   zero_is_no_signal: bool = True) -> jax.Array:
    """int32: the learned slot with the smallest of ``values`` (float ``[capacity]``), or
    :data:`NO_TASK` (see :func:`lowest`)."""
    return lowest(bank.learned(), values, zero_is_no_signal=zero_is_no_signal)


def _check_eager(network: Network, bank: bank_lib.MaskBank, x, weights) -> bool:
    # The checks that need values run only outside jit (returns whether they did); under jit
    # an empty bank or a NaN input gives NO_TASK instead.
    if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
        raise TypeError(f"x must be a float batch (preprocessed, e.g. normalised uint8 images), "
                        f"got {jnp.asarray(x).dtype}")
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((bank, x, weights))):
        return False
    check_inputs(network, bank, x)
    if weights is not None and tuple(jnp.shape(weights)) != (x.shape[0],):
        raise ValueError(f"weights have shape {tuple(jnp.shape(weights))}; the batch has "
                         f"{x.shape[0]} examples")
    return True


def _answer(task: jax.Array, eager: bool) -> jax.Array:
    # Outside jit, no information is an error that says why; under jit it is NO_TASK.
    if eager and int(task) == NO_TASK:
        raise NoTaskSignalError(
            "the objective's gradient (or value) is the same for every learned task, or not "
            "finite: the batch says nothing about its task (the G objective needs superfluous "
            "output neurons, more outputs than classes)")
    return task


def masked_logits(network: Network, params: Any, masks, x) -> jax.Array:
    """``f(x; W * M)`` for a float (e.g. superposed) mask ``{path: shape}``; BN networks run on
    batch statistics, since no task's running statistics apply to a superposition."""
    logits, _ = network.apply(masking.mask_params(params, masks), network.batch_stats, x,
                              network.has_bn)
    return logits


def superposed_logits(network: Network, params: Any, bank: bank_lib.MaskBank, alpha, x,
                      superposed=None, grad_rows=None):
    """``f(x; W * sum_i alpha_i M_i)`` (paper Eq. 2); ``x`` float ``[B, *input_shape]``.
    ``superposed``, ``grad_rows``: as in :func:`supsup_jax.bank.superpose`."""
    return masked_logits(network, params, bank_lib.superpose(alpha, bank, superposed, grad_rows),
                         x)


def task_logits(network: Network, params: Any, bank: bank_lib.MaskBank, task, x) -> jax.Array:
    """``f(x; W * M_task)`` with task ``task``'s mask and BN running statistics (``task`` may be
    traced): float ``[B, C]``, the network as it was when that task finished."""
    stats = bank.task_batch_stats(task) if network.has_bn else network.batch_stats
    logits, _ = network.apply(masking.mask_params(params, bank.task_masks(task)), stats, x, False)
    return logits


def alpha_gradient(network, params, bank, alpha, x, weights, objective: Objective,
                   superposed=None, grad_rows=None, *, layers=None):
    """``(objective, d objective / d alpha)`` at ``alpha``; the gradient is float32 ``[capacity]``.

    Per layer ``g_i = <M_i, dL/dW_eff * W>`` (SPEC 6), computed from the packed bits for the
    learned slots (or only ``grad_rows``; 0 elsewhere), summed over every masked layer or only
    over the paths ``layers`` (the others still superposed, but their terms left out).
    ``superposed`` optionally gives the precomputed ``sum_i alpha_i M_i``. The methods below take
    any function of this signature as ``gradient`` (e.g.
    :func:`supsup_jax.sharding.sharded_gradient`, or this one with ``layers`` bound).
    """
    if layers is None:
        f = lambda a: objective(superposed_logits(network, params, bank, a, x, superposed,
                                                  grad_rows), weights)
        return jax.value_and_grad(f)(alpha)
    live = bank.select(layers)
    rest = [p for p, _ in bank.shapes if p not in live.bits]
    part = lambda paths: None if superposed is None else {p: superposed[p] for p in paths}

    def f(a):
        # The other layers' superposition enters as a constant: no backward pass over their bits.
        masks = bank_lib.superpose(jax.lax.stop_gradient(a), bank.select(rest), part(rest)
                                   ) if rest else {}
        masks.update(bank_lib.superpose(a, live, part(live.bits), grad_rows))
        return objective(masked_logits(network, params, masks, x), weights)

    return jax.value_and_grad(f)(alpha)


def one_shot(network, params, bank, x, weights, objective, *, superposed=None,
             gradient: GradientFn = alpha_gradient) -> jax.Array:
    """One-Shot (Eq. 4): ``argmin_i dH/dalpha_i`` at uniform alpha, over learned tasks only.

    ``superposed``: ``bank.superpose(uniform_alpha(bank), bank)``, computed once per bank by
    callers that infer many batches. Returns :data:`NO_TASK` when the gradient carries no
    information (:func:`lowest`)."""
    eager = _check_eager(network, bank, x, weights)
    _, g = gradient(network, params, bank, uniform_alpha(bank), x, weights, objective,
                    superposed)
    return _answer(lowest_learned(bank, g), eager)


def halve(alive: jax.Array, g: jax.Array) -> jax.Array:
    """Keep the ``ceil(n/2)`` alive tasks with the smallest gradient (ties by index)."""
    n = jnp.sum(alive)
    order = jnp.argsort(jnp.where(alive, g, jnp.inf), stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
    return alive & (rank < (n + 1) // 2)


def binary(network, params, bank, x, weights, objective, *,
           gradient: GradientFn = alpha_gradient) -> jax.Array:
    """Binary (SPEC 1.6): halve the candidates by their gradient until exactly one remains.

    Each round keeps the ``ceil(n/2)`` alive tasks with the smallest gradient (the official code
    keeps those ``<=`` the lower median, which is the same count without ties); ties are broken by
    index, so the loop always ends after ``ceil(log2 n)`` rounds on one learned task, or on
    :data:`NO_TASK` if a round's gradients carry no information (:func:`lowest`).
    """
    eager = _check_eager(network, bank, x, weights)

    def cond(carry):
        alive, ok = carry
        return ok & (jnp.sum(alive) > 1)

    def body(carry):
        alive, _ = carry
        # Only the remaining candidates' gradients are computed (halve ignores the others).
        _, g = gradient(network, params, bank, uniform_alpha(bank, alive), x, weights,
                        objective, grad_rows=alive)
        return halve(alive, g), lowest(alive, g) != NO_TASK

    learned = bank.learned()
    alive, ok = jax.lax.while_loop(cond, body, (learned, jnp.any(learned)))
    return _answer(jnp.where(ok, jnp.argmax(alive), NO_TASK).astype(jnp.int32), eager)


def gradient_descent(network, params, bank, x, weights, objective, *, lr: float = 200.0,
                     threshold: float = 0.99, max_steps: int = 50,
                     gradient: GradientFn = alpha_gradient):
    """Eq. 3: ``alpha <- alpha - lr * grad_alpha`` from uniform alpha over the learned tasks.

    Stops when ``max softmax(alpha)`` over the learned tasks exceeds ``threshold`` or after
    ``max_steps`` gradients (the official ``gradient_minimization`` rule, with lr 200).

    Returns:
      ``(task, steps)``: ``argmax alpha`` over learned tasks (:data:`NO_TASK` if the first
      gradient carried no information, :func:`lowest`, or any was not finite) and the number
      of gradients taken.
    """
    eager = _check_eager(network, bank, x, weights)
    learned = bank.learned()

    def confidence(alpha):
        return jnp.max(jax.nn.softmax(jnp.where(learned, alpha, -jnp.inf)))

    def cond(carry):
        alpha, step, _ = carry
        return (step < max_steps) & (confidence(alpha) <= threshold)

    def body(carry):
        alpha, step, ok = carry
        _, g = gradient(network, params, bank, alpha, x, weights, objective)
        # Only the first gradient must tell tasks apart; a later one may vanish once the
        # softmax saturates (alpha has then decided), but none may be non-finite.
        finite = jnp.all(jnp.where(learned, jnp.isfinite(g), True))
        ok = ok & finite & ((step > 0) | (lowest(learned, g) != NO_TASK))
        return jnp.where(learned, alpha - lr * g, 0.0), step + 1, ok

    alpha, steps, ok = jax.lax.while_loop(
        cond, body, (uniform_alpha(bank), jnp.int32(0), jnp.any(learned)))
    task = jnp.argmax(jnp.where(learned, alpha, -jnp.inf))
    return _answer(jnp.where(ok, task, NO_TASK).astype(jnp.int32), eager), steps


def task_values(network, params, bank, x, weights, score: Objective = None, *,
                tasks_per_batch: int = 8):
    """float ``[capacity]``: ``score`` (default H) of ``x`` under every slot's mask on its own
    (:func:`task_logits`; ``jax.lax.map`` vmapping ``tasks_per_batch`` slots at a time, so
    memory holds that many unpacked masks)."""
    score = entropy if score is None else score
    value = lambda t: score(task_logits(network, params, bank, t, x), weights)
    return jax.lax.map(value, jnp.arange(bank.capacity), batch_size=tasks_per_batch)


def exhaustive(network, params, bank, x, weights, objective, *, score: Objective = None,
               tasks_per_batch: int = 8):
    """Try every mask on its own and pick the learned task with the lowest ``score``: H by
    default, or e.g. :func:`superfluous_mass`.

    BN networks use each task's running statistics. ``objective`` (a gradient objective) is
    ignored: G's *value* (a logsumexp over every logit) does not rank tasks; only its gradient
    carries the signal. :data:`NO_TASK` if a value is not finite.
    """
    del objective
    eager = _check_eager(network, bank, x, weights)
    values = task_values(network, params, bank, x, weights, score,
                         tasks_per_batch=tasks_per_batch)
    return _answer(lowest_learned(bank, values, zero_is_no_signal=False), eager)


def shortlist(network, params, bank, x, weights, objective, *, size: int = 16,
              rerank: Objective = entropy, superposed=None,
              gradient: GradientFn = alpha_gradient) -> jax.Array:
    """One-Shot's ``size`` best-ranked learned tasks, re-ranked exactly by ``rerank`` (e.g.
    :func:`superfluous_mass`, or H) of ``x`` under each of their masks on its own
    (:func:`task_logits`, BN tasks with their running statistics); the lowest wins.

    The gradient of ``objective`` at uniform alpha ranks all ``k`` tasks at the cost of one
    forward and backward pass (Eq. 4; ``gradient`` may leave layers out, see
    :func:`alpha_gradient`); ``rerank`` ranks as :func:`exhaustive` does, at one forward pass
    per shortlisted task: one gradient plus ``size`` forward passes in all. With ``size >= k``
    this is :func:`exhaustive` with ``rerank``. Returns :data:`NO_TASK` if the gradient carries
    no information (unless every learned task is shortlisted) or a rerank value is not finite.
    """
    eager = _check_eager(network, bank, x, weights)
    _, g = gradient(network, params, bank, uniform_alpha(bank), x, weights, objective,
                    superposed)
    value = lambda t: rerank(task_logits(network, params, bank, t, x), weights)
    return _answer(pick_from_shortlist(bank.learned(), g, size, value), eager)


def check_shortlist_size(size) -> None:
    """Raise ValueError unless ``size`` (tasks a shortlist re-ranks) is an int >= 1."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"shortlist size must be an integer >= 1, got {size!r}")


def pick_from_shortlist(candidates: jax.Array, g: jax.Array, size: int,
                        value: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """int32: of the ``size`` candidates (bool ``[n]``) with the smallest ``g`` (float ``[n]``;
    ties to the lower index), the one with the smallest ``value(i)`` (a scalar per traced
    index, evaluated ``size`` times by ``jax.lax.map``); :data:`NO_TASK` if ``g`` carries no
    information (:func:`lowest`; unless every candidate is shortlisted) or a value is not
    finite."""
    check_shortlist_size(size)
    r = min(size, candidates.shape[0])
    # top_k of -g: the r smallest gradients; non-candidates (+inf) come last.
    _, cand = jax.lax.top_k(-jnp.where(candidates, g, jnp.inf), r)
    best = lowest(candidates[cand], jax.lax.map(value, cand), zero_is_no_signal=False)
    informed = (lowest(candidates, g) != NO_TASK) | (jnp.sum(candidates) <= r)
    task = jnp.where(informed & (best != NO_TASK), cand[jnp.maximum(best, 0)], NO_TASK)
    return task.astype(jnp.int32)


METHODS = {
    "one_shot": one_shot,
    "binary": binary,
    "exhaustive": exhaustive,
    "gradient_descent": lambda *a, **k: gradient_descent(*a, **k)[0],
    "shortlist": shortlist,
}


def check_inputs(network: Network, bank: bank_lib.MaskBank, x, alpha=None) -> None:
    """Raise one clear error for an empty bank, a wrong batch shape, NaN inputs or an alpha
    of the wrong length. Call at the Python boundary (outside jit)."""
    if int(bank.num_tasks) == 0:
        raise ValueError("the mask bank is empty: learn at least one task before inference")
    if x.ndim != len(network.input_shape) + 1 or tuple(x.shape[1:]) != network.input_shape:
        raise ValueError(f"batch has shape {tuple(x.shape)}; the network expects "
                         f"(B, {', '.join(map(str, network.input_shape))})")
    if jnp.issubdtype(x.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("the batch contains NaN or inf")
    if alpha is not None and tuple(jnp.shape(alpha)) != (bank.capacity,):
        raise ValueError(f"alpha has shape {tuple(jnp.shape(alpha))}; the bank has "
                         f"{bank.capacity} slots ({int(bank.num_tasks)} learned)")
