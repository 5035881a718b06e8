"""Checkpoints of a run after every finished task, with orbax (atomic: a run killed while saving
leaves the previous checkpoint intact).

A checkpoint is two items: ``state``, a pytree of arrays (the mask bank, BN statistics, the
Transfer running mean, the NNs learner), and ``meta``, JSON (the config, the metrics so far, wall
times, the shapes needed to restore ``state``). The step is the number of finished tasks.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "RunCheckpoints"]


class CheckpointError(RuntimeError):
    """A workdir whose checkpoint cannot be resumed (another config, or a corrupt file)."""


class RunCheckpoints:
    """Save and restore the checkpoints of one run in ``workdir/checkpoints``."""

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 2):
        self.directory = os.path.join(os.path.abspath(os.fspath(workdir)), "checkpoints")
        # Every process reads on its own (so all resume at the same task) and only process 0
        # saves: no cross-process barriers inside orbax. The workdir must be shared by the hosts.
        pid = jax.process_index()
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False, create=False,
            cleanup_tmp_directories=pid == 0,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=pid, active_processes={pid}))
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Write checkpoint ``step`` (synchronously, so it is durable when this returns); a
        no-op on every process but 0."""
        if jax.process_index() != 0:
            return
        # As host numpy arrays: in a multi-process run orbax refuses process-local jax.Arrays.
        state = jax.tree.map(np.asarray, state)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        self._manager.wait_until_finished()

    def restore_meta(self, step: int) -> dict:
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))
            return dict(out["meta"])
        except Exception as e:  # orbax raises many types for damaged files
            raise CheckpointError(f"checkpoint {step} in {self.directory} is corrupt or "
                                  f"unreadable ({type(e).__name__}: {e})") from e

    def restore_state(self, step: int, abstract_state: Any) -> Any:
        """Restore the ``state`` item into the structure and shapes of ``abstract_state``."""
        target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_state)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))
            return jax.tree.map(jax.numpy.asarray, out["state"])
        except Exception as e:
            raise CheckpointError(f"checkpoint {step} in {self.directory} is corrupt or does "
                                  f"not match this run ({type(e).__name__}: {e})") from e

    def close(self) -> None:
        self._manager.close()

