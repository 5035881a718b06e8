"""PNG figures of a results dict (see ``results.write_results`` for its keys).

Figures are built on ``matplotlib.figure.Figure`` with an explicit ``FigureCanvasAgg``: no pyplot,
so no global figure state and no backend selection (which would warn, or open windows, depending
on the environment). Each file is written atomically like the results themselves.
"""

from __future__ import annotations

import os
import pathlib
import zlib
from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from supsup_jax import results as results_lib

__all__ = [
    "ANNOTATE_UP_TO",
    "DPI",
    "accuracy_matrix_figure",
    "accuracy_vs_tasks_figure",
    "chance_level",
    "integer_ticks",
    "method_color",
    "method_label",
    "new_figure",
    "plot_hopfield_recovery",
    "plot_accuracy_matrix",
    "plot_accuracy_vs_tasks",
    "plot_task_inference",
    "save_figure",
    "write_plots",
]

DPI = 120
# Matrices up to this size show each cell's value.
ANNOTATE_UP_TO = 12
_INFERENCE = {"one_shot": "One-Shot", "binary": "Binary", "exhaustive": "Exhaustive",
              "gradient_descent": "GD on alpha", "shortlist": "Shortlist"}
_METHODS = {"supsup": "SupSup", "batche": "BatchE", "psp": "PSP",
            "separate_heads": "Separate heads", "upper_bound": "Upper bound",
            "lower_bound": "Lower bound", "hopsupsup": "HopSupSup"}
# One colour per method across every figure (the paper's methods first).
_COLORS = {"SupSup (GNu, One-Shot G)": "tab:blue", "SupSup (GNu, One-Shot H)": "tab:cyan",
           "SupSup (GNu, Binary H)": "tab:blue", "SupSup (GNu, Binary G)": "tab:cyan",
           "SupSup (GG)": "navy", "SupSup Transfer (GG)": "tab:brown",
           "SupSup (NNs)": "tab:olive", "SupSup (GNs, One-Shot G)": "tab:pink",
           "BatchE (GG)": "tab:orange", "BatchE Rand W (GG)": "gold",
           "BatchE (GNu, One-Shot G)": "tab:red", "PSP (GG)": "tab:green",
           "Separate heads (GG)": "tab:purple", "Separate heads Rand W (GG)": "plum",
           "Upper bound (GG)": "black", "Lower bound (GG)": "tab:gray"}
_PALETTE = matplotlib.colormaps["tab20"].colors


def method_label(results: Mapping[str, Any]) -> str:
    """A paper-style name of a run's method, e.g. ``"SupSup (GNu, One-Shot G)"``,
    ``"BatchE (GG)"``, ``"SupSup Transfer (GG)"``."""
    config = results.get("config") or {}
    method = str(config.get("method") or results.get("method") or "supsup")
    name = _METHODS.get(method, method)
    if config.get("transfer"):
        name += " Transfer"
    if config.get("rand_w"):
        name += " Rand W"
    scenario = str(results.get("scenario") or config.get("scenario") or "")
    inference = config.get("inference") or {}
    if scenario in ("GNu", "GNs") and inference:
        how = _INFERENCE.get(inference.get("method"), str(inference.get("method")))
        return f"{name} ({scenario}, {how} {str(inference.get('objective', '')).upper()})"
    return f"{name} ({scenario})" if scenario else name


def method_color(label: str):
    """The colour of ``label`` (:func:`method_label`) in every figure; labels outside the
    paper's methods get a colour fixed by the label's text."""
    if label in _COLORS:
        return _COLORS[label]
    return _PALETTE[zlib.crc32(label.encode()) % len(_PALETTE)]


# Classes per task of the fixed streams, for results written before ``classes_per_task``.
_STREAM_CLASSES = {"split_mnist": 2, "split_cifar100": 5, "split_imagenet": 10}


