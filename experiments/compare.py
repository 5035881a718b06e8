"""One figure of the paper with all its curves, from one command.

    python -m experiments.compare --figure=permuted_fashion10 --workdir=runs/compare10

runs every method of the figure through the runner (:func:`train_and_evaluate`, each into
``WORKDIR/<method>``, so re-running resumes where it stopped and skips finished methods), then
writes ``WORKDIR/comparison.png`` (mean accuracy over the learned tasks against tasks learned,
one curve per method; GNu curves use the accuracy with the task inferred) and
``WORKDIR/comparison.md`` (a markdown table) and ``WORKDIR/comparison.json`` (curves and
summary metrics, without the matrices). ``--only=a,b`` runs a subset; ``--tiny`` adds the
``tiny`` variant to every config (a smoke test); ``--config.FIELD=VALUE`` overrides a config
field of every method (e.g. ``--config.num_tasks=5``); ``--seeds=N`` runs every method with seeds
``0..N-1`` (into ``WORKDIR/<method>/seed<k>``) and reports mean ± standard deviation (table) and
shaded bands (figure):

    python -m experiments.compare --figure=permuted_fashion10 --seeds=3 --workdir=runs/seeds10

A curve that differs from another only in its task inference is not trained again: it
re-evaluates that run's masks (:data:`REEVALUATES`: ``supsup_gnu_g`` of the 250-task FC and the
2500-task figures and ``supsup_gnu_shortlist`` of the FC one, at a fraction of the training
time), so it runs after that method.

Figures (SPEC 2.2):

* ``permuted``: PermutedMNIST 250 tasks, FC 1024-1024: SupSup GNu (G and H) against BatchE GG
  and PSP GG (paper Fig. 3 right); ``permuted_fashion``: its Fashion-MNIST twin, with the
  shortlist rule (RESULTS.md, issue 14) on the same masks;
* ``permuted_fashion_lenet``: the same with LeNet 300-100 (SupSup output 100; paper Fig. 3 left);
* ``permuted_fashion10``: the same on PermutedFashionMNIST with 10 tasks, evaluated at
  1, 2, 4, 6, 8, 10 tasks (the measured gate in ``experiments/RESULTS.md``);
* ``batche_oneshot``: PermutedMNIST: One-Shot task inference on BatchE's rank-one factors
  (BatchE GNu, output 500) against SupSup GNu and BatchE GG (paper Fig. 5 right);
  ``batche_oneshot_fashion``: its Fashion-MNIST twin;
* ``rotated``: RotatedMNIST 36 tasks, FC 1024-1024: SupSup GNu (Binary H, and G) against BatchE
  GG and PSP GG (paper Fig. 5 left); ``rotated_fashion``: its Fashion-MNIST twin;
* ``output_size_fashion_lenet`` / ``output_size_fashion_fc``: PermutedFashionMNIST GNu, One-Shot
  from one image, output s in {25, 100, 200, 500} with H and with G (paper Fig. 6), on 100
  (LeNet 300-100) or 25 (FC 1024-1024) tasks;
* ``gnu_2500_fashion``: 2500 PermutedFashionMNIST tasks, LeNet 300-100, output 500: SupSup GNu
  (One-Shot H and G) and NNs (budget 2500), each learned task evaluated on 1000 test images
  (twin of paper Fig. 4);
* ``splitcifar100``: GG SplitCIFAR100 (paper Fig. 2 right): SupSup, SupSup Transfer, BatchE,
  BatchE Rand W, separate heads, separate heads Rand W, upper bound, lower bound.
"""

from __future__ import annotations

import ast
import collections
import importlib
import json
import os
import pathlib
import sys
import time

import numpy as np
from absl import app, flags, logging

from supsup_jax import plots, results
from supsup_jax.runner import train_and_evaluate
from supsup_jax.runner.reevaluate import reevaluate

_P = "experiments.configs.compare_permuted"
_C = "experiments.configs.gg_splitcifar100"
_TEN = {"num_tasks": 10, "eval_at": (1, 2, 4, 6, 8, 10)}
_O = "experiments.configs.output_size"
_G = "experiments.configs.gnu_2500"
# 2500 tasks: every learned task on the first 1000 images of its test set (RESULTS.md).
_SUBSET = {"max_eval_examples": 1000}


def _output_sizes(model: str, tasks: dict) -> list[tuple[str, str, str, dict]]:
    return [(f"s{s}_{o}", _O, f"s{s},{o},fashion{model}", tasks)
            for s in (25, 100, 200, 500) for o in ("h", "g")]


