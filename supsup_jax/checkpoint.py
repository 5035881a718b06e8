"""Checkpoints of a run after every finished task, with orbax (atomic: a run killed while saving
leaves the previous checkpoint intact).

A checkpoint is two items: ``state``, a pytree of arrays (the mask bank, BN statistics, the
Transfer running mean, the NNs learner), and ``meta``, JSON (the config, the metrics so far, wall
times, the shapes needed to restore ``state``). The step is the number of finished tasks.

Integrity: ``meta`` carries a SHA-256 of every array of ``state`` and of the rest of ``meta``,
checked on restore, so a single flipped byte is a :class:`CorruptCheckpointError`, and
:meth:`RunCheckpoints.resume` falls back to the newest intact checkpoint (moving the corrupt ones
to ``workdir/corrupt_checkpoints/``, with a warning). A lock file keeps a second run out of the
workdir; stale temporaries of a killed run are removed when the lock is taken.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "CorruptCheckpointError", "RunCheckpoints", "WorkdirInUseError"]

INTEGRITY_KEY = "integrity"


class CheckpointError(RuntimeError):
    """A workdir whose checkpoint cannot be resumed (another config, or a corrupt file)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose files are damaged: unreadable, or not matching their checksums."""


class WorkdirInUseError(CheckpointError):
    """Another run holds the workdir's lock."""


def _digest(array) -> str:
    a = np.ascontiguousarray(np.asarray(array))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


def _state_digests(state) -> dict[str, str]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    return {jax.tree_util.keystr(k): _digest(x) for k, x in leaves}


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != INTEGRITY_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class RunCheckpoints:
    """Save and restore the checkpoints of one run in ``workdir/checkpoints``."""

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 2):
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.max_to_keep = max_to_keep
        # Every process reads on its own (so all resume at the same task) and only process 0
        # saves: no cross-process barriers inside orbax. The workdir must be shared by the hosts.
        pid = jax.process_index()
        os.makedirs(self.directory, exist_ok=True)
        self._lock = self._take_lock() if pid == 0 else None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False, create=False,
            cleanup_tmp_directories=pid == 0,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=pid, active_processes={pid}))
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  item_names=("state", "meta"))
        except BaseException:
            self._release_lock()
            raise

    # ----------------------------------------------------------------------------- the lock
    def _take_lock(self):
        path = os.path.join(self.workdir, ".lock")
        f = open(path, "a+")  # noqa: SIM115 - held open until close()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise WorkdirInUseError(
                    f"{self.workdir} is in use by another run (pid {holder} holds {path}); wait "
                    "for it to finish or use another workdir") from None
            raise
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        # Temporaries a killed run left behind (results written atomically via a temp file).
        for stale in glob.glob(os.path.join(self.workdir, ".*.tmp")):
            os.unlink(stale)
        return f

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # ---------------------------------------------------------------------------- save/load
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Write checkpoint ``step`` (synchronously, so it is durable when this returns) with
        the checksums of ``state`` and ``meta``; a no-op on every process but 0. Keeps the
        newest ``max_to_keep`` checkpoints."""
        if jax.process_index() != 0:
            return
        # As host numpy arrays: in a multi-process run orbax refuses process-local jax.Arrays.
        state = jax.tree.map(np.asarray, state)
        meta = {k: v for k, v in meta.items() if k != INTEGRITY_KEY}
        meta[INTEGRITY_KEY] = {"state": _state_digests(state), "meta": _meta_digest(meta)}
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        self._manager.wait_until_finished()
        for old in self.all_steps()[:-self.max_to_keep]:  # orbax keeps more after kills
            self._manager.delete(old)

    def restore_meta(self, step: int) -> dict:
        """Checkpoint ``step``'s meta (without its checksums), verified."""
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))
            meta = dict(out["meta"])
        except Exception as e:  # orbax raises many types for damaged files
            raise CorruptCheckpointError(f"checkpoint {step} in {self.directory} is corrupt or "
                                         f"unreadable ({type(e).__name__}: {e})") from e
        integrity = meta.get(INTEGRITY_KEY)
        if integrity is not None and integrity.get("meta") != _meta_digest(meta):
            raise CorruptCheckpointError(
                f"checkpoint {step} in {self.directory} is corrupt: its metadata does not match "
                "its checksum")
        meta.pop(INTEGRITY_KEY, None)
        return meta

    def restore_state(self, step: int, abstract_state: Any) -> Any:
        """Restore the ``state`` item into the structure and shapes of ``abstract_state``,
        verified against the checksums saved with it (checkpoints written before checksums
        existed are restored unverified)."""
        target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_state)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))
            state = out["state"]
        except Exception as e:
            raise CorruptCheckpointError(
                f"checkpoint {step} in {self.directory} is corrupt or does not match this run "
                f"({type(e).__name__}: {e})") from e
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        expected = dict(meta["meta"]).get(INTEGRITY_KEY, {}).get("state")
        if expected is not None:
            got = _state_digests(state)
            bad = sorted(k for k in expected if got.get(k) != expected[k])
            if bad or set(got) != set(expected):
                raise CorruptCheckpointError(
                    f"checkpoint {step} in {self.directory} is corrupt: arrays {bad[:4]} do not "
                    "match their checksums")
        return jax.tree.map(jax.numpy.asarray, state)

    def resume(self, check_meta: Callable[[dict], None],
               restore: Callable[[int, dict], Any]) -> tuple[int, dict | None, Any]:
        """The newest intact checkpoint as ``(step, meta, state)``; ``(0, None, None)`` if none.

        ``check_meta(meta)`` may raise (e.g. another config's run: that is an error, not a
        reason to fall back); ``restore(step, meta)`` restores the state
        (:meth:`restore_state`). A corrupt checkpoint is moved to
        ``workdir/corrupt_checkpoints/`` with a warning and the next older one is tried, so
        the run redoes only the tasks after the newest intact one.
        """
        for step in reversed(self.all_steps()):
            try:
                meta = self.restore_meta(step)
                check_meta(meta)
                return step, meta, restore(step, meta)
            except CorruptCheckpointError as e:
                moved = self._set_aside(step)
                warnings.warn(f"{e}; moved it to {moved} and resuming from an older checkpoint",
                              RuntimeWarning, stacklevel=2)
        return 0, None, None

    def _set_aside(self, step: int) -> str:
        if jax.process_index() != 0:
            return "(left for process 0)"
        aside = os.path.join(self.workdir, "corrupt_checkpoints")
        os.makedirs(aside, exist_ok=True)
        target = os.path.join(aside, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(os.path.join(self.directory, str(step)), target)
        self._manager.reload()
        return target

    def close(self) -> None:
        try:
            self._manager.close()
        finally:
            self._release_lock()
