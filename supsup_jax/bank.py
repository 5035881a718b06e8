"""The mask bank: finished supermasks stacked on a task axis, bit-packed (SPEC 1.5, 3.3).

Each masked layer's mask is flattened and packed 8 weights per byte (``bitorder="little"``), so
``k`` tasks of ``P`` masked weights take ``k * ceil(P/8)`` bytes plus the per-task BatchNorm
statistics, against the official code's ``4 k P`` bytes of float32 buffers.

The bank has a ``capacity`` (the length of the task axis) that grows geometrically (1.25x), and a
learned-task count ``num_tasks`` that is *data* (an int32 array), so adding a task changes no
shape: jitted inference compiles once per capacity, i.e. ``O(log k)`` times over a run.

The two contractions that task inference needs never materialise a ``k x P`` float array:

* :func:`superpose`: ``sum_i alpha_i M_i`` per layer, a ``[P]`` float mask (Eq. 2's ``W * sum``);
* :func:`contract`: ``g_i = <M_i, v>`` for a per-weight vector ``v``, which is the gradient of
  :func:`superpose` w.r.t. ``alpha`` (``v = dL/dW_eff * W`` gives ``dL/dalpha_i``, SPEC 6).

Both stream the packed bits once (:mod:`supsup_jax.kernels`: a C++ kernel on CPU, plain JAX
elsewhere).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import kernels
from supsup_jax.masking import check_masks, path_str

__all__ = [
    "MaskBank",
    "contract",
    "load_bank",
    "masks_to_scores",
    "pack_masks",
    "save_bank",
    "superpose",
    "unpack_task",
]

@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["bits", "batch_stats", "num_tasks"],
                   meta_fields=["shapes"])
@dataclasses.dataclass(frozen=True)
class MaskBank:
    """Bit-packed masks of the learned tasks (a pytree; ``shapes`` is static).

    Attributes:
      bits: ``{path: uint8[capacity, ceil(P_l / 8)]}``, layer ``l``'s flattened mask, packed.
      batch_stats: per-task BN running statistics, leaves ``[capacity, ...]`` (``{}`` if none).
      num_tasks: int32 scalar, how many slots hold learned tasks (slots ``0..num_tasks-1``).
      shapes: ``((path, shape), ...)`` of the masked weights, sorted by path.
    """

    bits: dict[str, jax.Array]
    batch_stats: Any
    num_tasks: jax.Array
    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def create(cls, weights: Mapping[str, Any], batch_stats: Any = None,
               capacity: int = 8) -> MaskBank:
        """An empty bank for masks of the given ``{path: weight}`` (only shapes are used).

        Args:
          weights: the masked weights, e.g. ``Trainer.weights``.
          batch_stats: one task's BN statistics as a template (``None`` or ``{}``: no BN).
          capacity: the initial length of the task axis.
        """
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        shapes = tuple(sorted((p, tuple(int(d) for d in w.shape)) for p, w in weights.items()))
        bits = {p: jnp.zeros((capacity, _nbytes(s)), jnp.uint8) for p, s in shapes}
        stats = jax.tree.map(lambda x: jnp.zeros((capacity, *x.shape), x.dtype),
                             batch_stats or {})
        return cls(bits, stats, jnp.zeros((), jnp.int32), shapes)

    @property
    def capacity(self) -> int:
        return next(iter(self.bits.values())).shape[0]

    @property
    def num_weights(self) -> int:
        """P, the number of masked weights per task."""
        return sum(math.prod(s) for _, s in self.shapes)

    def nbytes(self) -> int:
        """Bytes the bank holds (bits of every slot, spare capacity included, and BN stats)."""
        return sum(int(x.nbytes) for x in jax.tree.leaves((self.bits, self.batch_stats)))

    def add(self, masks: Mapping[str, Any], batch_stats: Any = None, *,
            donate: bool = False) -> MaskBank:
        """A new bank with one more task (its binary masks and BN statistics) in the next slot.

        ``donate=True`` hands this bank's buffers to the new one, so the mask is written in
        place (time ``O(P)`` instead of a copy of the whole bank, ``O(kP)``); this bank must not
        be used afterwards (``bank = bank.add(m, donate=True)``).

        Grows the capacity by 1.25x when the bank is full (the only time shapes change): jitted
        inference recompiles ``O(log k)`` times over ``k`` tasks, and spare slots never exceed
        a quarter of the bank. Pass ``capacity`` to :meth:`create` when the number of tasks is
        known, and nothing ever recompiles.
        """
        _check_masks(self, masks)
        n = int(self.num_tasks)
        bank = self if n < self.capacity else self.grow(-(-5 * self.capacity // 4))
        packed = pack_masks(masks)
        stats = batch_stats if batch_stats is not None else {}
        if jax.tree.structure(stats) != jax.tree.structure(
                jax.tree.map(lambda x: x[0], bank.batch_stats)):
            raise ValueError("batch_stats do not match the bank's BatchNorm statistics")
        return (_write_donated if donate else _write)(bank, packed, stats)

    def set_task(self, slot: int, masks: Mapping[str, Any], batch_stats: Any = None) -> MaskBank:
        """A new bank whose learned slot ``slot`` holds ``masks`` (e.g. a mask still training,
        as in NNs). Changes no shape, so it never recompiles."""
        _check_masks(self, masks)
        if not 0 <= slot < int(self.num_tasks):
            raise IndexError(f"slot {slot} is outside the {int(self.num_tasks)} learned tasks")
        stats = batch_stats if batch_stats is not None else {}
        return _write_slot(self, pack_masks(masks), stats, jnp.int32(slot))

    def grow(self, capacity: int) -> MaskBank:
        """The same bank with a longer task axis (new slots empty)."""
        if capacity < self.capacity:
            raise ValueError(f"cannot shrink a bank from {self.capacity} to {capacity}")
        pad = lambda x: jnp.pad(x, [(0, capacity - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
        return dataclasses.replace(self, bits=jax.tree.map(pad, self.bits),
                                   batch_stats=jax.tree.map(pad, self.batch_stats))

    def select(self, paths) -> MaskBank:
        """The bank restricted to the masked layers ``paths`` (same slots and statistics), e.g.
        to rank tasks by some layers' alpha-gradient only (:func:`supsup_jax.inference.
        alpha_gradient`'s ``layers``)."""
        paths = tuple(paths)
        known = [p for p, _ in self.shapes]
        unknown = sorted(set(paths) - set(known))
        if unknown or not paths:
            raise ValueError(f"layers {unknown or list(paths)} are not masked layers of this "
                             f"bank; it holds {known}")
        return dataclasses.replace(self, bits={p: self.bits[p] for p in paths},
                                   shapes=tuple((p, s) for p, s in self.shapes if p in paths))

    def learned(self) -> jax.Array:
        """bool ``[capacity]``: which slots hold learned tasks."""
        return jnp.arange(self.capacity, dtype=self.num_tasks.dtype) < self.num_tasks

    def task_masks(self, task) -> dict[str, jax.Array]:
        """Task ``task``'s masks as float32 ``{path: shape}`` (``task`` may be traced; a
        concrete ``task`` must be a learned slot)."""
        _check_slot(self, task)
        return unpack_task(self, task)

    def task_batch_stats(self, task) -> Any:
        _check_slot(self, task)
        return jax.tree.map(lambda x: x[task], self.batch_stats)


def _nbytes(shape) -> int:
    return -(-math.prod(shape) // 8)


def pack_masks(masks: Mapping[str, Any]) -> dict[str, jax.Array]:
    """``{path: bool/0-1 array}`` -> ``{path: uint8[ceil(P/8)]}`` (flattened, little bit order)."""
    return {p: jnp.packbits(jnp.asarray(m).reshape(-1).astype(bool), bitorder="little")
            for p, m in masks.items()}


def _write_impl(bank: MaskBank, packed, stats) -> MaskBank:
    i = bank.num_tasks
    return dataclasses.replace(_write_slot(bank, packed, stats, i), num_tasks=i + 1)


_write = jax.jit(_write_impl)
_write_donated = jax.jit(_write_impl, donate_argnums=0)


@jax.jit
def _write_slot(bank: MaskBank, packed, stats, slot) -> MaskBank:
    bits = {p: bank.bits[p].at[slot].set(packed[p]) for p in bank.bits}
    new_stats = jax.tree.map(lambda s, x: s.at[slot].set(x), bank.batch_stats, stats)
    return dataclasses.replace(bank, bits=bits, batch_stats=new_stats)


def _check_slot(bank: MaskBank, task) -> None:
    if isinstance(task, jax.core.Tracer) or isinstance(bank.num_tasks, jax.core.Tracer):
        return
    if np.ndim(task) != 0 or not np.issubdtype(np.asarray(task).dtype, np.integer):
        raise TypeError(f"task must be an integer slot index, got {task!r}")
    num = int(bank.num_tasks)
    if not 0 <= int(task) < num:
        raise IndexError(f"task {int(task)} is not a learned slot: the bank holds {num} "
                         f"learned tasks (slots 0..{num - 1})")


def _check_masks(bank: MaskBank, masks: Mapping[str, Any]) -> None:
    check_masks(dict(bank.shapes), masks, against="the bank's layers")
    for p, m in masks.items():
        if m.dtype == bool or isinstance(m, jax.core.Tracer):
            continue
        # A binary mask is bool or holds only 0 and 1; soft or NaN values would pack as ones.
        values = np.asarray(m)
        binary = (values == 0) | (values == 1)
        if not np.all(binary):
            raise ValueError(f"mask {p!r} is not binary: it holds "
                             f"{values[~binary].reshape(-1)[:3].tolist()} (a mask is bool, or "
                             "0/1 values; threshold soft masks first)")


def _unpack_row(row: jax.Array, shape) -> jax.Array:
    bits = jnp.unpackbits(row, bitorder="little", count=math.prod(shape))
    return bits.reshape(shape)


def unpack_task(bank: MaskBank, task) -> dict[str, jax.Array]:
    """Slot ``task``'s masks as float32 arrays of the weight shapes, learned or not (a spare
    slot is all zeros; :meth:`MaskBank.task_masks` refuses one); ``task`` may be traced."""
    return {p: _unpack_row(bank.bits[p][task], s).astype(jnp.float32) for p, s in bank.shapes}


def _superpose_layer(alpha: jax.Array, bits: jax.Array, shape) -> jax.Array:
    return kernels.bits_vecmat(alpha, bits)[: math.prod(shape)].reshape(shape)


def _contract_layer(bits: jax.Array, v: jax.Array, rows: jax.Array | None = None) -> jax.Array:
    v = v.reshape(-1).astype(jnp.float32)
    return kernels.bits_matvec(bits, jnp.pad(v, (0, 8 * bits.shape[1] - v.size)), rows)


def contract(bank: MaskBank, v: Mapping[str, jax.Array], rows: jax.Array | None = None
             ) -> jax.Array:
    """``g_i = sum_layers <M_i, v>`` for every slot ``i``: float32 ``[capacity]``.

    With ``v = dL/dW_eff * W`` this is ``dL/dalpha_i`` (SPEC 6: one matrix-vector product with
    the stacked masks). Only the slots in ``rows`` (bool ``[capacity]``, default: the learned
    ones) are computed; the others give 0.
    """
    rows = bank.learned() if rows is None else rows
    return sum(_contract_layer(bank.bits[p], v[p], rows) for p, _ in bank.shapes)


# `rows` rides along as a primal input (its cotangent is None): which slots the backward computes.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _superpose(alpha, bits, rows, shapes):
    del rows
    return {p: _superpose_layer(alpha, bits[p], s) for p, s in shapes}


def _superpose_fwd(alpha, bits, rows, shapes):
    return _superpose(alpha, bits, rows, shapes), (bits, rows, jnp.zeros((), alpha.dtype))


def _superpose_bwd(shapes, res, ct):
    bits, rows, like = res  # `like` carries alpha's dtype (the kernels compute in float32)
    g = sum(_contract_layer(bits[p], ct[p], rows) for p, _ in shapes).astype(like.dtype)
    zeros_bits = jax.tree.map(lambda b: np.zeros(b.shape, jax.dtypes.float0), bits)
    return g, zeros_bits, None


_superpose.defvjp(_superpose_fwd, _superpose_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _precomputed(alpha, bits, rows, shapes, value):
    del alpha, bits, rows
    return value


def _precomputed_fwd(alpha, bits, rows, shapes, value):
    return value, (bits, rows, jnp.zeros((), alpha.dtype))


def _precomputed_bwd(shapes, res, ct):
    return (*_superpose_bwd(shapes, res, ct), jax.tree.map(jnp.zeros_like, ct))


_precomputed.defvjp(_precomputed_fwd, _precomputed_bwd)


def superpose(alpha: jax.Array, bank: MaskBank, precomputed=None,
              grad_rows: jax.Array | None = None) -> dict[str, jax.Array]:
    """``{path: sum_i alpha_i M_i}`` (float32, weight shapes), differentiable in ``alpha``.

    Args:
      alpha: float32 ``[capacity]``; entries of empty slots should be 0.
      precomputed: the value of ``superpose(alpha, bank)`` if the caller has it: with uniform
        alpha it is the same for every batch, so One-Shot computes it once per bank and only
        the backward contraction runs per batch.
      grad_rows: bool ``[capacity]``, the slots whose ``dL/dalpha_i`` the backward computes
        (default: the learned ones); the others get 0. Binary passes its remaining candidates,
        so its rounds cost ``k, k/2, k/4, ...`` rows instead of ``k`` each.

    The gradient w.r.t. ``alpha`` is computed by :func:`contract` (``custom_vjp``), so neither
    pass builds a ``capacity x P`` float array.
    """
    rows = bank.learned() if grad_rows is None else grad_rows
    if precomputed is not None:
        return _precomputed(alpha, bank.bits, rows, bank.shapes, precomputed)
    return _superpose(alpha, bank.bits, rows, bank.shapes)


def masks_to_scores(masks: Mapping[str, Any], magnitude: float = 1.0) -> dict[str, jax.Array]:
    """Scores whose threshold mask is ``masks``: ``+magnitude`` where kept, ``-magnitude`` not.

    The way back from the bank to the training-time score pytrees (e.g. to fine-tune a stored
    mask); the real-valued scores themselves are not kept after training.
    """
    return {p: jnp.where(jnp.asarray(m).astype(bool), magnitude, -magnitude).astype(jnp.float32)
            for p, m in masks.items()}


def save_bank(bank: MaskBank, path: str | os.PathLike) -> None:
    """Write the bank to an ``.npz`` file (bit-identical round trip with :func:`load_bank`)."""
    arrays = {f"bits/{p}": np.asarray(b) for p, b in bank.bits.items()}
    leaves, _ = jax.tree_util.tree_flatten_with_path(bank.batch_stats)
    arrays.update({f"stats/{path_str(k)}": np.asarray(x) for k, x in leaves})
    arrays["num_tasks"] = np.asarray(bank.num_tasks)
    arrays["shapes"] = np.asarray(repr(bank.shapes))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_bank(path: str | os.PathLike, batch_stats_template: Any = None,
              weights: Mapping[str, Any] | None = None) -> MaskBank:
    """Read a bank written by :func:`save_bank`.

    Args:
      batch_stats_template: one task's BN statistics (for their tree structure); ``None`` if the
        network has no BN.
      weights: the masked weights of the network the bank is for (e.g. ``Trainer.weights``); if
        given, the bank's layers and shapes must be theirs.

    Raises:
      ValueError: the file is not a bank (truncated, foreign, inconsistent), or not one of
        this network; the message names the file and what is wrong.
    """
    import zipfile

    where = os.fspath(path)
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            files = set(z.files)
            if not {"shapes", "num_tasks"} <= files:
                raise ValueError(f"{where} is not a mask bank written by save_bank (it has "
                                 f"{sorted(files)[:5]}, no 'shapes'/'num_tasks')")
            shapes = tuple((str(p), tuple(int(d) for d in s))
                           for p, s in ast.literal_eval(str(z["shapes"])))
            missing = [f"bits/{p}" for p, _ in shapes if f"bits/{p}" not in files]
            if missing:
                raise ValueError(f"{where} lacks the arrays {missing}")
            bits = {p: np.asarray(z[f"bits/{p}"]) for p, _ in shapes}
            num = np.asarray(z["num_tasks"])
            template = batch_stats_template or {}
            leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
            names = [f"stats/{path_str(k)}" for k, _ in leaves]
            absent = [n for n in names if n not in files]
            extra = sorted(f for f in files if f.startswith("stats/") and f not in names)
            if absent or extra:
                raise ValueError(f"{where}: BN statistics do not match the template (missing "
                                 f"{absent}, unexpected {extra})")
            stats = [np.asarray(z[n]) for n in names]
    except (zipfile.BadZipFile, EOFError, OSError, SyntaxError, KeyError) as e:
        raise ValueError(f"{where} is not a readable mask bank (truncated or not an .npz "
                         f"written by save_bank: {type(e).__name__}: {e})") from e
    capacities = {b.shape[0] for b in bits.values()} | {x.shape[0] for x in stats}
    if len(capacities) != 1:
        raise ValueError(f"{where}: the arrays disagree on the capacity ({sorted(capacities)})")
    capacity = capacities.pop()
    for p, s in shapes:
        if bits[p].dtype != np.uint8 or bits[p].shape != (capacity, _nbytes(s)):
            raise ValueError(f"{where}: bits/{p} is {bits[p].dtype} {bits[p].shape}; a layer of "
                             f"shape {s} needs uint8 ({capacity}, {_nbytes(s)})")
    if num.shape != () or not np.issubdtype(num.dtype, np.integer) or not (
            0 <= int(num) <= capacity):
        raise ValueError(f"{where}: num_tasks={num.tolist()} does not fit the capacity "
                         f"{capacity}")
    if weights is not None:
        expected = tuple(sorted((p, tuple(int(d) for d in w.shape)) for p, w in weights.items()))
        if expected != shapes:
            raise ValueError(f"{where} holds masks of {dict(shapes)}; this network's masked "
                             f"weights are {dict(expected)}")
    return MaskBank({p: jnp.asarray(b) for p, b in bits.items()},
                    jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in stats]),
                    jnp.asarray(num, jnp.int32), shapes)
