"""What a run shows while it runs: a progress bar per task and TensorBoard scalars."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from tqdm.auto import tqdm

from supsup_jax import distributed

__all__ = ["Progress", "Scalars", "row_scalars"]


@dataclasses.dataclass
class Progress:
    """A bar over tasks and one over each task's steps (silent when ``quiet`` or not primary)."""

    quiet: bool
    num_tasks: int
    start: int

    def __post_init__(self):
        self.quiet = self.quiet or not distributed.is_primary()
        self.tasks = tqdm(total=self.num_tasks, initial=self.start, desc="tasks", unit="task",
                          disable=self.quiet, dynamic_ncols=True)

    def steps(self, t: int, total: int):
        return tqdm(total=total, desc=f"task {t}", unit="step", leave=False,
                    disable=self.quiet, dynamic_ncols=True)

    def task_done(self, line: str):
        self.tasks.update(1)
        if not self.quiet:
            tqdm.write(line)

    def close(self):
        self.tasks.close()


class Scalars:
    """TensorBoard scalars in ``workdir/tensorboard`` when tensorboardX is installed."""

    def __init__(self, workdir: str, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, float | None]) -> None:
        if self.writer is not None:
            for name, value in scalars.items():
                if value is not None:
                    self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def row_scalars(row: dict | None, t: int) -> dict[str, float | None]:
    """The new task's accuracies and, on rows that evaluated every learned task, their means."""
    if not row:
        return {}
    out = {}
    for key in ("gg", "inferred", "task_inference"):
        values = row.get(key)
        if values is None:
            continue
        out[f"{key}/new_task"] = values[t]
        if None not in values:
            out[f"{key}/mean_learned"] = float(np.mean(values))
    return out
