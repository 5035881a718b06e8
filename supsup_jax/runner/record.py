"""What a run records: its config fingerprint, package versions, the accuracy matrices and the
results dict that ``results.write_results`` stores as ``results.json``."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import subprocess
import sys
from typing import Any

import jax
import numpy as np

from supsup_jax import kernels, metrics, results
from supsup_jax.checkpoint import CheckpointError

__all__ = [
    "accuracy_row",
    "check_resumable",
    "comparable",
    "config_dict",
    "matrix",
    "provenance",
    "stored_num_tasks",
    "results_dict",
    "summary",
    "versions",
]

# Keys that do not change what a run computes, so a resumed run may differ in them.
RUNTIME_KEYS = ("quiet", "data_dir", "tensorboard")
# Fields added to the schema after runs were written without them, with the value those runs
# used implicitly: a stored config that lacks one still matches that value.
# A dotted key is a field of a sub-dict (values as the JSON fingerprint holds them).
ADDED_FIELDS = {"method": "supsup", "rand_w": False, "weight_lr": None,
                "psp_context": "orthogonal", "interpolation": "bilinear",
                "inference.shortlist": 16, "inference.rerank": "s", "inference.layers": [],
                "nns.boundaries": "aligned", "nns.offset": 50, "nns.visits": 2,
                "data_factory": None, "stream_factory": None}


def config_dict(config) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def comparable(config) -> str:
    """The config as canonical JSON, without :data:`RUNTIME_KEYS`."""
    d = config_dict(config)
    return json.dumps({k: v for k, v in d.items() if k not in RUNTIME_KEYS}, sort_keys=True,
                      default=str)


def _drop_unused(d: dict) -> None:
    """Remove the fields a fingerprint's run ignores: the NNs block outside scenario NNs, and
    the offset and pieces that its stream does not use."""
    if d.get("scenario") != "NNs":
        d.pop("nns", None)
    nns = d.get("nns")
    if isinstance(nns, dict):
        unused = {"aligned": ("offset", "visits"), "continuous": ("visits",)}
        for name in unused.get(nns.get("boundaries"), ()):
            nns.pop(name, None)


def stored_num_tasks(meta: dict) -> int:
    """The ``num_tasks`` of the run that wrote a checkpoint's ``meta``."""
    return int(json.loads(meta["config"])["num_tasks"])


