"""The results of one experiment run: write, read back, tabulate (plots live in ``plots``).

The runner produces a plain dict (see ``write_results``); this module only moves it to and from
disk and formats it. Matrices are ``T x T`` with ``[t][i]`` the accuracy on task ``i`` after
learning tasks ``0..t``; cells above the diagonal and whole rows that were not evaluated (runs
evaluate only at checkpoints) are ``null`` on disk and NaN in memory.

Files written in the work directory, each atomically (temp file in the same directory, then
``os.replace``), so an interrupted run never leaves a half-written file behind:

* ``results.json``: the dict, strict JSON (NaN and infinities become ``null``);
* ``accuracy.csv``: one row per (tasks learned, task evaluated) of every evaluated row.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import numpy as np

__all__ = [
    "CSV_HEADER",
    "MATRIX_KEYS",
    "RESULTS_FILE",
    "ACCURACY_CSV",
    "atomic_write",
    "evaluated_rows",
    "float_matrix",
    "format_table",
    "jsonable",
    "load_results",
    "matrix",
    "row_mean",
    "write_results",
]

RESULTS_FILE = "results.json"
ACCURACY_CSV = "accuracy.csv"
MATRIX_KEYS = ("accuracy_matrix", "inferred_accuracy_matrix", "task_inference_matrix")
CSV_HEADER = ("learned_tasks", "task", "gg_accuracy", "inferred_accuracy",
              "task_inference_accuracy")

PathLike = str | os.PathLike


def jsonable(obj: Any, where: str = "results") -> Any:
    """``obj`` as plain JSON types: NaN/inf to ``None``, numpy arrays and scalars to lists and
    Python numbers, tuples to lists, paths to strings.

    Raises:
        TypeError: for anything else, naming where in ``obj`` it sits.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), where)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        # Strict JSON has no NaN/Infinity; null is what "not defined" means in the file.
        return x if math.isfinite(x) else None
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{where} is a {type(obj).__name__}, which results.json cannot hold")