def chance_level(results: Mapping[str, Any]) -> float | None:
    """``1 / classes`` of a task (None when neither the results nor their config say)."""
    classes = results.get("classes_per_task")
    config = results.get("config") or {}
    if not classes and config.get("stream") in ("permuted", "rotated") and config.get(
            "dataset") in ("mnist", "fashion_mnist"):
        classes = 10
    elif not classes:
        classes = (config.get("classes_per_task") if config.get("stream") == "split"
                   else _STREAM_CLASSES.get(config.get("stream")))
    return 1.0 / classes if classes else None


def _chance_line(ax, results) -> None:
    chance = chance_level(results)
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle=":", linewidth=1,
                   label=f"chance (1/{round(1 / chance)})")


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A matplotlib figure that needs no display (Agg canvas), laid out by constrained layout."""
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> pathlib.Path:
    """Write ``fig`` as PNG to ``path`` atomically; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp name does not end in .png, so the format is given explicitly.
    results_lib.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI), binary=True)
    return path


def _row_means(m: np.ndarray, rows: list[int]) -> tuple[list[int], list[float]]:
    """(tasks learned, mean accuracy over the defined cells of tasks 0..t) per evaluated row."""
    xs, ys = [], []
    for t in rows:
        mean = results_lib.row_mean(m, t)
        if mean is not None:
            xs.append(t + 1)
            ys.append(mean)
    return xs, ys


def integer_ticks(*axes_) -> None:
    """Task counts and indices are integers: no ticks at 1.5 tasks."""
    for axis in axes_:
        axis.set_major_locator(MaxNLocator(integer=True))


def plot_accuracy_vs_tasks(results: Mapping[str, Any], path: str | os.PathLike, *,
                           ylim: tuple[float, float] = (0.0, 1.0)) -> pathlib.Path:
    """Write :func:`accuracy_vs_tasks_figure` as a PNG; returns its path."""
    return save_figure(accuracy_vs_tasks_figure(results, ylim=ylim), path)


def accuracy_vs_tasks_figure(results: Mapping[str, Any], *,
                             ylim: tuple[float, float] = (0.0, 1.0)) -> Figure:
    """Mean accuracy over the learned tasks against the number of tasks learned.

    One line with the task given (GG) and, when the run inferred tasks, one with the task
    inferred (drawn first, so that GG stays visible where they coincide), and the chance level.
    Only evaluated rows are plotted. ``ylim``: the y range (the same for every run by default,
    so that a small change does not look like a cliff).

    Returns:
        The path of the PNG written.
    """
    rows = results_lib.evaluated_rows(results)
    scenario = str(results.get("scenario", ""))
    fig = new_figure((6.0, 4.0))
    ax = fig.add_subplot()
    curves = [("inferred_accuracy_matrix", f"{scenario}, task inferred", "s-", 7),
              ("accuracy_matrix", "GG, task given", "o--", 4)]
    for key, label, style, size in curves:
        m = results_lib.matrix(results, key)
        if m is not None:
            xs, ys = _row_means(m, rows)
            ax.plot(xs, ys, style, label=label, markersize=size)
    _chance_line(ax, results)
    ax.set_ylim(*ylim)
    ax.set_xlabel("number of tasks learned")
    integer_ticks(ax.xaxis)
    ax.set_ylabel("mean accuracy over learned tasks")
    ax.set_title(method_label(results))
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return fig