# figure -> [(method label, config module, variants, field overrides)]
FIGURES: dict[str, list[tuple[str, str, str, dict]]] = {
    "permuted": [
        ("supsup_gnu_g", _P, "supsup,g", {}),
        ("supsup_gnu_h", _P, "supsup,h", {}),
        ("batche_gg", _P, "batche", {}),
        ("psp_gg", _P, "psp", {}),
    ],
    "permuted_fashion": [
        ("supsup_gnu_g", _P, "supsup,g,fashion", {}),
        ("supsup_gnu_h", _P, "supsup,h,fashion", {}),
        # The rule of RESULTS.md "Task inference on similar tasks" (not the paper's).
        ("supsup_gnu_shortlist", _P, "supsup,shortlist,fashion", {}),
        ("batche_gg", _P, "batche,fashion", {}),
        ("psp_gg", _P, "psp,fashion", {}),
    ],
    "permuted_fashion_lenet": [
        ("supsup_gnu_g", _P, "supsup,g,lenet,fashion", {}),
        ("supsup_gnu_h", _P, "supsup,h,lenet,fashion", {}),
        ("batche_gg", _P, "batche,lenet,fashion", {}),
        ("psp_gg", _P, "psp,lenet,fashion", {}),
    ],
    "permuted_fashion10": [
        ("supsup_gnu_g", _P, "supsup,g,fashion", _TEN),
        ("batche_gg", _P, "batche,fashion", _TEN),
        ("psp_gg", _P, "psp,fashion", _TEN),
    ],
    "batche_oneshot": [
        ("supsup_gnu_g", _P, "supsup,g", {}),
        ("batche_gnu_g", _P, "batche,oneshot,g", {}),
        ("batche_gg", _P, "batche", {}),
    ],
    "batche_oneshot_fashion": [
        ("supsup_gnu_g", _P, "supsup,g,fashion", {}),
        ("batche_gnu_g", _P, "batche,oneshot,g,fashion", {}),
        ("batche_gg", _P, "batche,fashion", {}),
    ],
    "rotated": [
        ("supsup_gnu_h", _P, "supsup,rotated", {}),
        ("supsup_gnu_g", _P, "supsup,rotated,g", {}),
        ("batche_gg", _P, "batche,rotated", {}),
        ("psp_gg", _P, "psp,rotated", {}),
    ],
    "rotated_fashion": [
        ("supsup_gnu_h", _P, "supsup,rotated,fashion", {}),
        ("supsup_gnu_g", _P, "supsup,rotated,g,fashion", {}),
        # The rule of RESULTS.md "Task inference on similar tasks" (not the paper's).
        ("supsup_gnu_shortlist", _P, "supsup,rotated,fashion,shortlist", {}),
        ("batche_gg", _P, "batche,rotated,fashion", {}),
        ("psp_gg", _P, "psp,rotated,fashion", {}),
    ],
    "output_size_fashion_lenet": _output_sizes(
        "", {"num_tasks": 100, "eval_at": (10, 25, 50, 75, 100)}),
    "output_size_fashion_fc": _output_sizes(
        ",fc", {"num_tasks": 25, "eval_at": (5, 10, 15, 20, 25)}),
    "gnu_2500_fashion": [
        ("supsup_gnu_h", _G, "fashion", _SUBSET),
        ("supsup_gnu_g", _G, "g,fashion", _SUBSET),
        ("nns", _G, "nns,fashion", _SUBSET),
    ],
    "splitcifar100": [
        ("supsup", _C, "er4", {}),
        ("supsup_transfer", _C, "er4,transfer", {}),
        ("batche", _C, "batche", {}),
        ("batche_randw", _C, "batche,randw", {}),
        ("separate_heads", _C, "separate_heads", {}),
        ("separate_heads_randw", _C, "separate_heads,randw", {}),
        ("upper_bound", _C, "upper_bound", {}),
        ("lower_bound", _C, "lower_bound", {}),
    ],
}

# figure -> {method: the method whose masks it re-evaluates}: a curve that differs from another
# only in its task inference (objective or rule) evaluates that run's masks
# (supsup_jax.runner.reevaluate) instead of training the same masks again.
REEVALUATES: dict[str, dict[str, str]] = {
    "permuted": {"supsup_gnu_g": "supsup_gnu_h"},
    "permuted_fashion": {"supsup_gnu_g": "supsup_gnu_h", "supsup_gnu_shortlist": "supsup_gnu_h"},
    "gnu_2500_fashion": {"supsup_gnu_g": "supsup_gnu_h"},
}

