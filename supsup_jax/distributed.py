"""Several processes (hosts) through ``jax.distributed``; process 0 writes, all compute.

Launch one process per host with the same ``--coordinator_address`` (``host:port`` of process 0),
``--num_processes`` and each its own ``--process_id`` (or the environment variables
``SUPSUP_COORDINATOR``, ``SUPSUP_NUM_PROCESSES``, ``SUPSUP_PROCESS_ID``). Training is data
parallel over every device of every process (:mod:`supsup_jax.sharding`); each process feeds only
its own share of the examples. Evaluation runs on every process (identically), and only process 0
writes checkpoints, results and plots.
"""

from __future__ import annotations

import os

import jax

__all__ = ["initialize", "is_primary"]


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Join a multi-process run when a coordinator is given (argument or environment).

    Returns:
      True when ``jax.distributed`` was initialised, False for a single-process run.
    """
    coordinator = coordinator or os.environ.get("SUPSUP_COORDINATOR")
    if not coordinator:
        return False
    num = num_processes if num_processes is not None else os.environ.get("SUPSUP_NUM_PROCESSES")
    pid = process_id if process_id is not None else os.environ.get("SUPSUP_PROCESS_ID")
    if num is None or pid is None:
        raise ValueError("a multi-process run needs the number of processes and this process's "
                         "id (--num_processes/--process_id or SUPSUP_NUM_PROCESSES/"
                         "SUPSUP_PROCESS_ID) besides the coordinator address")
    # CPU devices need a collectives backend across processes; GPUs and TPUs ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(num),
                               process_id=int(pid))
    return True


def is_primary() -> bool:
    """Whether this process writes (process 0)."""
    return jax.process_index() == 0
