"""Continual-learning metrics from the accuracy matrix, as pure functions (STYLE: name the variant).

``R[t, i]`` is the accuracy on task ``i`` after learning tasks ``0..t`` (``T x T``; entries above
the diagonal, tasks not yet learned, are NaN and never read). Long runs evaluate every learned
task only at checkpoints: rows ``t < T-1`` may then hold just their diagonal ``R[t, t]`` (NaN
elsewhere); the metrics need the diagonal and the last row, and forgetting's maximum runs over
the entries that exist.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np

__all__ = [
    "accuracy_matrix",
    "average_accuracy",
    "backward_transfer",
    "bytes_per_task",
    "forgetting",
    "task_inference_accuracy",
]


def accuracy_matrix(rows) -> np.ndarray:
    """``R`` from rows of growing length: row ``t`` holds the accuracies of tasks ``0..t``.

    Returns float64 ``[T, T]`` with NaN above the diagonal.
    """
    rows = [list(r) for r in rows]
    n = len(rows)
    out = np.full((n, n), np.nan)
    for t, r in enumerate(rows):
        if len(r) != t + 1:
            raise ValueError(f"row {t} of the accuracy matrix has {len(r)} entries, "
                             f"expected {t + 1}")
        out[t, : t + 1] = r
    return out


def _check(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(f"an accuracy matrix is square and non-empty, got shape {r.shape}")
    if np.isnan(np.diag(r)).any() or np.isnan(r[-1]).any():
        raise ValueError("the accuracy matrix needs its diagonal and its last row")
    return r


def average_accuracy(r) -> float:
    """``ACC = (1/T) sum_i R[T-1, i]``: mean accuracy over all tasks after the last one."""
    r = _check(r)
    return float(r[-1].mean())


def backward_transfer(r) -> float:
    """GEM's ``BWT = 1/(T-1) sum_{i<T-1} (R[T-1, i] - R[i, i])`` (Lopez-Paz & Ranzato, 2017).

    Negative values mean forgetting. 0 for a single task. (SupSup's masks never change once
    learned, so with per-task BN statistics its GG BWT is exactly 0.)
    """
    r = _check(r)
    t = r.shape[0]
    if t == 1:
        return 0.0
    return float(np.mean(r[-1, :-1] - np.diag(r)[:-1]))


def forgetting(r) -> float:
    """Average forgetting, the Chaudhry et al. (2018) / Mammoth variant:
    ``F = 1/(T-1) sum_{i<T-1} max_{t<T-1} (R[t, i]) - R[T-1, i]``, the max over ``t >= i``.

    0 for a single task.
    """
    r = _check(r)
    t = r.shape[0]
    if t == 1:
        return 0.0
    best = np.array([np.nanmax(r[i:-1, i]) for i in range(t - 1)])
    return float(np.mean(best - r[-1, :-1]))


def task_inference_accuracy(predicted, true) -> float:
    """Fraction of inferences whose task is the true one: ``mean(predicted == true)``."""
    predicted, true = np.asarray(predicted), np.asarray(true)
    if predicted.shape != true.shape or predicted.size == 0:
        raise ValueError(f"predicted {predicted.shape} and true {true.shape} tasks must match "
                         "and be non-empty")
    return float(np.mean(predicted == true))


def bytes_per_task(masks_or_bank, num_tasks: int | None = None) -> float:
    """Storage per task: a bank's bytes over its learned tasks, or the bytes of one task's
    ``{path: array}`` masks at 1 bit per weight (``ceil(P_l/8)`` bytes per layer)."""
    if isinstance(masks_or_bank, Mapping):
        return float(sum(math.ceil(math.prod(m.shape) / 8) for m in masks_or_bank.values()))
    bank = masks_or_bank
    n = int(bank.num_tasks) if num_tasks is None else num_tasks
    if n < 1:
        raise ValueError("bytes per task of an empty bank")
    return sum(int(x.nbytes) for x in jax.tree.leaves((bank.bits, bank.batch_stats))) / n
