"""Why gradient task inference picks the wrong task: per-image statistics over a stored bank.

For every task's first ``n`` test images, one image at a time (m=1), this records the alpha
gradient at uniform alpha of H, G and S, each layer's term separately (``[L, k]`` per image and
objective; One-Shot ranks by their sum), and the value of H and S of the image under every mask
on its own (``[k]``). From these it derives, with no further passes:

* the true task's rank under each gradient (rank 0 = picked), which task One-Shot picks (a
  confusion matrix), the mask densities and how much each task's mask agrees with task 0's;
* the task-inference accuracy of One-Shot ranking by all layers' terms or by one layer's,
  of Exhaustive by H and by S, and of the shortlist rule for every shortlist size, ranking and
  rerank objective, from one image and from a full batch of ``batch`` (the gradient and the
  objectives of a batch are the means of its images', the networks here having no BatchNorm);
* One-Shot with each task's gradient standardised by its mean and standard deviation over the
  other tasks' images: how far any calibration of the gradient by per-task statistics could go.

Called by ``experiments/gnu_permuted.py --config.diagnose=FILE``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import bank as bank_lib
from supsup_jax import inference

__all__ = ["SIZES", "diagnose", "mask_agreement", "summary"]

SIZES = (1, 2, 3, 4, 6, 8, 12, 16)
GRADIENTS = ("h", "g", "s")
RERANKS = ("h", "s")


def _per_image(network, bank, x, num_real):
    """``({objective: [n, L, k]}, {objective: [n, k]})`` for images ``x`` ``[n, ...]``: each
    layer's alpha-gradient term, and each mask's objective value on its own."""
    k = int(bank.num_tasks)
    params = network.params
    alpha = inference.uniform_alpha(bank)
    sup = bank_lib.superpose(alpha, bank)
    layers = [bank.select([p]) for p, _ in bank.shapes]
    objectives = {o: inference.make_objective(o, num_real) for o in GRADIENTS}

    def terms(xi, objective):
        # One alpha per layer: the gradient w.r.t. layer l's alpha is layer l's term, all in
        # one backward pass.
        def f(per_layer):
            masks = {}
            for a, part in zip(per_layer, layers, strict=True):
                masks.update(bank_lib.superpose(a, part, {p: sup[p] for p in part.bits}))
            return objective(inference.masked_logits(network, params, masks, xi), jnp.ones((1,)))
        return jnp.stack(jax.grad(f)([alpha] * len(layers)))[:, :k]

    @jax.jit
    def grads(xi):
        return {o: terms(xi[None], obj) for o, obj in objectives.items()}

    @jax.jit
    def values(x):
        def per_task(t):
            logits = inference.task_logits(network, params, bank, t, x)
            logp = jax.nn.log_softmax(logits)
            return {"h": -jnp.sum(jnp.exp(logp) * logp, axis=-1),
                    "s": jax.nn.logsumexp(logp[:, num_real:], axis=-1)}
        return jax.tree.map(lambda v: v.T, jax.lax.map(per_task, jnp.arange(k)))

    g = jax.lax.map(grads, x)
    return ({o: np.asarray(v) for o, v in g.items()},
            {o: np.asarray(v) for o, v in values(x).items()})


def diagnose(network, bank, stream, preprocess, n: int = 512, batch: int = 128) -> dict:
    """Per-image quantities and everything derived from them, as a JSON-ready dict."""
    k = int(bank.num_tasks)
    num_real = stream.task(0).num_classes
    if network.num_outputs <= num_real:
        raise ValueError(f"the diagnosis ranks by G and S, which need superfluous neurons: "
                         f"{network.num_outputs} outputs for {num_real} classes")
    if not 1 <= batch <= n:
        raise ValueError(f"batch {batch} must be between 1 and the {n} images per task")
    per_task = []
    for t in range(k):
        x = preprocess(jnp.asarray(stream.task(t).test_images[:n]), None, False)
        if x.shape[0] < n:
            raise ValueError(f"task {t} has {x.shape[0]} test images, fewer than n={n}")
        per_task.append(_per_image(network, bank, x, num_real))
    # [task, image, L, k] and [task, image, k]
    grads = {o: np.stack([p[0][o] for p in per_task]) for o in GRADIENTS}
    vals = {o: np.stack([p[1][o] for p in per_task]) for o in RERANKS}
    paths = [p for p, _ in bank.shapes]
    batches = n // batch
    out = {"n_images": n, "batch": batch, "num_tasks": k, "layers": paths,
           "density": [float(np.mean([np.mean(np.asarray(m)) for m in
                                      bank.task_masks(i).values()])) for i in range(k)],
           "agreement_with_task_0": mask_agreement(bank)}
    vb = {o: _batch_means(v, batch, batches) for o, v in vals.items()}
    out["exhaustive"] = {o: {"m1": _accuracy(vals[o]), "full_batch": _accuracy(vb[o]),
                             "true_rank_m1": _rank_histogram(vals[o])} for o in RERANKS}
    for o, g in grads.items():
        rankings = {"all": g.sum(axis=2), **{p: g[:, :, i] for i, p in enumerate(paths)}}
        out[o] = {name: _rule_stats(r, vals, vb, batch, batches)
                  for name, r in rankings.items()}
        out[o]["all"]["standardised"] = _rule_stats(_standardise(rankings["all"]), vals, vb,
                                                    batch, batches, shortlists=False)
    return out


def mask_agreement(bank) -> list[float]:
    """For every task, the fraction of masked weights where its mask equals task 0's (0.5 for
    independent masks of density 1/2)."""
    first = {p: np.asarray(m, bool) for p, m in bank.task_masks(0).items()}
    total = sum(m.size for m in first.values())
    return [sum(int(np.sum(np.asarray(m, bool) == first[p]))
                for p, m in bank.task_masks(i).items()) / total
            for i in range(int(bank.num_tasks))]


def _standardise(g):
    # Task i's gradient in units of its spread over the *other* tasks' images, so that a task
    # whose gradient is always low (or noisy) no longer wins by default.
    k = g.shape[0]
    z = np.empty_like(g)
    for i in range(k):
        others = np.concatenate([g[t, :, i] for t in range(k) if t != i]) if k > 1 else g[i, :, i]
        z[:, :, i] = (g[:, :, i] - others.mean()) / max(others.std(), 1e-30)
    return z


def _batch_means(v, batch, batches):
    k = v.shape[0]
    return v[:, :batches * batch].reshape(k, batches, batch, -1).mean(axis=2)


def _accuracy(v):
    true = np.arange(v.shape[0])[:, None]
    return float(np.mean(np.argmin(v, axis=-1) == true))


def _rank_histogram(v):
    k = v.shape[0]
    true = np.arange(k)[:, None, None]
    rank = np.sum(v < np.take_along_axis(v, np.broadcast_to(true, v.shape[:2] + (1,)), -1),
                  axis=-1)
    return np.bincount(rank.ravel(), minlength=k).tolist()


def _shortlist(g, v, size):
    # The `size` smallest gradients (ties by index: a stable sort), re-ranked by v.
    cand = np.argsort(g, axis=-1, kind="stable")[..., :size]
    pick = np.take_along_axis(cand, np.argmin(np.take_along_axis(v, cand, -1), -1)[..., None],
                              -1)[..., 0]
    return float(np.mean(pick == np.arange(g.shape[0])[:, None]))


def _rule_stats(g, vals, vb, batch, batches, shortlists=True):
    k = g.shape[0]
    picks = np.argmin(g, axis=-1)
    gb = _batch_means(g, batch, batches)
    out = {
        "one_shot_m1": _accuracy(g),
        "one_shot_full_batch": _accuracy(gb),
        "per_task_m1": np.mean(picks == np.arange(k)[:, None], axis=1).tolist(),
        "true_rank_m1": _rank_histogram(g),
        "true_rank_full_batch": _rank_histogram(gb),
        "confusion_m1": [np.bincount(picks[t], minlength=k).tolist() for t in range(k)],
    }
    if shortlists:
        for o in RERANKS:
            out[f"shortlist_{o}_m1"] = {s: _shortlist(g, vals[o], s) for s in SIZES if s <= k}
            out[f"shortlist_{o}_full_batch"] = {s: _shortlist(gb, vb[o], s) for s in SIZES
                                                if s <= k}
    return out


def summary(d: dict) -> str:
    """A few lines for the terminal."""
    ex = d["exhaustive"]
    lines = [f"diagnosis over {d['n_images']} images per task, {d['num_tasks']} tasks; "
             f"Exhaustive H m=1 {ex['h']['m1']:.3f}, full batch {ex['h']['full_batch']:.3f}; "
             f"Exhaustive S m=1 {ex['s']['m1']:.3f}, full batch {ex['s']['full_batch']:.3f}"]
    for o in GRADIENTS:
        for name in ["all", *d["layers"]]:
            s = d[o][name]
            short = ", ".join(f"r={r}: {a:.3f}/{s['shortlist_s_full_batch'][r]:.3f}"
                              for r, a in s["shortlist_s_m1"].items())
            lines.append(f"{o.upper()} gradient, {name}: One-Shot m=1 {s['one_shot_m1']:.3f}, "
                         f"full batch {s['one_shot_full_batch']:.3f}; shortlist by S m=1/full "
                         f"{short}")
        st = d[o]["all"]["standardised"]
        lines.append(f"{o.upper()} gradient, all, standardised: One-Shot m=1 "
                     f"{st['one_shot_m1']:.3f}, full batch {st['one_shot_full_batch']:.3f}")
    return "\n".join(lines)
