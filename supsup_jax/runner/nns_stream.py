"""The stream of training batches that scenario NNs sees (SPEC 1.7), and how pure its masks are.

Each true task contributes ``steps`` batches (its own :class:`~supsup_jax.data.BatchIterator`
order). The learner consumes the stream in blocks of ``decide_every`` batches and decides once per
block, so where the task changes relative to the blocks decides how much the runner leaks:

* ``"aligned"``: blocks restart at every task (the first round's runner, kept for comparison):
  every decision falls exactly on a task boundary.
* ``"continuous"``: one stream; the first block holds ``offset`` batches and every later one
  ``decide_every``, so with ``steps`` a multiple of ``decide_every`` every task change falls
  ``offset`` batches into a block, which the learner trains on one mask (mixed data).
* ``"revisit"``: as ``continuous``, but each task arrives in ``visits`` pieces and the pieces
  return out of order: the first pieces come in task order, each later piece at a random point
  after its task's first one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["BOUNDARIES", "Piece", "blocks", "slot_purity"]

BOUNDARIES = ("aligned", "continuous", "revisit")


class Piece(NamedTuple):
    """``count`` consecutive batches of true task ``task`` from its step ``step`` on."""

    task: int
    step: int
    count: int


def _pieces(num_tasks: int, steps: int, visits: int, seed: int) -> list[Piece]:
    bounds = np.linspace(0, steps, visits + 1).round().astype(int)
    parts = [[Piece(t, int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
              if b > a] for t in range(num_tasks)]
    rng = np.random.default_rng(seed)
    order, waiting = [], []
    for t in range(num_tasks):
        order.append(parts[t][0])
        waiting.extend(parts[t][1:])
        # Each waiting piece returns after any later first piece with probability 1/2.
        back = rng.random(len(waiting)) < 0.5
        order.extend(p for p, b in zip(waiting, back, strict=True) if b)
        waiting = [p for p, b in zip(waiting, back, strict=True) if not b]
    order.extend(waiting[i] for i in rng.permutation(len(waiting)))
    return order


def blocks(num_tasks: int, steps: int, decide_every: int, boundaries: str = "continuous", *,
           offset: int = 0, visits: int = 2, seed: int = 0) -> list[list[Piece]]:
    """The decision blocks of an NNs run, each a list of pieces (several when the task changes).

    Args:
      num_tasks, steps: true tasks and batches per task.
      decide_every: batches per decision block.
      boundaries: one of :data:`BOUNDARIES` (module docstring).
      offset: batches in the first block (``continuous``/``revisit``; 0: a full block).
      visits: pieces per task (``revisit``).
      seed: the order of the returning pieces (``revisit``).

    Returns:
      The blocks in stream order; each is a list of :class:`Piece` whose counts sum to
      ``decide_every`` (less for the first block and the last one). Together they cover every
      step of every task exactly once.
    """
    if boundaries not in BOUNDARIES:
        raise ValueError(f"boundaries must be one of {BOUNDARIES}, got {boundaries!r}")
    if boundaries == "aligned":
        return [[Piece(t, s, min(decide_every, steps - s))]
                for t in range(num_tasks) for s in range(0, steps, decide_every)]
    order = ([Piece(t, 0, steps) for t in range(num_tasks)] if boundaries == "continuous"
             else _pieces(num_tasks, steps, visits, seed))
    out, current, room = [], [], offset or decide_every
    for piece in order:
        task, step, count = piece
        while count:
            take = min(count, room)
            current.append(Piece(task, step, take))
            step, count, room = step + take, count - take, room - take
            if not room:
                out.append(current)
                current, room = [], decide_every
    if current:
        out.append(current)
    return out


def slot_purity(usage: list[list[list[int]]]) -> dict:
    """How much of each mask's training came from one true task.

    Args:
      usage: per true task, ``[slot, batches]`` pairs (slot None: skipped, budget spent).

    Returns:
      ``{"purity": ..., "slots": {slot: {task: batches}}}``: ``purity`` is the fraction of all
      trained batches that belong to their slot's majority task (1.0: no mask mixes tasks).
    """
    per_slot: dict[int, dict[int, int]] = {}
    for task, pairs in enumerate(usage):
        for slot, n in pairs:
            if slot is not None:
                per_slot.setdefault(int(slot), {}).setdefault(task, 0)
                per_slot[int(slot)][task] += int(n)
    total = sum(sum(c.values()) for c in per_slot.values())
    major = sum(max(c.values()) for c in per_slot.values())
    return {"purity": major / total if total else None,
            "slots": {str(s): {str(t): n for t, n in sorted(c.items())}
                      for s, c in sorted(per_slot.items())}}
