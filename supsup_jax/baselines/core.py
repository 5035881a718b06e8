"""What every baseline shares (SPEC 1.10): a method is a few pure functions over a state pytree,
and one :class:`MethodTrainer` trains and evaluates any of them through the same runner.

A method's ``state`` is a dict pytree. Shared arrays (the weights ``W``) have their own shape;
per-task arrays (BatchE's fast weights, a head per task, a model per task) are stacked on a
leading task axis of length ``num_tasks``, pre-allocated as the official code pre-allocates its
``ParameterList``\\ s (SPEC 1.1), so adding task ``t`` is ``x.at[t].set(...)`` and no new Python
structure. Parameters are *flat* dicts ``{path: array}`` keyed as :func:`masking.path_str` names
a leaf (``"layers/0/kernel"``), so a method works on any :class:`~supsup_jax.models.Network`.

For task ``t`` a method says

* what is optimised: ``train_vars(state, t) -> {group: pytree}``, each group with its own
  learning rate (``learning_rates(t) -> {group: "lr" | "weight_lr"}``), mirroring the official
  ``train_weight_tasks`` / ``train_weight_lr`` split (SPEC 1.4 step 3);
* what is read but held fixed: ``fixed_vars(state, t)``;
* how the trained groups go back into the state: ``finish(state, trained, t)``;
* what evaluating task ``t`` reads: ``eval_vars(state, t)``;

and ``logits(vars, batch_stats, x, train)`` runs the network on the merged dict
``{**fixed, **train}`` (or on ``eval_vars``). BatchNorm running statistics are per task
(SPEC 1.3, as for SupSup) and kept by the trainer's caller, stacked on the task axis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from supsup_jax import evaluate as evaluate_lib
from supsup_jax import masking
from supsup_jax.loop import StepLoop, default_step_loop
from supsup_jax.models.network import Network
from supsup_jax.steps import Preprocess, check_data, cross_entropy

__all__ = [
    "FlatParams",
    "Method",
    "MethodTrainer",
    "head_path",
    "nbytes",
    "stacked_zeros",
]

Params = Any
Vars = dict[str, Any]


class FlatParams:
    """The bijection between a network's parameter pytree and a flat ``{path: leaf}`` dict."""

    def __init__(self, params: Params):
        leaves, self.treedef = jax.tree_util.tree_flatten_with_path(params)
        self.paths = [masking.path_str(p) for p, _ in leaves]

    def flatten(self, params: Params) -> dict[str, jax.Array]:
        leaves = jax.tree_util.tree_leaves(params)
        return dict(zip(self.paths, leaves, strict=True))

    def unflatten(self, flat: Mapping[str, jax.Array]) -> Params:
        missing = set(self.paths) - set(flat)
        if missing:
            raise KeyError(f"parameters missing from the flat dict: {sorted(missing)}")
        return jax.tree_util.tree_unflatten(self.treedef, [flat[p] for p in self.paths])


def head_path(network: Network) -> str:
    """The output layer's kernel: the last rank-2 kernel in the parameters' flatten order, which
    must have ``num_outputs`` columns (``layers/2/kernel`` of FC 1024-1024, ``head/kernel`` of
    GEMResNet18)."""
    kernels = [p for p, w in masking.masked_leaves(network.params).items() if np.ndim(w) == 2]
    if not kernels or np.shape(masking.masked_leaves(network.params)[kernels[-1]])[-1] != (
            network.num_outputs):
        raise ValueError(f"cannot find the output layer among the dense kernels {kernels} (the "
                         f"last must have {network.num_outputs} outputs)")
    return kernels[-1]


def stacked_zeros(tree: Params, num_tasks: int) -> Params:
    """``tree``'s leaves with a leading task axis of length ``num_tasks``, zero-filled."""
    return jax.tree.map(lambda a: jnp.zeros((num_tasks, *np.shape(a)), a.dtype), tree)


