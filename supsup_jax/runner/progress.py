"""What a run shows and logs while it runs.

On a terminal: a bar over tasks and one over each task's steps, with the chunk's loss and
accuracy; elsewhere (a log file, CI): plain lines, at most ten per task. Every chunk's loss and
accuracy and every task's summary also go to ``WORKDIR/metrics.jsonl`` (one JSON object per
line, for notebooks) and, with tensorboardX installed and ``config.tensorboard``, to TensorBoard
(``WORKDIR/tensorboard``: loss and accuracy curves over global steps, per-task scalars, the
config as text).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import jax
import numpy as np
from tqdm.auto import tqdm

from supsup_jax import distributed

__all__ = ["METRICS_FILE", "Progress", "TaskProgress", "compile_seconds", "row_scalars"]

METRICS_FILE = "metrics.jsonl"


class Progress:
    """A run's progress display and its metrics log (silent and unlogged when not primary).

    Args:
      quiet: no display (the metrics are still logged).
      num_tasks: tasks in the run; start: tasks already finished (a resumed run).
      workdir: where ``metrics.jsonl`` and ``tensorboard/`` go (None: no logs).
      tensorboard: also write TensorBoard summaries; config: recorded there as text.
      interactive: bars (True) or plain lines (False); default: whether stderr is a terminal.
    """

    def __init__(self, quiet: bool, num_tasks: int, start: int, workdir: str | None = None,
                 *, tensorboard: bool = False, config=None, interactive: bool | None = None):
        primary = distributed.is_primary()
        self.quiet = quiet or not primary
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.num_tasks = num_tasks
        self.tasks = tqdm(total=num_tasks, initial=start, desc="tasks", unit="task",
                          disable=self.quiet or not self.interactive, dynamic_ncols=True)
        self.log = None
        self.writer = None
        if workdir is None or not primary:
            return
        path = os.path.join(workdir, METRICS_FILE)
        _drop_records_from(path, start)  # tasks from ``start`` on are trained again
        self.log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                warnings.warn("config.tensorboard is set but tensorboardX is not installed "
                              "(pip install -e .[tensorboard]); no TensorBoard summaries",
                              RuntimeWarning, stacklevel=2)
            else:
                self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
                if config is not None and start == 0:
                    text = json.dumps(config.to_dict(), indent=1, sort_keys=True, default=str)
                    self.writer.add_text("config", f"```\n{text}\n```", 0)

    def steps(self, t: int, total: int) -> TaskProgress:
        """The progress of task ``t``'s ``total`` training steps."""
        return TaskProgress(self, t, total)

    def record(self, entry: dict) -> None:
        """Append one JSON object to ``metrics.jsonl``."""
        if self.log is not None:
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """TensorBoard scalars at global ``step`` (None values are skipped)."""
        if self.writer is not None:
            for name, value in values.items():
                if value is not None:
                    self.writer.add_scalar(name, value, step)

    def task_done(self, t: int, line: str, summary: dict | None = None) -> None:
        """Task ``t`` finished: the display line, and ``summary`` to the logs."""
        self.tasks.update(1)
        if not self.quiet:
            if self.interactive:
                tqdm.write(line)
            else:
                print(line, file=sys.stderr, flush=True)
        if summary is not None:
            self.record({"task": t, "event": "task_done", **summary})
            self.scalars(t + 1, {k: v for k, v in summary.items() if "/" in k})
            if self.writer is not None:
                self.writer.flush()

    def close(self) -> None:
        self.tasks.close()
        if self.log is not None:
            self.log.close()
        if self.writer is not None:
            self.writer.close()


class TaskProgress:
    """One task's training: a bar or plain lines, and the chunks' metrics to the logs.

    ``chunk(steps_done, metrics)`` is the trainer's ``on_chunk``. A chunk's device scalars are
    read when the next chunk arrives (the trainer is then one chunk ahead, so reading them does
    not stall it). ``steps_per_second()`` leaves out compilation.
    """

    def __init__(self, run: Progress, t: int, total: int):
        self.run, self.t, self.total = run, t, total
        self.start = time.perf_counter()
        self.compiled = compile_seconds()
        self.pending: tuple[int, dict] | None = None
        self.done = 0
        self.bar = tqdm(total=total, desc=f"task {t}", unit="step", leave=False,
                        disable=run.quiet or not run.interactive, dynamic_ncols=True)
        self.next_line = total / 10

    def update(self, steps: int) -> None:
        """``steps`` more steps done (no metrics)."""
        self.done += steps
        self.bar.update(steps)

    def chunk(self, steps_done: int, metrics: dict) -> None:
        self._flush()
        self.update(steps_done - self.done)
        self.pending = (steps_done, metrics)

    def _flush(self) -> None:
        if self.pending is None:
            return
        steps_done, metrics = self.pending
        self.pending = None
        values = {k: float(np.asarray(v)) for k, v in metrics.items()}
        self.run.record({"task": self.t, "step": steps_done, **values,
                         "seconds": time.perf_counter() - self.start})
        self.run.scalars(self.t * self.total + steps_done,
                         {f"train/{k}": v for k, v in values.items()})
        text = ", ".join(f"{k} {v:.4f}" for k, v in sorted(values.items(),
                                                            key=lambda kv: kv[0] != "loss"))
        if self.run.interactive:
            self.bar.set_postfix_str(text, refresh=False)
        elif not self.run.quiet and steps_done >= self.next_line:
            print(f"task {self.t}: step {steps_done}/{self.total}, {text}", file=sys.stderr,
                  flush=True)
            self.next_line = steps_done + self.total / 10

    def steps_per_second(self) -> float:
        """Training steps per second over the task's time without JAX's tracing, lowering and
        compilation (measured by ``jax.monitoring``)."""
        busy = time.perf_counter() - self.start - (compile_seconds() - self.compiled)
        return self.done / max(busy, 1e-9)

    def close(self) -> float:
        """Log the last chunk, close the bar; returns :meth:`steps_per_second`."""
        rate = self.steps_per_second()
        self._flush()
        self.bar.close()
        return rate


_COMPILED = [0.0]  # seconds JAX spent tracing, lowering and compiling in this process
_LISTENING = []


def _on_event(name: str, seconds: float, **_) -> None:
    if name.startswith("/jax/core/compile/"):
        _COMPILED[0] += seconds


def compile_seconds() -> float:
    """Seconds this process has spent in JAX's tracing, lowering and compilation so far."""
    if not _LISTENING:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _LISTENING.append(True)
    return _COMPILED[0]


def _drop_records_from(path: str, start: int) -> None:
    """Keep only the records of tasks before ``start`` (a resumed run redoes the others)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        kept = [ln for ln in f if ln.strip() and json.loads(ln).get("task", 0) < start]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


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