TITLES = {
    "permuted": "PermutedMNIST, 250 tasks, FC 1024-1024 (paper Fig. 3 right)",
    "permuted_fashion": "PermutedFashionMNIST, FC 1024-1024 (twin of paper Fig. 3 right)",
    "permuted_fashion_lenet": "PermutedFashionMNIST, LeNet 300-100 (twin of paper Fig. 3 left)",
    "permuted_fashion10": "PermutedFashionMNIST, 10 tasks, FC 1024-1024",
    "batche_oneshot": "PermutedMNIST, One-Shot on BatchE (paper Fig. 5 right)",
    "batche_oneshot_fashion": "PermutedFashionMNIST, One-Shot on BatchE (twin of Fig. 5 right)",
    "rotated": "RotatedMNIST, 36 tasks, FC 1024-1024 (paper Fig. 5 left)",
    "rotated_fashion": "RotatedFashionMNIST, 36 tasks, FC 1024-1024 (twin of Fig. 5 left)",
    "output_size_fashion_lenet": "Output size s, PermutedFashionMNIST, LeNet 300-100 (Fig. 6 twin)",
    "output_size_fashion_fc": "Output size s, PermutedFashionMNIST, FC 1024-1024 (Fig. 6 twin)",
    "gnu_2500_fashion": "2500 PermutedFashionMNIST tasks, LeNet 300-100 (twin of paper Fig. 4)",
    "splitcifar100": "SplitCIFAR100, GG (paper Fig. 2 right)",
}

_FIGURE = flags.DEFINE_enum("figure", None, sorted(FIGURES), "which figure to produce")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for the runs and the figure")
_ONLY = flags.DEFINE_list("only", None, "run only these methods (labels of the figure)")
_TINY = flags.DEFINE_bool("tiny", False, "add the tiny variant to every config")
# --config.FIELD=VALUE (the runner's style) overrides a field of every method's config; absl
# does not know these flags, so main's flags parser takes them out first.
_OVERRIDES: list[str] = []
_REPLOT = flags.DEFINE_bool("replot", False, "run nothing: redraw the figure and the table "
                            "from the finished runs in WORKDIR")
_YLIM = flags.DEFINE_string("ylim", "0,1", "the figure's y range LOW,HIGH, or 'auto'")
_SEEDS = flags.DEFINE_integer(
    "seeds", 1, "run every method with seeds 0..N-1 (each into WORKDIR/<method>/seed<k>): the "
    "table gives mean and standard deviation, the figure shaded bands")
flags.mark_flags_as_required(["figure", "workdir"])


def method_config(module: str, variants: str, overrides: dict, tiny: bool = False,
                  extra: dict | None = None):
    """The config of one curve: ``module.get_config(variants)`` with field overrides."""
    c = importlib.import_module(module).get_config(variants + (",tiny" if tiny else ""))
    for field, value in {**overrides, **(extra or {})}.items():
        parent, _, name = field.rpartition(".")
        holder = c[parent] if parent and parent in c else (c if not parent else None)
        if holder is None or name not in holder:
            raise ValueError(f"{module} has no config field {field!r}")
        if tiny and field in ("num_tasks", "eval_at"):
            continue  # the tiny variant's own sizes win
        setattr(holder, name, value)
    return c


def check_overrides(figure: str, tiny: bool, extra: dict | None) -> None:
    """Raise ValueError unless every method of ``figure`` has the fields ``extra`` sets."""
    for _, module, variants, overrides in FIGURES[figure]:
        method_config(module, variants, overrides, tiny, extra)


def parse_overrides(items: list[str]) -> dict:
    """``--config.FIELD=VALUE`` arguments as ``{FIELD: value}`` (Python literals parsed)."""
    out = {}
    for item in items:
        field, sep, text = item.removeprefix("--config.").partition("=")
        if not item.startswith("--config.") or not sep or not field:
            raise app.UsageError(f"expected --config.FIELD=VALUE, got {item!r}")
        try:
            out[field] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[field] = text
    return out


def _flags_parser(argv: list[str]) -> list[str]:
    _OVERRIDES.extend(a for a in argv[1:] if a.startswith("--config."))
    return flags.FLAGS([a for a in argv if not a.startswith("--config.")])


def curve(res) -> tuple[list[int], list[float]]:
    """(tasks learned, mean accuracy over the learned tasks) at every fully evaluated row, with
    the task inferred for GNu/GNs runs and given for GG runs."""
    key = ("inferred_accuracy_matrix" if res.get("inferred_accuracy_matrix") is not None
           else "accuracy_matrix")
    m = results.matrix(res, key)
    xs, ys = [], []
    for t in results.evaluated_rows(res):
        mean = results.row_mean(m, t)
        if mean is not None:
            xs.append(t + 1)
            ys.append(mean)
    return xs, ys