def plot_accuracy_matrix(results: Mapping[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """Write :func:`accuracy_matrix_figure` as a PNG; returns its path."""
    return save_figure(accuracy_matrix_figure(results), path)


def accuracy_matrix_figure(results: Mapping[str, Any]) -> Figure:
    """Heat map of the GG accuracy matrix, and of the inferred one beside it when present.

    Undefined cells (above the diagonal, rows not evaluated) are left blank; up to
    :data:`ANNOTATE_UP_TO` tasks, each cell shows its value.
    """
    panels = [("accuracy_matrix", "task given (GG)")]
    if results.get("inferred_accuracy_matrix") is not None:
        panels.append(("inferred_accuracy_matrix", f"{results.get('scenario', '')}, task inferred"))
    mats = [(results_lib.matrix(results, k), title) for k, title in panels]
    mats = [(m, title) for m, title in mats if m is not None]
    finite = np.concatenate([m[np.isfinite(m)] for m, _ in mats] or [np.zeros(0)])
    # Accuracies are fractions; fall back to the data range if a run stored percentages.
    vmax = max(1.0, float(finite.max())) if finite.size else 1.0
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    fig = new_figure((5.0 * max(1, len(mats)) + 1.0, 4.5))
    axes = [fig.add_subplot(1, max(1, len(mats)), k + 1) for k in range(max(1, len(mats)))]
    image = None
    for ax, (m, title) in zip(axes, mats, strict=False):
        n = m.shape[0]
        # Rows are labelled by tasks learned (1..T), columns by task index (0..T-1).
        image = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=0.0, vmax=vmax,
                          interpolation="nearest", aspect="auto",
                          extent=(-0.5, n - 0.5, n + 0.5, 0.5))
        ax.set_xlabel("task evaluated")
        ax.set_ylabel("tasks learned")
        integer_ticks(ax.xaxis, ax.yaxis)
        ax.set_title(title)
        if n <= ANNOTATE_UP_TO:
            for (row, col), value in np.ndenumerate(m):
                if np.isfinite(value):
                    ax.text(col, row + 1, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if value < 0.6 * vmax else "black")
    if image is not None:
        fig.colorbar(image, ax=axes, label="accuracy")
    fig.suptitle(method_label(results))
    return fig


def plot_task_inference(results: Mapping[str, Any],
                        path: str | os.PathLike) -> pathlib.Path | None:
    """Bar chart of the task-inference accuracy per task at the last evaluated row.

    Returns:
        The path of the PNG written, or None (nothing written) when the run has no
        task-inference matrix or no defined cell in it.
    """
    m = results_lib.matrix(results, "task_inference_matrix")
    if m is None:
        return None
    rows = [t for t in range(m.shape[0]) if results_lib.row_mean(m, t) is not None]
    if not rows:
        return None
    t = rows[-1]
    tasks = np.arange(t + 1)
    acc = m[t, : t + 1]
    defined = ~np.isnan(acc)
    mean = float(acc[defined].mean())
    fig = new_figure((6.0, 4.0))
    ax = fig.add_subplot()
    ax.bar(tasks[defined], acc[defined], width=0.8 if t < 50 else 1.0)
    ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.4f}")
    ax.set_xlabel("task")
    integer_ticks(ax.xaxis)
    ax.set_ylabel("task-inference accuracy")
    ax.set_ylim(0.0, max(1.05, float(acc[defined].max()) * 1.05))
    ax.set_title(f"{method_label(results)}: after {t + 1} tasks learned")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def write_plots(results: Mapping[str, Any], workdir: str | os.PathLike) -> list[pathlib.Path]:
    """Write ``accuracy_vs_tasks.png``, ``accuracy_matrix.png`` and, when the run inferred tasks,
    ``task_inference.png`` into ``workdir``.

    Returns:
        The paths written, in that order.
    """
    workdir = pathlib.Path(workdir)
    paths = [plot_accuracy_vs_tasks(results, workdir / "accuracy_vs_tasks.png"),
             plot_accuracy_matrix(results, workdir / "accuracy_matrix.png")]
    ti = plot_task_inference(results, workdir / "task_inference.png")
    if ti is not None:
        paths.append(ti)
    return paths


def plot_hopfield_recovery(res: Mapping[str, Any], path: str | os.PathLike):
    """Hamming distance to the true mask against recovery steps, one line per task, one panel
    per ``"method/rule"`` (the paper's Fig. 7, camera-ready numbering). Returns the PNG's path."""
    by = res["hopfield"]["by_recovery"]
    fig = new_figure((6.0 * len(by), 4.0))
    for k, (name, r) in enumerate(by.items()):
        ax = fig.add_subplot(1, len(by), k + 1)
        for i, p in enumerate(r["per_task"]):
            ax.plot(np.arange(len(p["hamming_per_step"])), p["hamming_per_step"],
                    label=f"task {i} (acc {p['accuracy']:.3f})")
        ax.set_xlabel("recovery step (test batch)")
        ax.set_ylabel("Hamming distance to the true mask")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"{res['config'].get('name', '')}: {name}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    return save_figure(fig, path)