def atomic_write(path: pathlib.Path, write: Callable[[IO], Any], binary: bool = False) -> None:
    """Call ``write`` on a temp file beside ``path`` (text, UTF-8, or binary), then rename it over
    ``path``; on any error the temp file is removed and ``path`` is left as it was.

    The temp file is in the same directory so that ``os.replace`` is a rename on one file system,
    which is atomic: readers see the old file or the new one, never a truncated one.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        mode = "wb" if binary else "w"
        kwargs = {} if binary else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; results are meant to be shared like any other output.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def matrix(results: Mapping[str, Any], key: str) -> np.ndarray | None:
    """The ``T x T`` float64 matrix ``results[key]`` with NaN for ``null``/``None`` cells.

    A row that is itself ``null`` (not evaluated) becomes a row of NaN.

    Returns:
        The matrix, or None if the key is missing or its value is ``null`` (e.g. the inferred
        matrices of a GG run).

    Raises:
        ValueError: if the value is not a square matrix.
    """
    value = results.get(key)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        out = np.array(value, dtype=np.float64)
    else:
        n = len(value)
        for t, row in enumerate(value):
            if row is not None and len(row) != n:
                raise ValueError(f"{key} row {t} has {len(row)} entries, expected {n}")
        out = float_matrix(value, n)
    if out.ndim != 2 or out.shape[0] != out.shape[1]:
        raise ValueError(f"{key} must be a square matrix, got shape {out.shape}")
    return out


def float_matrix(rows: Sequence[Any], n: int | None = None) -> np.ndarray:
    """Rows of numbers and None (a row may be None) as float64 ``[len(rows), n]`` (default
    ``n = len(rows)``) with NaN where undefined. A row whose one defined cell is its diagonal,
    as a long run measures after every task, costs a count instead of a pass in Python."""
    n = len(rows) if n is None else n
    out = np.full((len(rows), n), np.nan)
    for t, row in enumerate(rows):
        if row is None:
            continue
        missing = row.count(None) if isinstance(row, list) else 0
        if missing == len(row):
            continue
        one = missing == len(row) - 1 and t < len(row) and row[t] is not None
        cells = [row[t]] if one else [v for v in row if v is not None]
        if not all(isinstance(v, (int, float, np.integer, np.floating)) for v in cells):
            raise TypeError(f"row {t} holds something other than numbers and None")
        if one:
            out[t, t] = row[t]
        else:
            out[t, : len(row)] = np.array(row, dtype=np.float64)  # None -> NaN
    return out


def _expand_row(row: Mapping[str, Any], n: int, where: str) -> list:
    """A sparse row ``{"i": value}`` as a list of ``n`` cells (None where not given)."""
    out: list = [None] * n
    for i, v in row.items():
        if not (isinstance(i, str) and i.isdigit() and int(i) < n):
            raise ValueError(f"{where} has a cell {i!r}, expected indices below {n}")
        out[int(i)] = v
    return out


def _square(m: Any, key: str) -> np.ndarray | None:
    """A results matrix (rows of numbers/None/NaN, or an array) as float64, NaN where not
    defined; refuses anything but a square matrix of numbers."""
    if m is None:
        return None
    rows = list(m)
    try:
        if any(r is not None and len(r) != len(rows) for r in rows):
            raise ValueError(f"a row's length is not {len(rows)}")
        return float_matrix(rows)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{key} must be a square matrix of numbers (None where not "
                         f"evaluated): {e}") from None


def _compact_rows(a: np.ndarray | None) -> list | None:
    """A float matrix (:func:`_square`) as the file stores it: ``null`` for a row with no
    defined cell, ``{"i": value}`` for one with under 1/8 of its cells defined (the diagonal
    entry a run measures after every task), else the row with ``null`` for undefined cells.
    Linear in the cells, in numpy: a 2500-task run rewrites it after every task."""
    if a is None:
        return None
    defined = np.isfinite(a)  # NaN and inf are "not defined", as jsonable makes them
    out: list = []
    for t, count in enumerate(defined.sum(axis=1)):
        if count == 0:
            out.append(None)
        elif 8 * count < a.shape[1]:
            out.append({str(int(i)): float(a[t, i]) for i in np.flatnonzero(defined[t])})
        else:
            out.append([float(v) if d else None for v, d in zip(a[t], defined[t], strict=True)])
    return out


def _matrices(results: Mapping[str, Any]) -> list[np.ndarray | None]:
    return [matrix(results, k) for k in MATRIX_KEYS]


def evaluated_rows(results: Mapping[str, Any], *, complete: bool = True) -> list[int]:
    """The rows ``t`` evaluated on every learned task (cells ``0..t`` defined) in some matrix.

    These are the checkpoints at which the run evaluated (after learning ``t + 1`` tasks). With
    ``complete=False``: every row with any defined cell, e.g. the diagonal ``R[t, t]`` that a
    checkpointed run measures right after each task.
    """
    rows: set[int] = set()
    for m in _matrices(results):
        if m is not None:
            lower = np.where(np.tril(np.ones(m.shape, dtype=bool)), m, np.nan)
            defined = ~np.isnan(lower)
            if complete:
                ok = [t for t in range(m.shape[0]) if defined[t, : t + 1].all()]
            else:
                ok = [int(t) for t in np.flatnonzero(defined.any(axis=1))]
            rows.update(ok)
    return sorted(rows)


def _cell(m: np.ndarray | None, t: int, i: int) -> str:
    if m is None or i >= m.shape[0] or math.isnan(m[t, i]):
        return ""
    # repr is the shortest string that reads back to the same float.
    return repr(float(m[t, i]))


def _csv_text(mats: Sequence[np.ndarray | None]) -> str:
    """accuracy.csv from the float matrices of :data:`MATRIX_KEYS`: one line per defined cell."""
    mats = [None if m is None else np.where(np.isfinite(m), m, np.nan) for m in mats]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    defined = None
    for m in mats:
        if m is not None:
            here = np.tril(~np.isnan(m))
            defined = here if defined is None else defined | here
    if defined is not None:
        for t, i in zip(*np.nonzero(defined), strict=True):  # row-major: t, then i
            writer.writerow([int(t) + 1, int(i), *(_cell(m, t, i) for m in mats)])
    return buf.getvalue()


def _dumps(data: dict[str, Any]) -> str:
    """``json.dumps(data, indent=2)``, except that each matrix row is written on one line.

    Plain indent=2 puts every cell on its own line: ~12 bytes per null, hundreds of MB for the
    2500-task matrices. allow_nan=False guarantees strict JSON (jsonable mapped NaN to null).
    """
    parts = []
    for key, value in data.items():
        if key in MATRIX_KEYS and isinstance(value, list) and value:
            rows = ",\n".join("    " + json.dumps(row, allow_nan=False) for row in value)
            text = "[\n" + rows + "\n  ]"
        else:
            text = json.dumps(value, indent=2, allow_nan=False).replace("\n", "\n  ")
        parts.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n" if parts else "{}\n"


def write_results(workdir: PathLike, results: Mapping[str, Any]) -> pathlib.Path:
    """Write ``results.json`` and ``accuracy.csv`` into ``workdir`` (created if missing).

    Expected keys: ``config`` (dict), ``seed``, ``versions``, ``device``, ``scenario`` (GG, GNu,
    GNs or NNs), ``num_tasks``, the three matrices of ``MATRIX_KEYS`` (the inferred ones null for
    GG), ``task_inference_accuracy``, ``average_accuracy``, ``gg_average_accuracy``,
    ``backward_transfer``, ``forgetting``, ``bytes_per_task``, ``wall_time_per_task``,
    ``masks_allocated``. Only the matrices are interpreted here; other keys are stored as given
    (NaN as ``null``, arrays as lists). A matrix row with no defined cell (not evaluated) is
    stored as a single ``null``, one with under 1/8 of its cells defined as ``{"i": value}``
    (:func:`load_results` expands it again), and each row takes one line, so that a 2500-task
    run with a few checkpoints stays small and quick to rewrite after every task.

    Returns:
        The path of ``results.json``.

    Raises:
        TypeError: if a value cannot be stored as JSON.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = jsonable({k: v for k, v in results.items() if k not in MATRIX_KEYS})
    mats = [_square(results.get(key), key) for key in MATRIX_KEYS]
    for key, a in zip(MATRIX_KEYS, mats, strict=True):
        if key in results:
            data[key] = _compact_rows(a)
    data = {k: data[k] for k in results}  # the caller's key order
    text = _dumps(data)
    csv_text = _csv_text(mats)
    out = workdir / RESULTS_FILE
    atomic_write(out, lambda f: f.write(text))
    atomic_write(workdir / ACCURACY_CSV, lambda f: f.write(csv_text))
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def load_results(workdir_or_file: PathLike) -> dict[str, Any]:
    """Read back a ``results.json``, given its work directory or the file itself.

    Raises:
        FileNotFoundError: if there is no such file (the message names the path).
        ValueError: if the file is not strict JSON holding an object (the message names it).
    """
    path = pathlib.Path(workdir_or_file)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no results file", str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"corrupt results file {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"corrupt results file {path}: top level is a {type(data).__name__}, "
                         "expected an object")
    for key in MATRIX_KEYS:
        rows = data.get(key)
        if isinstance(rows, list):
            data[key] = [_expand_row(r, len(rows), f"corrupt results file {path}: {key} row {t}")
                         if isinstance(r, dict) else r for t, r in enumerate(rows)]
    return data