def check_resumable(stored: str | None, config, where: str, *, extensible: bool = False
                    ) -> None:
    """Raise :class:`CheckpointError` unless the stored fingerprint is ``config``'s; with
    ``extensible``, ``config`` may have more tasks (and other ``eval_at`` points): the run
    continues from its last task and keeps its rows."""
    if stored == comparable(config):
        return
    old, now = json.loads(stored or "{}"), json.loads(comparable(config))
    if extensible and isinstance(old.get("num_tasks"), int):
        if now["num_tasks"] < old["num_tasks"]:
            raise CheckpointError(
                f"{where} holds a run of {old['num_tasks']} tasks and num_tasks is "
                f"{now['num_tasks']}: a run can be extended with more tasks, not shortened; use "
                "another workdir")
        for k in ("num_tasks", "eval_at"):
            old.pop(k, None)
            now.pop(k, None)
    filled = {}
    for key, value in ADDED_FIELDS.items():  # what a run from before the field implied
        parent, _, name = key.rpartition(".")
        holder = old.get(parent) if parent else old
        if isinstance(holder, dict) and name not in holder and old:
            holder[name] = filled[key] = value
    _drop_unused(old)
    _drop_unused(now)
    diff = {}
    for k in sorted(set(old) | set(now)):
        if k not in old and k == "hopfield" and now.get("method") != "hopsupsup":
            continue
        if old.get(k) != now.get(k):
            diff[k] = (old.get(k), now.get(k))
    if diff:
        hints = [f"--config.{k}={v}" for k, v in filled.items()
                 if _get(old, k) is not None and _get(now, k) != v]
        hint = (f"; it predates field(s) it ran as {' '.join(hints)}: add that to resume it"
                if hints else "")
        raise CheckpointError(
            f"{where} holds a run of a different config (field: stored vs now: "
            + "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
            + f"){hint}; or use another workdir or delete that one"
            + ("" if extensible or "num_tasks" not in diff else
               " (only SupSup runs in GG, GNu or GNs can be extended with more tasks)"))


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("supsup-jax", "jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def accuracy_row(t, test_set, only, given, inferred=None) -> dict:
    """Row ``t`` of the accuracy matrices for tasks ``0..t``.

    Args:
      test_set: ``i -> (images, labels)``.
      only: None for every learned task, or ``i`` for entry ``i`` alone (the others None).
      given: ``(tasks, test_set) -> [accuracy per task]`` with each task's own state (GG).
      inferred: ``(i, x, y) -> (accuracy, task_accuracy)`` with the task inferred, if any.
    """
    tasks = list(range(t + 1)) if only is None else [only]
    got = dict(zip(tasks, given(tasks, test_set), strict=True))
    gg = [got.get(i) for i in range(t + 1)]
    row = {"gg": gg}
    if inferred is not None:
        inf, task_acc = [None] * (t + 1), [None] * (t + 1)
        for i in tasks:
            inf[i], task_acc[i] = inferred(i, *test_set(i))
        row.update(inferred=inf, task_inference=task_acc)
    return row


def pack_rows(rows: dict) -> dict:
    """``rows`` for a checkpoint's meta: a row's list that holds only its last entry (the new
    task, as measured after every task) as ``{"new": value}``, so that a 2500-task run's meta
    stays linear in the tasks instead of quadratic. :func:`unpack_rows` reverses it."""
    def one(t, v):
        only_new = (isinstance(v, list) and len(v) == int(t) + 1 > 1 and v[-1] is not None
                    and v.count(None) == len(v) - 1)
        return {"new": v[-1]} if only_new else v

    return {t: {k: one(t, v) for k, v in r.items()} for t, r in rows.items()}


def unpack_rows(rows: dict) -> dict:
    """The rows of :func:`pack_rows` (or of a checkpoint written before it) as lists again."""
    def one(t, v):
        return [None] * int(t) + [v["new"]] if isinstance(v, dict) and set(v) == {"new"} else v

    return {t: {k: one(t, v) for k, v in r.items()} for t, r in rows.items()}


def matrix(rows, num, key):
    """``rows[str(t)][key]`` as a ``num x num`` list of lists (None where not evaluated)."""
    if not any(key in r for r in rows.values()):
        return None
    m = [[None] * num for _ in range(num)]
    for t, r in rows.items():
        values = r.get(key) or []
        m[int(t)][: len(values)] = values  # a slice: linear in C, not per cell in Python
    return m


def summary(matrix):
    """ACC, BWT and forgetting at the last fully evaluated row (see ``metrics``)."""
    if matrix is None:
        return None, None, None
    r = results.float_matrix(matrix)
    full = [t for t in range(len(r)) if not np.isnan(r[t, : t + 1]).any()]
    if not full:
        return None, None, None
    sub = r[: full[-1] + 1, : full[-1] + 1]
    acc = float(np.mean(sub[-1]))
    if np.isnan(np.diag(sub)).any():  # e.g. NNs evaluated only at checkpoints
        return acc, None, None
    return acc, metrics.backward_transfer(sub), metrics.forgetting(sub)


@functools.cache
def _git_commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes), or None outside a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        run = lambda *a: subprocess.run(("git", "-C", here, *a), capture_output=True,  # noqa: E731
                                        text=True, timeout=10, check=True).stdout.strip()
        commit = run("rev-parse", "HEAD")
        return commit + ("+dirty" if run("status", "--porcelain", "--untracked-files=no")
                         else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(stream) -> dict[str, Any]:
    """Where a run's numbers come from: code (git commit), command line, data source, the bank
    products' kernel variant, and the devices."""
    device = jax.devices()[0]
    return {
        "git_commit": _git_commit(),
        "command_line": [os.path.basename(sys.executable), *sys.argv],
        "dataset": stream.dataset.name,
        "data_source": stream.dataset.source or "given in memory",
        "bank_products": kernels.kernel_status(),
        "cpu_simd_flags": sorted(f for f in kernels.cpu_flags()
                                 if f.startswith(("avx", "fma", "neon", "asimd", "sve"))),
        "device_kind": f"{device.platform}: {device.device_kind}",
        "devices": jax.device_count(),
        "processes": jax.process_count(),
    }


def results_dict(config, rows, wall, bytes_per_task, masks_allocated, **extra) -> dict:
    """The results of a run from its rows ``{str(t): {"gg": [...], "inferred": [...], ...}}``;
    ``extra`` adds fields (e.g. ``provenance=provenance(stream)``)."""
    num = config.num_tasks
    gg = matrix(rows, num, "gg")
    inferred = matrix(rows, num, "inferred")
    task_inf = matrix(rows, num, "task_inference")
    main = inferred if inferred is not None else gg
    acc, bwt, fgt = summary(main) if main is not None else (None, None, None)
    gg_acc = summary(gg)[0] if gg is not None else None
    tia = None
    if task_inf is not None:
        full = [t for t, r in rows.items()
                if "task_inference" in r and None not in r["task_inference"]]
        tia = float(np.mean(rows[max(full, key=int)]["task_inference"])) if full else None
    return {
        "config": config_dict(config),
        "seed": config.seed,
        "versions": versions(),
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "scenario": config.scenario,
        "num_tasks": num,
        "accuracy_matrix": gg,
        "inferred_accuracy_matrix": inferred,
        "task_inference_matrix": task_inf,
        "task_inference_accuracy": tia,
        "average_accuracy": acc,
        "gg_average_accuracy": gg_acc,
        "backward_transfer": bwt,
        "forgetting": fgt,
        "method": config.method,
        "bytes_per_task": bytes_per_task,
        "wall_time_per_task": list(wall),
        "masks_allocated": masks_allocated,
        **extra,
    }