def stacked_copies(tree: Params, num_tasks: int) -> Params:
    """``num_tasks`` copies of ``tree`` on a leading task axis (e.g. the initial head)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_tasks, *np.shape(a))).copy(), tree)


def nbytes(tree: Params) -> int:
    """Bytes of the arrays in ``tree``."""
    return int(sum(np.dtype(a.dtype).itemsize * int(np.prod(np.shape(a)))
                   for a in jax.tree.leaves(tree)))


def take(tree: Params, t) -> Params:
    """Task ``t``'s slice of stacked per-task state (``t`` may be traced)."""
    return jax.tree.map(lambda a: a[t], tree)


def put(tree: Params, t: int, value: Params) -> Params:
    """``tree`` with task ``t``'s slice replaced by ``value``."""
    return jax.tree.map(lambda a, v: a.at[t].set(v), tree, value)


class Method:
    """Base class of a baseline: the network, the task count and the pure functions above.

    Subclasses set ``name`` and implement ``init``, ``train_vars``, ``fixed_vars``,
    ``learning_rates``, ``finish``, ``eval_vars``, ``params`` (or ``logits``) and
    ``stored_bytes``. ``trains_shared(t)`` tells the runner whether task ``t`` changes weights
    that earlier tasks also read (then their accuracy may change).
    """

    name = "method"

    def __init__(self, network: Network, num_tasks: int):
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.network = network
        self.num_tasks = num_tasks
        self.flat = FlatParams(network.params)

    # -- to implement --------------------------------------------------------------------
    def init(self, key: jax.Array) -> Vars:
        raise NotImplementedError

    def train_vars(self, state: Vars, t: int) -> Vars:
        raise NotImplementedError

    def fixed_vars(self, state: Vars, t: int) -> Vars:
        return {}

    def learning_rates(self, t: int) -> dict[str, str]:
        raise NotImplementedError

    def finish(self, state: Vars, trained: Vars, t: int) -> Vars:
        raise NotImplementedError

    def eval_vars(self, state: Vars, t: int) -> Vars:
        raise NotImplementedError

    def params(self, vars: Vars) -> Params:
        raise NotImplementedError

    def stored_bytes(self, state: Vars, learned: int) -> int:
        raise NotImplementedError

    def trains_shared(self, t: int) -> bool:
        return False

    # -- shared ---------------------------------------------------------------------------
    def logits(self, vars: Vars, batch_stats: Params, x: jax.Array, train: bool):
        """``(logits [B, num_outputs], new_batch_stats)`` for float ``x`` ``[B, *input]``."""
        return self.network.apply(self.params(vars), batch_stats, x, train)

    def check_task(self, t: int) -> None:
        if not 0 <= t < self.num_tasks:
            raise IndexError(f"task {t} is outside the {self.num_tasks} tasks of this method")


OptimizerFactory = Callable[[float], optax.GradientTransformation]