def _number(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _fmt(x: Any) -> str:
    x = _number(x)
    return "-" if x is None else f"{x:.4f}"


def row_mean(m: np.ndarray | None, t: int) -> float | None:
    """Mean of the defined cells of row ``t`` over tasks ``0..t``; None if there are none."""
    if m is None:
        return None
    vals = m[t, : t + 1]
    vals = vals[~np.isnan(vals)]
    # A plain mean over the defined cells: np.nanmean would warn (an error in tests) on none.
    return float(vals.mean()) if vals.size else None


def _total(xs: Sequence[Any] | None) -> float | None:
    vals = [v for v in map(_number, xs or []) if v is not None]
    return math.fsum(vals) if vals else None


def format_table(results: Mapping[str, Any]) -> str:
    """A plain-text table of the mean accuracies at each evaluated row, then a summary.

    Means are over tasks ``0..t`` (the defined cells); ``-`` marks what is not defined. The text
    depends only on the values, so a dict and its ``load_results`` round trip (NaN read back as
    ``None``) format identically.
    """
    gg, inferred, ti = _matrices(results)
    cols = ("tasks learned", "GG accuracy", "inferred accuracy", "task inference")
    widths = [len(c) for c in cols]
    lines = ["  ".join(cols)]
    rows = evaluated_rows(results)
    for t in rows:
        cells = (str(t + 1), *(_fmt(row_mean(m, t)) for m in (gg, inferred, ti)))
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    if not rows:
        lines.append("(no evaluated rows)")
    total = _total(results.get("wall_time_per_task"))
    summary = [
        ("scenario", str(results.get("scenario", "-"))),
        ("average accuracy", _fmt(results.get("average_accuracy"))),
        ("GG average accuracy", _fmt(results.get("gg_average_accuracy"))),
        ("backward transfer", _fmt(results.get("backward_transfer"))),
        ("forgetting", _fmt(results.get("forgetting"))),
        ("task-inference accuracy", _fmt(results.get("task_inference_accuracy"))),
        ("bytes per task", _fmt(results.get("bytes_per_task"))),
        ("total wall time (s)", _fmt(total)),
    ]
    if results.get("masks_allocated") is not None:
        summary.append(("masks allocated", str(int(results["masks_allocated"]))))
    key_width = max(len(k) for k, _ in summary)
    lines.append("")
    lines.extend(f"{k.ljust(key_width)}  {v}" for k, v in summary)
    return "\n".join(lines) + "\n"