def seed_curve(seeds: list[dict]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(tasks learned, mean, standard deviation over the seeds) at the rows every seed
    evaluated; the deviation is 0 for one seed (``ddof=1`` otherwise)."""
    curves = [dict(zip(*curve(res), strict=True)) for res in seeds]
    xs = sorted(set.intersection(*(set(c) for c in curves)))
    ys = np.array([[c[x] for x in xs] for c in curves]).reshape(len(curves), len(xs))
    std = ys.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(xs))
    return xs, ys.mean(0), std


def display_labels(runs: dict[str, list[dict]]) -> dict[str, str]:
    """Paper-style names (:func:`plots.method_label`) of a figure's curves; where two curves
    share one, their output sizes tell them apart (``s=25``)."""
    names = {label: plots.method_label(seeds[0]) for label, seeds in runs.items()}
    shared = collections.Counter(names.values())
    return {label: name + (f", s={runs[label][0]['config'].get('num_outputs')}"
                           if shared[name] > 1 else "") for label, name in names.items()}


def plot_comparison(runs: dict[str, list[dict]], path, title: str,
                    ylim: tuple[float, float] | None = (0.0, 1.0)) -> pathlib.Path:
    """All methods' curves (mean over seeds, shaded +- one standard deviation) in one axes, in
    each method's fixed colour, with the chance level; ``ylim`` None scales to the data.
    Returns the PNG's path."""
    fig = plots.new_figure((7.0, 4.5))
    ax = fig.add_subplot()
    names = display_labels(runs)
    styles = ["o-", "s--", "^-.", "v:"]
    for k, (label, seeds) in enumerate(runs.items()):
        xs, ys, std = seed_curve(seeds)
        n = f", {len(seeds)} seeds" if len(seeds) > 1 else ""
        color = plots.method_color(names[label])
        ax.plot(xs, ys, styles[k % len(styles)], color=color, label=names[label] + n,
                markersize=3)
        if len(seeds) > 1:
            ax.fill_between(xs, ys - std, ys + std, color=color, alpha=0.2)
    chances = {plots.chance_level(seeds[0]) for seeds in runs.values()} - {None}
    if len(chances) == 1:
        chance = chances.pop()
        ax.axhline(chance, color="gray", linestyle=":", linewidth=1,
                   label=f"chance (1/{round(1 / chance)})")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("number of tasks learned")
    plots.integer_ticks(ax.xaxis)
    ax.set_ylabel("mean accuracy over learned tasks")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(fontsize="small")
    return plots.save_figure(fig, path)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _stat(seeds: list[dict], key: str) -> str:
    values = [res.get(key) for res in seeds]
    if any(v is None for v in values):
        return "-"
    if len(values) == 1:
        return _fmt(values[0])
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def table(runs: dict[str, list[dict]]) -> str:
    """A markdown table: final accuracy, GG accuracy, task inference, forgetting, storage, time
    (mean ± standard deviation over the seeds when there are several)."""
    lines = ["| Method | Scenario | Seeds | Tasks | Accuracy (final row) | GG accuracy "
             "| Task inference | Forgetting | Bytes per task | Wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    names = display_labels(runs)
    for label, seeds in runs.items():
        xs, _, _ = seed_curve(seeds)
        res = seeds[0]
        wall = np.mean([sum(v for v in r.get("wall_time_per_task") or [] if v is not None)
                        for r in seeds])
        lines.append(
            f"| {names[label]} | {res.get('scenario')} | {len(seeds)} | {xs[-1] if xs else '-'} "
            f"| {_stat(seeds, 'average_accuracy')} | {_stat(seeds, 'gg_average_accuracy')} "
            f"| {_stat(seeds, 'task_inference_accuracy')} | {_stat(seeds, 'forgetting')} "
            f"| {res.get('bytes_per_task') or 0:,.0f} | {wall:.0f} |")
    return "\n".join(lines) + "\n"


def run_figure(figure: str, workdir, *, only=None, tiny: bool = False,
               extra: dict | None = None, quiet: bool = False, seeds: int = 1,
               ylim: tuple[float, float] | None = (0.0, 1.0), replot: bool = False
               ) -> dict[str, list[dict]]:
    """Run (or resume) every method of ``figure`` into ``workdir/<label>`` (with ``seeds`` > 1:
    seeds ``0..seeds-1`` into ``workdir/<label>/seed<k>``); write the figure and the table;
    return ``{label: [results of each seed]}``. ``replot``: run nothing, draw the methods
    whose runs have finished."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if seeds > 1 and "seed" in (extra or {}):
        raise ValueError("give either seeds or a seed override, not both")
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; choose one of {sorted(FIGURES)}")
    specs = FIGURES[figure]
    labels = [s[0] for s in specs]
    unknown = set(only or []) - set(labels)
    if unknown:
        raise ValueError(f"figure {figure} has no methods {sorted(unknown)}; it has {labels}")
    workdir = pathlib.Path(workdir)
    check_overrides(figure, tiny, extra)  # before any run
    runs = {}
    dirs = lambda label: ([workdir / label] if seeds == 1  # noqa: E731
                          else [workdir / label / f"seed{k}" for k in range(seeds)])
    sources = REEVALUATES.get(figure, {})
    # A re-evaluating method after the run it re-evaluates (stable: the rest keep their order).
    for label, module, variants, overrides in sorted(specs, key=lambda s: s[0] in sources):
        if replot or (only and label not in only):
            done = [d for d in dirs(label) if (d / results.RESULTS_FILE).exists()]
            if done and len(done) == len(dirs(label)):  # keep finished curves in the figure
                runs[label] = [results.load_results(d) for d in done]
            continue
        runs[label] = []
        for k, sub in enumerate(dirs(label)):
            config = method_config(module, variants, overrides, tiny,
                                   {**(extra or {}), **({"seed": k} if seeds > 1 else {})})
            if quiet:
                config.quiet = True
            t0 = time.perf_counter()
            if label in sources:
                source = dirs(sources[label])[k]
                if not (source / "checkpoints").is_dir():
                    raise ValueError(f"{label} re-evaluates the masks of {sources[label]}, and "
                                     f"{source} holds no run of it: run {sources[label]} first")
                runs[label].append(reevaluate(config, source, sub))
            else:
                runs[label].append(train_and_evaluate(config, sub))
            if not quiet:
                print(f"{label} {sub.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    runs = {label: runs[label] for label in labels if label in runs}  # the figure's order
    plot_comparison(runs, workdir / "comparison.png",
                    TITLES.get(figure, figure) + (" (tiny)" if tiny else ""), ylim)
    text = table(runs)
    results.atomic_write(workdir / "comparison.md", lambda f: f.write(text))
    summary = json.dumps(summarise(figure, runs), indent=1)
    results.atomic_write(workdir / "comparison.json", lambda f: f.write(summary))
    return runs


def summarise(figure: str, runs: dict[str, list[dict]]) -> dict:
    """The figure's numbers without the matrices (a file small enough to commit): per method
    and seed, the curve, the summary metrics, the wall time and the provenance."""
    names = display_labels(runs)
    keys = ("average_accuracy", "gg_average_accuracy", "task_inference_accuracy", "forgetting",
            "backward_transfer", "bytes_per_task", "masks_allocated", "provenance")
    out = {"figure": figure, "title": TITLES.get(figure, figure), "methods": {}}
    for label, seeds in runs.items():
        out["methods"][label] = {"label": names[label], "scenario": seeds[0].get("scenario"),
                                 "seeds": []}
        for res in seeds:
            xs, ys = curve(res)
            wall = [v for v in res.get("wall_time_per_task") or [] if v is not None]
            out["methods"][label]["seeds"].append({
                "seed": res.get("seed"), "config": res["config"].get("name"),
                "curve": [[x, y] for x, y in zip(xs, ys, strict=True)],
                "wall_time_total": sum(wall), **{k: res.get(k) for k in keys}})
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    ylim = None if _YLIM.value == "auto" else tuple(float(v) for v in _YLIM.value.split(","))
    if ylim is not None and (len(ylim) != 2 or not ylim[0] < ylim[1]):
        raise app.UsageError(f"--ylim expects LOW,HIGH with LOW < HIGH, or auto; got "
                             f"{_YLIM.value!r}")
    extra = parse_overrides(_OVERRIDES)
    try:
        check_overrides(_FIGURE.value, _TINY.value, extra)
    except (ValueError, TypeError) as e:  # a field the configs do not have, a bad value
        raise app.UsageError(str(e)) from None
    run_figure(_FIGURE.value, _WORKDIR.value, only=_ONLY.value, tiny=_TINY.value, extra=extra,
               seeds=_SEEDS.value, ylim=ylim, replot=_REPLOT.value)
    path = os.path.join(_WORKDIR.value, "comparison.md")
    with open(path, encoding="utf-8") as f:
        print(f.read())
    print(f"figure: {_WORKDIR.value}/comparison.png; table: {path}")


if __name__ == "__main__":
    app.run(main, flags_parser=_flags_parser)