class MethodTrainer:
    """Training and GG evaluation of any :class:`Method`: the batches, preprocessing, loss,
    step loop (:class:`supsup_jax.loop.StepLoop`) and accuracy (:mod:`supsup_jax.evaluate`) of
    :class:`supsup_jax.train.Trainer`, on one device.

    Args:
      method: the baseline.
      make_optimizer: ``lr -> optax transformation`` (``train.make_optimizer`` with the
        config's optimiser and schedule); each group of ``train_vars`` gets its own.
      learning_rates: ``{"lr": ..., "weight_lr": ...}``, the values ``learning_rates(t)`` names.
      preprocess: from :func:`train.make_preprocess`.
    """

    def __init__(self, method: Method, make_optimizer: OptimizerFactory,
                 learning_rates: Mapping[str, float], preprocess: Preprocess, *,
                 chunk_size: int = 100, eval_batch_size: int = 1000, step_loop: str = "auto"):
        self.method = method
        self.network = method.network
        self.make_optimizer = make_optimizer
        self.lr_values = dict(learning_rates)
        self.preprocess = preprocess
        self.chunk_size = chunk_size
        self.eval_batch_size = eval_batch_size
        self.step_loop = default_step_loop(self.network.params, step_loop)
        self._loops: dict[tuple, tuple] = {}
        self._evaluate = jax.jit(self._accuracy)

    # ----------------------------------------------------------------------------- training
    def optimizer(self, t: int) -> optax.GradientTransformation:
        """Task ``t``'s optimiser: one transformation per group, each at its learning rate."""
        groups = self.method.learning_rates(t)
        for g, which in groups.items():
            if which not in self.lr_values:
                raise ValueError(f"group {g!r} asks for learning rate {which!r}; the trainer has "
                                 f"{sorted(self.lr_values)}")
        return optax.multi_transform(
            {g: self.make_optimizer(self.lr_values[w]) for g, w in groups.items()},
            lambda tree: {g: jax.tree.map(lambda _, g=g: g, sub) for g, sub in tree.items()})

    def _step_loop(self, t: int):
        # One loop per distinct set of groups and rates: at most two compilations per run
        # (the task that trains shared weights and the tasks that do not).
        sig = tuple(sorted(self.method.learning_rates(t).items()))
        if sig not in self._loops:
            opt = self.optimizer(t)
            self._loops[sig] = (opt, StepLoop(self._make_step(opt), chunk_size=self.chunk_size,
                                              step_loop=self.step_loop))
        return self._loops[sig]

    def _make_step(self, opt):
        method, preprocess = self.method, self.preprocess

        def loss(train, fixed, stats, x, y):
            logits, new_stats = method.logits({**fixed, **train}, stats, x, True)
            acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
            return cross_entropy(logits, y), (new_stats, acc)

        def step(fixed, carry, images, labels, key):
            train, stats, opt_state = carry
            x = preprocess(images, key, True)
            (value, (stats, acc)), grads = jax.value_and_grad(loss, has_aux=True)(
                train, fixed, stats, x, labels)
            # optax's Adam bias correction relies on implicit promotion (see train.Trainer).
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = opt.update(grads, opt_state, train)
            train = optax.apply_updates(train, updates)
            return (train, stats, opt_state), {"loss": value, "accuracy": acc}

        return step

    def train_task(self, state: Vars, t: int, images, labels, key: jax.Array, num_steps: int,
                   batch_size: int, *, batch_stats: Params | None = None,
                   on_chunk: Callable[[int, dict], None] | None = None) -> tuple[Vars, Params]:
        """Train task ``t`` for ``num_steps`` steps of ``batch_size`` (batches drawn by a
        :class:`BatchIterator` from ``key``, as SupSup's trainer draws them).

        Args:
          images: uint8 ``(N, *input_shape)``; labels: int ``(N,)``.
          batch_stats: the BN statistics to start from (default: the network's initial ones).

        Returns:
          ``(state, batch_stats)``: the method state after :meth:`Method.finish`, and task
          ``t``'s BN running statistics. The optimiser state is dropped (SPEC 1.4 step 8).
        """
        self.method.check_task(t)
        self.check_data(images, labels)
        opt, loop = self._step_loop(t)
        train = jax.tree.map(jnp.array, self.method.train_vars(state, t))  # copies: donated
        fixed = self.method.fixed_vars(state, t)
        stats = jax.tree.map(jnp.array, self.network.batch_stats if batch_stats is None
                             else batch_stats)
        train, stats, _ = loop.run(fixed, (train, stats, opt.init(train)), images, labels, key,
                                   num_steps, batch_size, on_chunk=on_chunk)
        return self.method.finish(state, train, t), stats

    # --------------------------------------------------------------------------- evaluation
    def _accuracy(self, vars, batch_stats, images, labels):
        def logits(x):
            return self.method.logits(vars, batch_stats, self.preprocess(x, None, False),
                                      False)[0]

        return evaluate_lib.accuracy(logits, images, labels, self.eval_batch_size)

    def evaluate(self, state: Vars, t: int, batch_stats: Params, images, labels) -> jax.Array:
        """GG accuracy of task ``t``: arg-max over all outputs of task ``t``'s model, float32."""
        self.method.check_task(t)
        self.check_data(images, labels)
        return self._evaluate(self.method.eval_vars(state, t), batch_stats, jnp.asarray(images),
                              jnp.asarray(labels, jnp.int32))

    def check_data(self, images, labels) -> None:
        """Raise unless ``images``/``labels`` fit the network (:func:`steps.check_data`)."""
        check_data(self.network, images, labels)
