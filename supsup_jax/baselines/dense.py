"""Baselines that train ordinary weights (SPEC 1.10): upper bound, lower bound, separate heads.

* :class:`UpperBound`: all weights trained on every task in sequence; a copy of the whole model
  is kept right after each task, so task ``i`` is always evaluated with the model "whose trunk
  is trained on tasks 1..i" (paper section 4.1), i.e. the official number, the accuracy measured
  right after learning each task (``results.csv``).
* :class:`Heads`: a trunk plus one head per task (the official ``IndividualHeads``, each head
  starting as a copy of the initial head). ``trunk_tasks`` is the official
  ``train_weight_tasks``: ``-1`` trains the trunk on every task (**lower bound**, the paper's
  "shared trunk trained continuously", not in the official repo), ``1`` on task 0 only
  (**separate heads**), ``0`` never (**separate heads, Rand W**: a random frozen trunk).

Both keep per-task BatchNorm running statistics (kept by the runner), non-affine as every model
here; the official upper bound uses affine ``StandardBN`` (a documented difference).
"""

from __future__ import annotations

import jax

from supsup_jax.baselines import core
from supsup_jax.models.network import Network

__all__ = ["Heads", "UpperBound"]


class UpperBound(core.Method):
    """One model per task, trained sequentially: state ``{"weights": {path: W},
    "models": {path: [T, *W.shape]}}``."""

    name = "upper_bound"

    def init(self, key):
        del key  # the network's own initial weights
        weights = self.flat.flatten(self.network.params)
        return {"weights": weights, "models": core.stacked_zeros(weights, self.num_tasks)}

    def train_vars(self, state, t):
        return {"weights": state["weights"]}

    def learning_rates(self, t):
        return {"weights": "weight_lr"}

    def trains_shared(self, t):
        return True  # but earlier tasks read their own snapshot, so they never change

    def finish(self, state, trained, t):
        w = trained["weights"]
        return {"weights": w, "models": core.put(state["models"], t, w)}

    def eval_vars(self, state, t):
        self.check_task(t)
        return {"weights": core.take(state["models"], t)}

    def params(self, vars):
        return self.flat.unflatten(vars["weights"])

    def stored_bytes(self, state, learned):
        return learned * core.nbytes(state["weights"])


class Heads(core.Method):
    """A trunk and a head per task: state ``{"trunk": {path: W} (all but the head),
    "heads": [T, *head.shape]}``.

    Args:
      trunk_tasks: tasks ``t < trunk_tasks`` train the trunk (``-1``: every task).
    """

    def __init__(self, network: Network, num_tasks: int, trunk_tasks: int):
        super().__init__(network, num_tasks)
        if trunk_tasks < -1:
            raise ValueError(f"trunk_tasks must be -1 (all), 0 or a count, got {trunk_tasks}")
        self.trunk_tasks = trunk_tasks
        self.head = core.head_path(network)
        self.name = {-1: "lower_bound", 0: "separate_heads_rand_w"}.get(trunk_tasks,
                                                                       "separate_heads")

    def trains_shared(self, t):
        return self.trunk_tasks < 0 or t < self.trunk_tasks

    def init(self, key):
        del key
        flat = self.flat.flatten(self.network.params)
        head = flat.pop(self.head)
        return {"trunk": flat, "heads": core.stacked_copies(head, self.num_tasks)}

    def train_vars(self, state, t):
        head = core.take(state["heads"], t)
        return {"trunk": state["trunk"], "head": head} if self.trains_shared(t) else {
            "head": head}

    def fixed_vars(self, state, t):
        return {} if self.trains_shared(t) else {"trunk": state["trunk"]}

    def learning_rates(self, t):
        return ({"trunk": "weight_lr", "head": "lr"} if self.trains_shared(t)
                else {"head": "lr"})

    def finish(self, state, trained, t):
        trunk = trained.get("trunk", state["trunk"])
        return {"trunk": trunk, "heads": core.put(state["heads"], t, trained["head"])}

    def eval_vars(self, state, t):
        self.check_task(t)
        return {"trunk": state["trunk"], "head": core.take(state["heads"], t)}

    def params(self, vars):
        return self.flat.unflatten({**vars["trunk"], self.head: vars["head"]})

    def stored_bytes(self, state, learned):
        trunk = core.nbytes(state["trunk"]) if self.trunk_tasks != 0 else 0  # Rand W: a seed
        head = core.nbytes(jax.tree.map(lambda a: a[0], state["heads"]))
        return trunk + learned * head
